// deepseek_v3: config.json of the published model (sizes, YaRN numbers from transformers),
// inconsistent configs and checkpoints as clear errors, the selection bias in checkpoints, and the
// building blocks latent attention adds (values with their own head dim, interleaved / scaled /
// strided rope). End-to-end agreement with transformers is in test_hf_fixtures.cpp; gradients and
// KV-cache decoding in test_transformer.cpp.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "moe/core/error.h"
#include "moe/core/rng.h"
#include "moe/model/nn.h"
#include "moe/model/safetensors.h"
#include "moe/model/transformer.h"

namespace fs = std::filesystem;
using namespace moe;
using namespace moe::model;

namespace {

// config.json of deepseek-ai/DeepSeek-V3 (the keys transformers reads; the remote-code keys such as
// scoring_func and topk_method are ignored, as transformers ignores them).
const char* kDeepseekV3 = R"({"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
  "vocab_size": 129280, "hidden_size": 7168, "intermediate_size": 18432, "moe_intermediate_size": 2048,
  "num_hidden_layers": 61, "num_attention_heads": 128, "num_key_value_heads": 128, "n_shared_experts": 1,
  "n_routed_experts": 256, "routed_scaling_factor": 2.5, "kv_lora_rank": 512, "q_lora_rank": 1536,
  "qk_rope_head_dim": 64, "v_head_dim": 128, "qk_nope_head_dim": 128, "n_group": 8, "topk_group": 4,
  "num_experts_per_tok": 8, "first_k_dense_replace": 3, "norm_topk_prob": true, "hidden_act": "silu",
  "max_position_embeddings": 163840, "rms_norm_eps": 1e-06, "rope_theta": 10000, "tie_word_embeddings": false,
  "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0,
                   "original_max_position_embeddings": 4096, "type": "yarn"},
  "scoring_func": "sigmoid", "topk_method": "noaux_tc", "moe_layer_freq": 1, "num_nextn_predict_layers": 1,
  "bos_token_id": 0, "eos_token_id": 1, "attention_bias": false})";

std::string replaced(std::string s, const std::string& from, const std::string& to) {
  const size_t at = s.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  if (at != std::string::npos) s.replace(at, from.size(), to);
  return s;
}

void expect_error(const std::string& json, const std::string& needle) {
  try {
    model_config_from_json(json);
    ADD_FAILURE() << "expected an error mentioning '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

ModelConfig tiny_deepseek() {
  ModelConfig c = model_config_from_json(kDeepseekV3);
  c.vocab_size = 13, c.hidden_size = 8, c.num_hidden_layers = 2, c.num_attention_heads = 2;
  c.num_key_value_heads = 2, c.intermediate_size = 6, c.moe_intermediate_size = 4;
  c.num_experts = 4, c.num_experts_per_tok = 2, c.n_group = 2, c.topk_group = 1, c.first_k_dense_replace = 1;
  c.q_lora_rank = 0, c.kv_lora_rank = 4, c.qk_nope_head_dim = 2, c.qk_rope_head_dim = 2, c.v_head_dim = 3;
  c.head_dim = 2, c.max_position_embeddings = 32, c.rope_scaling.original_max_position_embeddings = 8;
  c.validate();
  return c;
}

std::vector<double> random_vec(int64_t n, uint64_t seed) {
  Tensor t = Tensor::empty({n}, DType::F64);
  Rng(seed).fill_normal(t, 0.0, 1.0);
  return t.to_vector();
}

}  // namespace

TEST(DeepseekV3, PublishedConfigSizesAndYarnMatchTransformers) {
  const ModelConfig c = model_config_from_json(kDeepseekV3);
  EXPECT_EQ(c.arch, Arch::DeepseekV3);
  EXPECT_EQ(c.n_params(), 671026404352);  // sum of parameter sizes of transformers' DeepseekV3ForCausalLM
  EXPECT_NEAR(static_cast<double>(c.n_active_params()) / 1e9, 37.5, 0.5);  // "37B activated"
  EXPECT_FALSE(c.is_moe_layer(2));
  EXPECT_TRUE(c.is_moe_layer(3));
  const MoEConfig m = c.moe_layer_config();
  EXPECT_EQ(m.router.score, ScoreFn::Sigmoid);
  EXPECT_TRUE(m.router.use_bias && m.router.normalize);
  EXPECT_EQ(m.router.n_groups, 8);
  EXPECT_EQ(m.router.topk_groups, 4);
  EXPECT_EQ(m.router.group_score, GroupScore::SumTop2);
  EXPECT_EQ(m.router.scaling, 2.5);
  EXPECT_EQ(m.shared_width(), 2048);
  EXPECT_FALSE(m.shared_gate);
  // transformers 5.23.0: ROPE_INIT_FUNCTIONS["yarn"] (float32) and yarn_apply_mscale.
  const std::vector<double> inv = c.rope_inv_freq();
  ASSERT_EQ(inv.size(), 32u);
  const std::pair<int, double> want[] = {{0, 1.0},
                                         {5, 2.371373624e-01},
                                         {10, 5.623412877e-02},
                                         {16, 5.500000436e-03},
                                         {20, 7.905694074e-04},
                                         {31, 3.333803534e-06}};
  for (const auto& [i, v] : want) EXPECT_NEAR(inv[i], v, 1e-6 * v) << i;  // f32 there
  EXPECT_EQ(c.rope_attention_factor(), 1.0);                              // mscale == mscale_all_dim
  EXPECT_NEAR(c.attention_scale(), 0.1352337788608801, 1e-15);
  // mscale without mscale_all_dim: attention factor 0.1 ln(factor) + 1, softmax scale untouched.
  ModelConfig d = c;
  d.rope_scaling.mscale_all_dim = 0, d.rope_scaling.mscale = 0.7, d.rope_scaling.factor = 2;
  EXPECT_NEAR(d.rope_attention_factor(), 1.0693147180559945, 1e-15);
  EXPECT_EQ(d.attention_scale(), 1 / std::sqrt(192.0));
  // transformers 5 spelling: rope_parameters with rope_theta inside; to_json round trip.
  const std::string v5 = replaced(replaced(kDeepseekV3, R"("rope_theta": 10000,)", ""), R"("rope_scaling")",
                                  R"("rope_parameters")");
  const ModelConfig e = model_config_from_json(
      replaced(v5, R"("type": "yarn")", R"("rope_type": "yarn", "rope_theta": 50000)"));
  EXPECT_EQ(e.rope_theta, 50000);
  EXPECT_TRUE(e.rope_scaling.yarn());
  EXPECT_EQ(to_json(model_config_from_json(to_json(c))), to_json(c));
  // q_lora_rank null: a plain q_proj.
  const ModelConfig q =
      model_config_from_json(replaced(kDeepseekV3, R"("q_lora_rank": 1536)", R"("q_lora_rank": null)"));
  EXPECT_EQ(q.q_lora_rank, 0);
  EXPECT_EQ(to_json(model_config_from_json(to_json(q))), to_json(q));
}

TEST(DeepseekV3, InconsistentConfigsAreErrorsNamingTheKey) {
  const std::string c = kDeepseekV3;
  expect_error(replaced(c, R"("num_key_value_heads": 128)", R"("num_key_value_heads": 64)"),
               "num_key_value_heads");
  expect_error(replaced(c, R"("n_group": 8)", R"("n_group": 6)"), "n_group");
  expect_error(replaced(c, R"("topk_group": 4)", R"("topk_group": 9)"), "topk_group");
  expect_error(replaced(replaced(c, R"("topk_group": 4)", R"("topk_group": 1)"), R"("n_routed_experts": 256)",
                        R"("n_routed_experts": 16)"),
               "num_experts_per_tok");
  expect_error(replaced(c, R"("qk_rope_head_dim": 64)", R"("qk_rope_head_dim": 63)"), "qk_rope_head_dim");
  expect_error(replaced(c, R"("kv_lora_rank": 512,)", ""), "kv_lora_rank");
  expect_error(replaced(c, R"("first_k_dense_replace": 3)", R"("first_k_dense_replace": 62)"),
               "first_k_dense_replace");
  expect_error(replaced(c, R"("routed_scaling_factor": 2.5)", R"("routed_scaling_factor": 0)"),
               "routed_scaling_factor");
  expect_error(replaced(c, R"("type": "yarn")", R"("type": "linear")"), "rope_scaling.type");
  expect_error(replaced(c, R"("type": "yarn")", R"("type": "yarn", "low_freq_factor": 1)"),
               "rope_scaling.low_freq_factor");
  expect_error(replaced(c, R"("factor": 40)", R"("factor": -1)"), "rope_scaling.factor");
  expect_error(replaced(c, R"("hidden_act": "silu")", R"("hidden_act": "gelu")"), "hidden_act");
  // Other architectures refuse rope scaling rather than ignore it.
  expect_error(R"({"model_type": "qwen3_moe", "vocab_size": 8, "hidden_size": 8, "num_hidden_layers": 1,
    "num_attention_heads": 2, "num_experts": 2, "num_experts_per_tok": 1, "moe_intermediate_size": 4,
    "rope_scaling": {"type": "yarn", "factor": 4}})",
               "is not supported for qwen3_moe");
}

TEST(DeepseekV3, CheckpointRoundTripWithSelectionBiasAndBadShapes) {
  const fs::path dir = fs::temp_directory_path() / "moe_test_deepseek_v3_ckpt";
  fs::remove_all(dir);
  const ModelConfig cfg = tiny_deepseek();
  Transformer m(cfg);
  m.init_params(3);
  const std::vector<int32_t> tok = {1, 5, 7, 2, 11, 3, 0, 9};
  const std::vector<double> unbiased = m.logits(tok.data(), 1, 8).to_vector();
  Tensor bias = const_cast<MoELayer*>(m.moe_layer(1))->params().router_bias;  // shares storage
  bias.copy_from(Tensor::from(std::vector<double>{0.9, 0.8, -0.7, -0.6}, {4}, DType::F32));
  const std::vector<double> biased = m.logits(tok.data(), 1, 8).to_vector();
  EXPECT_NE(biased, unbiased);  // the bias changes the routing
  save_pretrained(m, dir.string());
  {
    SafetensorsReader rd((dir / "model.safetensors").string());
    for (const char* name :
         {"model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.kv_a_proj_with_mqa.weight",
          "model.layers.0.self_attn.kv_a_layernorm.weight", "model.layers.1.self_attn.kv_b_proj.weight",
          "model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.gate.e_score_correction_bias",
          "model.layers.1.mlp.experts.3.up_proj.weight",
          "model.layers.1.mlp.shared_experts.down_proj.weight"})
      EXPECT_TRUE(rd.contains(name)) << name;
    EXPECT_FALSE(rd.contains("model.layers.0.mlp.gate.e_score_correction_bias"));  // dense layer
  }
  const Transformer r = load_pretrained(dir.string());
  EXPECT_EQ(r.logits(tok.data(), 1, 8).to_vector(), biased);
  // A kv_b_proj of the wrong shape names the tensor and both shapes.
  auto sd = m.hf_state_dict();
  sd["model.layers.1.self_attn.kv_b_proj.weight"] =
      Tensor::zeros({2 * 4, 4});  // (heads · (nope + v), kv_lora)
  try {
    m.load_hf_state_dict(sd);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    const std::string w = e.what();
    EXPECT_NE(w.find("model.layers.1.self_attn.kv_b_proj.weight"), std::string::npos) << w;
    EXPECT_NE(w.find("(10, 4)"), std::string::npos) << w;
    EXPECT_NE(w.find("(8, 4)"), std::string::npos) << w;
  }
  // A q_lora checkpoint for a q_proj config: missing and unexpected tensors.
  sd = m.hf_state_dict();
  sd.erase("model.layers.0.self_attn.q_proj.weight");
  sd["model.layers.0.self_attn.q_a_proj.weight"] = Tensor::zeros({3, 8});
  EXPECT_THROW(m.load_hf_state_dict(sd), Error);
  fs::remove_all(dir);
}

// Attention whose values have their own head dim equals attention with the narrower of (q, k) and
// v zero-padded to the wider one (padding q and k adds nothing to q·k; padded value columns give
// zero outputs), run through the one-head-dim path the other tests check against a reference.
TEST(DeepseekV3, AttentionWithValueHeadDimMatchesZeroPadding) {
  for (const auto& [hd, hdv] : {std::pair<int64_t, int64_t>{5, 3}, {3, 7}}) {
    const int64_t B = 2, sq = 4, sk = 6, hq = 4, hkv = 2, D = std::max(hd, hdv);
    nn::AttentionArgs a{B, sq, sk, hq, hkv, hd, 0.37, hdv};
    nn::AttentionArgs p{B, sq, sk, hq, hkv, D, 0.37};
    const std::vector<double> q = random_vec(B * sq * hq * hd, 1), k = random_vec(B * sk * hkv * hd, 2);
    const std::vector<double> v = random_vec(B * sk * hkv * hdv, 3), dout = random_vec(B * sq * hq * hdv, 4);
    auto pad = [&](const std::vector<double>& x, int64_t w) {
      std::vector<double> y(x.size() / w * D, 0.0);
      for (size_t r = 0; r < x.size() / w; ++r)
        for (int64_t j = 0; j < w; ++j) y[r * D + j] = x[r * w + j];
      return y;
    };
    std::vector<double> out(B * sq * hq * hdv), lse(B * hq * sq), pout(B * sq * hq * D), plse(B * hq * sq);
    const std::vector<double> qp = pad(q, hd), kp = pad(k, hd), vp = pad(v, hdv), doutp = pad(dout, hdv);
    nn::attention_forward<double>(a, q.data(), k.data(), v.data(), out.data(), lse.data());
    nn::attention_forward<double>(p, qp.data(), kp.data(), vp.data(), pout.data(), plse.data());
    // The same sums with zeros added; the gemm may group them differently: within 1e-12.
    auto near = [](const std::vector<double>& x, const std::vector<double>& y, const char* what) {
      ASSERT_EQ(x.size(), y.size()) << what;
      for (size_t i = 0; i < x.size(); ++i)
        EXPECT_NEAR(x[i], y[i], 1e-12 * (1 + std::abs(y[i]))) << what << i;
    };
    near(pad(out, hdv), pout, "out");
    near(lse, plse, "lse");
    std::vector<double> dq(q.size()), dk(k.size()), dv(v.size()), pdq(qp.size()), pdk(kp.size()),
        pdv(vp.size());
    nn::attention_backward<double>(a, q.data(), k.data(), v.data(), out.data(), lse.data(), dout.data(),
                                   dq.data(), dk.data(), dv.data());
    nn::attention_backward<double>(p, qp.data(), kp.data(), vp.data(), pout.data(), plse.data(), doutp.data(),
                                   pdq.data(), pdk.data(), pdv.data());
    near(pad(dq, hd), pdq, "dq");
    near(pad(dk, hd), pdk, "dk");
    near(pad(dv, hdv), pdv, "dv");
  }
}

// Interleaved rope = de-interleave (evens, then odds) + the half-split rope; scaled by mscale; on
// the tail of wider heads (ld); backward is the transpose.
TEST(DeepseekV3, InterleavedScaledStridedRope) {
  const int64_t n = 5, heads = 3, hd = 6, ld = 10, off = 4;
  const std::vector<double> freq = {1.0, 0.3, 0.01};
  const std::vector<int32_t> pos = {0, 3, 7, 20, 41};
  const std::vector<double> x0 = random_vec(n * heads * ld, 7);
  nn::RopeArgs a;
  a.n = n, a.heads = heads, a.hd = hd, a.inv_freq = freq.data(), a.mscale = 1.3, a.ld = ld,
  a.interleaved = true;
  std::vector<double> x = x0;
  nn::rope_forward<double>(a, pos.data(), x.data() + off);
  // Reference: de-interleave each head's tail, plain rope (contiguous), times mscale.
  std::vector<double> ref(n * heads * hd);
  for (int64_t r = 0; r < n * heads; ++r)
    for (int64_t i = 0; i < hd / 2; ++i) {
      ref[r * hd + i] = x0[r * ld + off + 2 * i];
      ref[r * hd + hd / 2 + i] = x0[r * ld + off + 2 * i + 1];
    }
  nn::RopeArgs plain;
  plain.n = n, plain.heads = heads, plain.hd = hd, plain.inv_freq = freq.data();
  nn::rope_forward<double>(plain, pos.data(), ref.data());
  for (int64_t r = 0; r < n * heads; ++r) {
    for (int64_t j = 0; j < off; ++j) EXPECT_EQ(x[r * ld + j], x0[r * ld + j]);  // untouched
    for (int64_t j = 0; j < hd; ++j) EXPECT_NEAR(x[r * ld + off + j], 1.3 * ref[r * hd + j], 1e-12);
  }
  // <R x, y> == <x, Rᵀ y>.
  const std::vector<double> y0 = random_vec(n * heads * ld, 8);
  std::vector<double> y = y0;
  nn::rope_backward<double>(a, pos.data(), y.data() + off);
  double lhs = 0, rhs = 0;
  for (int64_t r = 0; r < n * heads; ++r)
    for (int64_t j = off; j < off + hd; ++j)
      lhs += x[r * ld + j] * y0[r * ld + j], rhs += x0[r * ld + j] * y[r * ld + j];
  EXPECT_NEAR(lhs, rhs, 1e-10 * std::abs(lhs));
}
