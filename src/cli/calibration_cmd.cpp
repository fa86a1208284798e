#include "cli/calibration_cmd.h"

#include <algorithm>
#include <filesystem>

#include "cli/model_dir.h"
#include "moe/core/error.h"
#include "moe/text/tokenizer.h"
#include "moe/train/data.h"

namespace moe::cli {

namespace fs = std::filesystem;

CalibrationInput read_calibration_input(const std::string& cmd, const std::string& model,
                                        const std::string& out, bool overwrite,
                                        const std::string& calibration) {
  CalibrationInput r;
  r.dir = resolve_model_dir(model);
  std::error_code ec;
  MOE_CHECK(!fs::equivalent(r.dir, out, ec), cmd, ": --out must differ from the model directory '", r.dir,
            "'");
  if (fs::exists(fs::path(out) / "config.json") || fs::exists(fs::path(out) / "model.safetensors"))
    MOE_CHECK(overwrite, cmd, ": '", out, "' already holds a checkpoint (use --overwrite to replace it)");
  r.tokenizer = find_tokenizer(r.dir);
  MOE_CHECK(!r.tokenizer.empty(), cmd, ": no tokenizer.json next to the model in '", r.dir, "'");
  MOE_CHECK(fs::exists(calibration), cmd, ": calibration file '", calibration, "' does not exist");
  r.tokens = text::Tokenizer::load(r.tokenizer).encode(train::read_text_corpus(calibration));
  MOE_CHECK(!r.tokens.empty(), cmd, ": calibration file '", calibration, "' gives no tokens");
  return r;
}

int64_t calibration_seq_len(const std::string& cmd, int64_t seq_len, const model::ModelConfig& c) {
  const int64_t S = seq_len > 0 ? seq_len : std::min<int64_t>(c.max_position_embeddings, 512);
  MOE_CHECK(S <= c.max_position_embeddings, cmd, ": --seq-len ", S, " exceeds the model's context ",
            c.max_position_embeddings);
  return S;
}

void copy_tokenizer_files(const std::string& tokenizer, const std::string& out) {
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}) {
    const fs::path src = fs::path(tokenizer).parent_path() / f;
    if (fs::exists(src)) fs::copy_file(src, fs::path(out) / f, fs::copy_options::overwrite_existing);
  }
}

}  // namespace moe::cli
