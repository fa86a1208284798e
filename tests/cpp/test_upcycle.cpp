// Sparse upcycling: the upcycled model computes the dense model's function (split 1), the expert
// slices are laid out as documented (split > 1), and bad sources are clear errors.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "moe/core/error.h"
#include "moe/model/safetensors.h"
#include "moe/model/transformer.h"
#include "moe/model/upcycle.h"

namespace fs = std::filesystem;
using namespace moe;
using namespace moe::model;

namespace {

// A qwen3_moe config whose every layer is dense.
ModelConfig dense_qwen3() {
  ModelConfig c;
  c.arch = Arch::Qwen3Moe;
  c.vocab_size = 13;
  c.hidden_size = 8;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  c.head_dim = 4;
  c.intermediate_size = 12;
  c.moe_intermediate_size = 12;
  c.num_experts = 1;
  c.num_experts_per_tok = 1;
  c.mlp_only_layers = {0, 1};
  c.max_position_embeddings = 32;
  c.initializer_range = 0.3;
  return c;
}

struct TmpDir {
  fs::path p;
  explicit TmpDir(const char* name) : p(fs::temp_directory_path() / name) { fs::remove_all(p); }
  ~TmpDir() { fs::remove_all(p); }
};

}  // namespace

TEST(Upcycle, Split1ComputesTheDenseFunction) {
  TmpDir src("moe_test_upcycle_src"), dst("moe_test_upcycle_dst");
  Transformer dense(dense_qwen3());
  dense.init_params(5);
  save_pretrained(dense, src.p.string());
  UpcycleOptions o;
  o.n_experts = 4;
  o.top_k = 2;
  const UpcycleResult r = upcycle(src.p.string(), dst.p.string(), o);
  EXPECT_EQ(r.converted_layers, 2);
  EXPECT_EQ(r.config.num_experts, 4);
  Transformer moe = load_pretrained(dst.p.string());
  EXPECT_TRUE(moe.moe_layer(0) && moe.moe_layer(1));
  const std::vector<int32_t> tok = {1, 5, 7, 2, 12, 0, 3};
  const std::vector<double> a = dense.logits(tok.data(), 1, 7).to_vector(),
                            b = moe.logits(tok.data(), 1, 7).to_vector();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 1e-5 * (1 + std::abs(a[i]))) << i;
}

TEST(Upcycle, SplitSlicesTheFfnAndKeepsDenseLayers) {
  TmpDir src("moe_test_upcycle_src2"), dst("moe_test_upcycle_dst2");
  Transformer dense(dense_qwen3());
  dense.init_params(6);
  save_pretrained(dense, src.p.string());
  UpcycleOptions o;
  o.n_experts = 2;
  o.top_k = 1;
  o.split = 3;
  o.keep_dense = {0};
  const UpcycleResult r = upcycle(src.p.string(), dst.p.string(), o);
  EXPECT_EQ(r.converted_layers, 1);
  EXPECT_EQ(r.config.num_experts, 6);
  EXPECT_EQ(r.config.num_experts_per_tok, 3);
  EXPECT_EQ(r.config.moe_intermediate_size, 4);
  const auto sd = load_safetensors((dst.p / "model.safetensors").string());
  const auto ds = dense.hf_state_dict();
  EXPECT_TRUE(sd.count("model.layers.0.mlp.gate_proj.weight"));  // kept dense
  // Expert 4 = slice 1 (rows 4..7) of the gate; its down projection is scaled by the split.
  const Tensor& g4 = sd.at("model.layers.1.mlp.experts.4.gate_proj.weight");
  const Tensor& gd = ds.at("model.layers.1.mlp.gate_proj.weight");
  const Tensor& d4 = sd.at("model.layers.1.mlp.experts.4.down_proj.weight");
  const Tensor& dd = ds.at("model.layers.1.mlp.down_proj.weight");
  for (int64_t f = 0; f < 4; ++f)
    for (int64_t j = 0; j < 8; ++j) {
      EXPECT_EQ(g4.get(f * 8 + j), gd.get((4 + f) * 8 + j));
      EXPECT_FLOAT_EQ(static_cast<float>(d4.get(j * 4 + f)), static_cast<float>(3 * dd.get(j * 12 + 4 + f)));
    }
  // The result trains (a step of forward/backward runs).
  Transformer m = load_pretrained(dst.p.string());
  std::vector<int32_t> tok = {1, 2, 3, 4}, tgt = {2, 3, 4, 5};
  const StepResult s = m.forward_backward(tok.data(), tgt.data(), 1, 4, {});
  EXPECT_TRUE(std::isfinite(s.loss_sum));
}

TEST(Upcycle, LlamaBecomesMixtralAndBadSourcesAreErrors) {
  TmpDir src("moe_test_upcycle_llama"), dst("moe_test_upcycle_llama_out");
  // A llama checkpoint: the dense qwen3 tensors without q/k norms, and a llama config.
  Transformer dense(dense_qwen3());
  dense.init_params(7);
  auto sd = dense.hf_state_dict();
  for (int l = 0; l < 2; ++l) {
    sd.erase(cat("model.layers.", l, ".self_attn.q_norm.weight"));
    sd.erase(cat("model.layers.", l, ".self_attn.k_norm.weight"));
  }
  fs::create_directories(src.p);
  save_safetensors((src.p / "model.safetensors").string(), sd);
  nlohmann::json cfg = {{"model_type", "llama"},    {"vocab_size", 13},       {"hidden_size", 8},
                        {"intermediate_size", 12},  {"num_hidden_layers", 2}, {"num_attention_heads", 2},
                        {"num_key_value_heads", 1}, {"head_dim", 4},          {"max_position_embeddings", 32},
                        {"rms_norm_eps", 1e-6},     {"rope_theta", 10000.0},  {"tie_word_embeddings", false},
                        {"rope_scaling", nullptr}};
  std::ofstream(src.p / "config.json") << cfg.dump();
  UpcycleOptions o;
  o.n_experts = 3;
  o.top_k = 1;
  const UpcycleResult r = upcycle(src.p.string(), dst.p.string(), o);
  EXPECT_EQ(r.config.arch, Arch::Mixtral);
  EXPECT_TRUE(SafetensorsReader((dst.p / "model.safetensors").string())
                  .contains("model.layers.1.block_sparse_moe.experts.2.w2.weight"));
  // Split that does not divide the width; a source with an extra tensor; an unsupported type.
  o.split = 5;
  EXPECT_THROW(upcycle(src.p.string(), dst.p.string(), o), Error);
  o.split = 1;
  sd["model.layers.0.mlp.gate_proj.bias"] = Tensor::zeros({12});
  save_safetensors((src.p / "model.safetensors").string(), sd);
  EXPECT_THROW(upcycle(src.p.string(), dst.p.string(), o), Error);
  cfg["model_type"] = "gpt2";
  std::ofstream(src.p / "config.json") << cfg.dump();
  EXPECT_THROW(upcycle(src.p.string(), dst.p.string(), o), Error);
  o.top_k = 4;
  EXPECT_THROW(upcycle(src.p.string(), dst.p.string(), o), Error);
}
