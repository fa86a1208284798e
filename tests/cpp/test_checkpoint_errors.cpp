// Loading a checkpoint from disk: tensors are read one at a time, and every bad input is a
// moe::Error naming the file and the tensor (a shard with a wrong-shaped tensor, a truncated
// shard, a missing shard), while a good sharded checkpoint loads to the same weights.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "moe/model/safetensors.h"
#include "moe/model/transformer.h"
#include "train_testutil.h"

namespace moe {
namespace {

using model::ModelConfig;
using model::Transformer;
using CheckpointErrors = train::testing::TempDirTest;

ModelConfig small_mixtral() {
  ModelConfig c;
  c.arch = model::Arch::Mixtral;
  c.vocab_size = 13, c.hidden_size = 8, c.num_hidden_layers = 2;
  c.num_attention_heads = 2, c.num_key_value_heads = 1, c.head_dim = 4;
  c.num_experts = 4, c.num_experts_per_tok = 2, c.intermediate_size = 6;
  c.max_position_embeddings = 32;
  return c;
}

// Splits the model's tensors over two shard files with an index, as transformers writes them.
void write_sharded(const Transformer& m, const std::filesystem::path& dir,
                   const std::map<std::string, Tensor>& changed = {}) {
  std::map<std::string, Tensor> sd = m.hf_state_dict(), a, b;
  for (const auto& [name, t] : changed) sd[name] = t;
  nlohmann::json map = nlohmann::json::object();
  for (const auto& [name, t] : sd) {
    const bool first = name.find("layers.1.") == std::string::npos;
    (first ? a : b)[name] = t;
    map[name] = first ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors";
  }
  std::filesystem::create_directories(dir);
  save_safetensors((dir / "model-00001-of-00002.safetensors").string(), a);
  save_safetensors((dir / "model-00002-of-00002.safetensors").string(), b);
  std::ofstream(dir / "model.safetensors.index.json") << nlohmann::json{{"weight_map", map}}.dump();
  std::ofstream(dir / "config.json") << model::to_json(m.config());
}

TEST_F(CheckpointErrors, ShardedLoadsTheSameWeights) {
  Transformer m(small_mixtral());
  m.init_params(5);
  write_sharded(m, dir_ / "ok");
  const Transformer back = model::load_pretrained((dir_ / "ok").string());
  for (size_t i = 0; i < m.parameters().size(); ++i)
    EXPECT_EQ(m.parameters()[i].value.to_vector(), back.parameters()[i].value.to_vector())
        << m.parameters()[i].name;
}

TEST_F(CheckpointErrors, WrongShapeNamesTensorAndFile) {
  Transformer m(small_mixtral());
  m.init_params(5);
  const std::string bad = "model.layers.1.self_attn.k_proj.weight";
  write_sharded(m, dir_ / "bad", {{bad, Tensor::zeros({3, 8})}});
  train::testing::expect_error([&] { model::load_pretrained((dir_ / "bad").string()); },
                               {bad, "model-00002-of-00002.safetensors", "(4, 8)", "(3, 8)"});
}

TEST_F(CheckpointErrors, TruncatedOrMissingShardNamesTheFile) {
  Transformer m(small_mixtral());
  m.init_params(5);
  write_sharded(m, dir_ / "cut");
  const auto shard = dir_ / "cut" / "model-00002-of-00002.safetensors";
  std::filesystem::resize_file(shard, std::filesystem::file_size(shard) - 8);
  train::testing::expect_error([&] { model::load_pretrained((dir_ / "cut").string()); },
                               {"model-00002-of-00002.safetensors"});
  std::filesystem::remove(shard);
  train::testing::expect_error([&] { model::load_pretrained((dir_ / "cut").string()); },
                               {"model-00002-of-00002.safetensors"});
}

// A config.json that claims more than its checkpoint holds (layers, vocabulary, width) is refused
// from the headers, before the model it describes is allocated; sizes beyond the engine's limits
// are refused when the config is read, whatever the checkpoint.
TEST_F(CheckpointErrors, ConfigLargerThanCheckpointIsRefusedBeforeAllocating) {
  Transformer m(small_mixtral());
  m.init_params(5);
  write_sharded(m, dir_ / "ck");
  auto with_config = [&](const std::string& key, int64_t value) {
    nlohmann::json j = nlohmann::json::parse(model::to_json(m.config()));
    j[key] = value;
    std::ofstream(dir_ / "ck" / "config.json") << j.dump();
    return (dir_ / "ck").string();
  };
  train::testing::expect_error([&] { model::load_pretrained(with_config("num_hidden_layers", 1000)); },
                               {"no tensors of layer 2", "num_hidden_layers = 1000"});
  train::testing::expect_error([&] { model::load_pretrained(with_config("vocab_size", 4000000)); },
                               {"model.embed_tokens.weight", "(13, 8)", "(4000000, 8)"});
  train::testing::expect_error([&] { model::load_pretrained(with_config("hidden_size", 4096)); },
                               {"model.embed_tokens.weight", "(13, 8)"});
  train::testing::expect_error([&] { model::load_pretrained(with_config("num_hidden_layers", 1000000)); },
                               {"num_hidden_layers = 1000000", "limit"});
  train::testing::expect_error([&] { model::load_pretrained(with_config("hidden_size", int64_t{1} << 62)); },
                               {"hidden_size", "limit"});
  train::testing::expect_error([&] { model::load_pretrained(with_config("num_local_experts", 1 << 20)); },
                               {"limit"});
}

// A compressed checkpoint (low-rank or quantized experts) read where float experts are needed (prune,
// merge, export, training's --init-from) is one clear error naming what it holds, not a missing tensor.
TEST_F(CheckpointErrors, ACompressedCheckpointWhereFloatExpertsAreNeededSaysWhatItHolds) {
  Transformer m(small_mixtral());
  m.init_params(6);
  const std::pair<const char*, nlohmann::json> cases[] = {
      {"low-rank experts",
       {{"low_rank_config", {{"method", "moe_cpp_low_rank"}, {"rank", 2}, {"shared_base", false}}}}},
      {"quantized experts",
       {{"quantization_config",
         {{"quant_method", "moe_cpp"}, {"bits", 8}, {"group_size", 32}, {"modules", {"experts"}}}}}}};
  for (const auto& [what, extra] : cases) {
    const std::filesystem::path dir = dir_ / what;
    write_sharded(m, dir);
    nlohmann::json cfg = nlohmann::json::parse(model::to_json(m.config()));
    cfg.update(extra);
    std::ofstream(dir / "config.json") << cfg.dump();
    try {
      model::load_pretrained(dir.string());
      FAIL() << what << ": loaded";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(dir.string()), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace moe
