// The teacher of a distillation run (moe/train/distill.h).
#include "moe/train/distill.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "moe/core/error.h"
#include "moe/train/data.h"

namespace moe::train::distill {

namespace fs = std::filesystem;

namespace {

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  MOE_CHECK(f.good(), "cannot open '", p.string(), "'");
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

}  // namespace

std::string teacher_model_dir(const std::string& teacher) {
  const fs::path dir(teacher);
  MOE_CHECK(fs::is_directory(dir), "distill: the teacher '", teacher, "' is not a directory");
  if (fs::exists(dir / "config.json")) return dir.string();
  MOE_CHECK(fs::exists(dir / "checkpoint" / "config.json"), "distill: the teacher '", teacher,
            "' holds no model (no config.json, and no checkpoint/config.json of a `moe train` run)");
  return (dir / "checkpoint").string();
}

std::string teacher_tokenizer(const std::string& teacher) {
  const fs::path own = fs::path(teacher) / "tokenizer.json";
  if (fs::exists(own)) return own.string();
  const fs::path in_model = fs::path(teacher_model_dir(teacher)) / "tokenizer.json";
  MOE_CHECK(fs::exists(in_model), "distill: the teacher '", teacher,
            "' has no tokenizer.json (the student uses the teacher's tokenizer)");
  return in_model.string();
}

model::ModelConfig teacher_config(const std::string& teacher) {
  return model::load_model_config((fs::path(teacher_model_dir(teacher)) / "config.json").string());
}

void check_same_vocab(int64_t teacher_vocab, int64_t student_vocab) {
  MOE_CHECK(teacher_vocab == student_vocab, "distill: the teacher's vocab_size is ", teacher_vocab,
            " but the student's is ", student_vocab, " (a student predicts the teacher's tokens)");
}

void validate_options(const TrainOptions& o) {
  MOE_CHECK(std::isfinite(o.kd_weight) && o.kd_weight >= 0 && o.kd_weight <= 1,
            "distill: --kd-weight must be in [0, 1], got ", o.kd_weight);
  MOE_CHECK(std::isfinite(o.temperature) && o.temperature > 0, "distill: --temperature must be > 0, got ",
            o.temperature);
}

bool copy_run_shards(const std::string& data, const std::string& teacher_tokenizer_path,
                     const std::string& train_bin, const std::string& val_bin) {
  const fs::path dir(data), tr = dir / "data" / "train.bin", va = dir / "data" / "val.bin";
  if (!fs::is_directory(dir) || !fs::exists(tr) || !fs::exists(va)) return false;
  const fs::path tok = dir / "tokenizer.json";
  MOE_CHECK(fs::exists(tok), "distill: --data ", data,
            " holds token shards but no tokenizer.json to tell how they were tokenized");
  MOE_CHECK(slurp(tok) == slurp(teacher_tokenizer_path), "distill: the token shards of --data ", data,
            " were made with another tokenizer than the teacher's (", teacher_tokenizer_path,
            "); give the text instead");
  fs::copy_file(tr, train_bin, fs::copy_options::overwrite_existing);
  fs::copy_file(va, val_bin, fs::copy_options::overwrite_existing);
  return true;
}

std::unique_ptr<model::Transformer> load_teacher(const TrainOptions& o, const model::ModelConfig& student) {
  const std::string dir = teacher_model_dir(o.teacher);
  const model::ModelConfig tc = model::load_model_config((fs::path(dir) / "config.json").string());
  check_same_vocab(tc.vocab_size, student.vocab_size);
  MOE_CHECK(o.seq_len <= tc.max_position_embeddings, "distill: --seq-len ", o.seq_len,
            " exceeds the teacher's max_position_embeddings ", tc.max_position_embeddings);
  return std::make_unique<model::Transformer>(model::load_pretrained(dir, DType::F32));
}

}  // namespace moe::train::distill
