// Quantized checkpoints (moe/model/quantized.h): quantize_checkpoint on small models of two layouts
// (qwen2_moe with a shared expert and a dense layer; deepseek_v3 with latent attention), what it keeps
// and what it replaces, read_quant_config, has_quantized / load_quantized, mixed precision from an
// expert usage file, and the errors.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "moe/core/dtype.h"
#include "moe/core/error.h"
#include "moe/model/low_rank.h"
#include "moe/model/quantized.h"
#include "moe/model/safetensors.h"
#include "moe/model/transformer.h"
#include "train_testutil.h"

namespace moe::model {
namespace {

using QuantCkpt = train::testing::TempDirTest;

ModelConfig qwen2_config() {
  ModelConfig c;
  c.arch = Arch::Qwen2Moe;
  c.vocab_size = 40, c.hidden_size = 64, c.num_hidden_layers = 2, c.num_attention_heads = 4;
  c.num_key_value_heads = 2, c.head_dim = 16, c.num_experts = 4, c.num_experts_per_tok = 2;
  c.intermediate_size = 64, c.moe_intermediate_size = 32, c.shared_expert_intermediate_size = 32;
  c.mlp_only_layers = {1}, c.max_position_embeddings = 32;
  return c;
}

ModelConfig deepseek_config() {
  ModelConfig c;
  c.arch = Arch::DeepseekV3;
  c.vocab_size = 40, c.hidden_size = 64, c.num_hidden_layers = 2, c.num_attention_heads = 4;
  c.num_key_value_heads = 4, c.head_dim = 8, c.num_experts = 4, c.num_experts_per_tok = 2;
  c.intermediate_size = 64, c.moe_intermediate_size = 32, c.max_position_embeddings = 32;
  c.q_lora_rank = 32, c.kv_lora_rank = 32, c.qk_nope_head_dim = 8, c.qk_rope_head_dim = 8, c.v_head_dim = 8;
  c.n_shared_experts = 1, c.first_k_dense_replace = 1;
  return c;
}

std::string save_model(const ModelConfig& c, const std::string& dir) {
  Transformer m(c);
  m.init_params(5);
  save_pretrained(m, dir);
  return dir;
}

template <typename F>
void expect_error(F&& fn, const std::vector<std::string>& parts) {
  try {
    fn();
    ADD_FAILURE() << "no moe::Error (expected '" << parts[0] << "')";
  } catch (const Error& e) {
    for (const auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
  }
}

TEST_F(QuantCkpt, Qwen2MoeExpertsOnly) {
  const std::string src = save_model(qwen2_config(), file("src"));
  std::ofstream(file("src/tokenizer.json")) << "{}";
  QuantizeOptions o;
  o.bits = 4, o.group = 32;
  const QuantizeResult r = quantize_checkpoint(src, file("q4"), o);
  EXPECT_EQ(r.expert_tensors, 1 * 4 * 3);  // one MoE layer (layer 1 is dense), 4 experts
  EXPECT_EQ(r.expert_params, 4 * 3 * 32 * 64);
  EXPECT_EQ(r.expert_bytes_before, 4 * r.expert_params);  // f32 source
  EXPECT_EQ(r.expert_bytes_after, r.expert_params / 2 + 2 * 2 * r.expert_params / 32);
  EXPECT_EQ(r.attention_tensors, 0);
  EXPECT_TRUE(std::filesystem::exists(file("q4/tokenizer.json")));

  const QuantConfig qc = read_quant_config(file("q4"));
  EXPECT_EQ(qc.bits, 4);
  EXPECT_EQ(qc.group, 32);
  EXPECT_FALSE(qc.attention);
  EXPECT_TRUE(qc.expert_bits.empty());
  EXPECT_EQ(read_quant_config(src).bits, 0);

  const auto before = load_hf_tensors(src), after = load_hf_tensors(file("q4"));
  const std::string e1 = "model.layers.0.mlp.experts.1.";
  for (const char* p : {"gate_proj", "up_proj", "down_proj"}) {
    EXPECT_FALSE(after.count(e1 + p + ".weight")) << p;
    EXPECT_EQ(after.at(e1 + p + ".qweight").dtype(), DType::U8);
    EXPECT_EQ(after.at(e1 + p + ".scales").dtype(), DType::F16);
    EXPECT_EQ(after.at(e1 + p + ".mins").dtype(), DType::F16);
  }
  // Everything that is not a routed expert is copied unchanged.
  int64_t copied = 0;
  for (const auto& [name, t] : before) {
    if (name.find(".experts.") != std::string::npos) continue;
    ASSERT_TRUE(after.count(name)) << name;
    EXPECT_EQ(after.at(name).to_vector(), t.to_vector()) << name;
    ++copied;
  }
  EXPECT_EQ(after.size(), static_cast<size_t>(copied + 4 * 3 * 3));
  EXPECT_TRUE(after.count("model.layers.0.mlp.shared_expert.up_proj.weight"));
  EXPECT_TRUE(after.count("model.layers.1.mlp.up_proj.weight"));

  // load_quantized gives back the expert within half a step.
  const TensorSource s = checkpoint_source(file("q4"));
  const std::string down = e1 + "down_proj.weight";
  EXPECT_TRUE(has_quantized(s, down));
  EXPECT_FALSE(has_quantized(s, "model.layers.0.self_attn.q_proj.weight"));
  const kernels::QuantizedMatrix q = load_quantized(s, down, 64, 32, 32);
  EXPECT_EQ(q.bits, 4);
  std::vector<float> d(64 * 32);
  kernels::dequantize_matrix(q.view(), d.data());
  const Tensor w = before.at(down);
  const uint16_t* sc = static_cast<const uint16_t*>(q.scales.raw());
  for (int64_t i = 0; i < 64 * 32; ++i)
    ASSERT_LE(std::fabs(w.get(i) - d[i]), 0.5 * f16_to_f32(sc[i / 32]) + 1e-7) << i;
  expect_error([&] { load_quantized(s, down, 32, 64, 32); },
               {down.substr(0, down.size() - 7), "expected shape (32, 64)", "(64, 32)"});
  expect_error([&] { load_quantized(s, down, 64, 32, 64); },
               {"experts.1.down_proj", "K = 32", "group size 64"});
  expect_error([&] { load_quantized(s, "model.layers.0.self_attn.q_proj.weight", 64, 64, 32); },
               {"missing tensor 'model.layers.0.self_attn.q_proj.qweight'"});
  expect_error([&] { load_quantized(s, "model.norm", 64, 64, 32); }, {"model.norm", "<name>.weight"});
}

TEST_F(QuantCkpt, Bf16AndF16Sources) {
  // The same model stored in bf16 and in f16 (as Hugging Face checkpoints often are).
  const std::string src = save_model(qwen2_config(), file("src"));
  const auto f32 = load_hf_tensors(src);
  for (const DType dt : {DType::BF16, DType::F16}) {
    const std::string dir = file(dtype_name(dt));
    std::filesystem::create_directories(dir);
    std::map<std::string, Tensor> sd;
    for (const auto& [name, t] : f32) sd[name] = t.to(dt);
    save_safetensors(dir + "/model.safetensors", sd);
    std::filesystem::copy_file(src + "/config.json", dir + "/config.json");
    QuantizeOptions o;
    o.bits = 8, o.group = 32;
    const QuantizeResult r = quantize_checkpoint(dir, dir + "_q8", o);
    EXPECT_EQ(r.expert_bytes_before, 2 * r.expert_params) << dtype_name(dt);
    const auto after = load_hf_tensors(dir + "_q8");
    EXPECT_EQ(after.at("model.norm.weight").dtype(), dt);  // copied as stored
    // The int8 codes of the 16-bit source dequantise to within half a step of the 16-bit weights.
    const std::string down = "model.layers.0.mlp.experts.2.down_proj.weight";
    const kernels::QuantizedMatrix q = load_quantized(checkpoint_source(dir + "_q8"), down, 64, 32, 32);
    std::vector<float> d(64 * 32);
    kernels::dequantize_matrix(q.view(), d.data());
    const uint16_t* sc = static_cast<const uint16_t*>(q.scales.raw());
    for (int64_t i = 0; i < 64 * 32; ++i)
      ASSERT_LE(std::fabs(sd.at(down).get(i) - d[i]), 0.5 * f16_to_f32(sc[i / 32]) + 1e-7)
          << dtype_name(dt) << " " << i;
  }
  // An expert weight of an integer dtype, or of the wrong rank, is named in the error.
  for (const bool rank : {false, true}) {
    const std::string dir = file(rank ? "rank" : "int");
    std::filesystem::create_directories(dir);
    std::map<std::string, Tensor> sd = f32;
    const std::string up = "model.layers.0.mlp.experts.3.up_proj.weight";
    sd[up] = rank ? f32.at(up).reshape({32 * 64}) : f32.at(up).to(DType::I32);
    save_safetensors(dir + "/model.safetensors", sd);
    std::filesystem::copy_file(src + "/config.json", dir + "/config.json");
    QuantizeOptions o;
    o.group = 32;
    expect_error([&] { quantize_checkpoint(dir, dir + "_q", o); },
                 {up, rank ? "must be 2-D" : "dtype i32", dir + "/model.safetensors"});
    EXPECT_FALSE(std::filesystem::exists(dir + "_q"));
  }
}

TEST_F(QuantCkpt, LoadQuantizedErrors) {
  // A source in memory with a wrong qweight dtype and a missing scales tensor.
  std::map<std::string, Tensor> sd;
  sd["a.qweight"] = Tensor::zeros({4, 32}, DType::F32);
  sd["b.qweight"] = Tensor::zeros({4, 16}, DType::U8);
  sd["c.qweight"] = Tensor::zeros({4, 32}, DType::I8);
  sd["c.scales"] = Tensor::zeros({4, 1}, DType::F16);
  sd["c.mins"] = Tensor::zeros({4, 1}, DType::F16);
  TensorSource s;
  for (const auto& [n, t] : sd) s.names.push_back(n);
  s.load = [&](const std::string& n) { return sd.at(n); };
  expect_error([&] { load_quantized(s, "a.weight", 4, 32, 32); }, {"a.qweight", "f32", "i8 (int8) or u8"});
  expect_error([&] { load_quantized(s, "b.weight", 4, 32, 32); }, {"missing tensor 'b.scales'"});
  expect_error([&] { load_quantized(s, "c.weight", 4, 32, 32); }, {"c.qweight", "int8", "mins"});
}

TEST_F(QuantCkpt, DeepseekAttentionAndMixedBits) {
  const ModelConfig cfg = deepseek_config();
  const std::string src = save_model(cfg, file("src"));
  // Usage of the one MoE layer (layer 1): experts 2 and 0 carry the least routing weight.
  std::ofstream(file("usage.json")) << R"({"tokens": 100, "layers": [{"layer": 1, "count": [50, 60, 10, 80],
                                         "weight": [20.5, 30.0, 4.25, 45.0]}]})";
  QuantizeOptions o;
  o.bits = 8, o.group = 32, o.attention = true, o.mixed_bits = 4, o.mixed_fraction = 0.5;
  o.usage_file = file("usage.json");
  const QuantizeResult r = quantize_checkpoint(src, file("q"), o);
  EXPECT_EQ(r.attention_tensors, 2 * 5);  // q_a, q_b, kv_a, kv_b, o per layer
  const QuantConfig qc = read_quant_config(file("q"));
  EXPECT_EQ(qc.bits, 8);
  EXPECT_TRUE(qc.attention);
  ASSERT_EQ(qc.expert_bits.size(), 1u);
  EXPECT_EQ(qc.expert_bits[0], (std::vector<int>{4, 8, 4, 8}));
  EXPECT_NO_THROW(check_quant_config(qc, cfg, "q"));
  EXPECT_EQ(expert_bits_of(qc, 0, 2), 4);
  EXPECT_EQ(expert_bits_of(qc, 0, 3), 8);
  expect_error([&] { expert_bits_of(qc, 1, 0); }, {"no entry for MoE layer 1"});
  QuantConfig wrong = qc;
  wrong.expert_bits[0].pop_back();
  expect_error([&] { check_quant_config(wrong, cfg, "dirX"); },
               {"dirX", "expert_bits[0] has 3 entries", "4 experts"});
  wrong.expert_bits.push_back({8, 8, 8, 8});
  expect_error([&] { check_quant_config(wrong, cfg, "dirX"); }, {"dirX", "2 layers", "1 MoE layers"});
  EXPECT_EQ(expert_bits_of(QuantConfig{4, 64, false, {}}, 7, 3), 4);
  const auto after = load_hf_tensors(file("q"));
  EXPECT_EQ(after.at("model.layers.1.mlp.experts.0.up_proj.qweight").dtype(), DType::U8);
  EXPECT_EQ(after.at("model.layers.1.mlp.experts.1.up_proj.qweight").dtype(), DType::I8);
  EXPECT_FALSE(after.count("model.layers.1.mlp.experts.1.up_proj.mins"));
  for (const char* p : {"q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"}) {
    EXPECT_EQ(after.at(std::string("model.layers.0.self_attn.") + p + ".qweight").dtype(), DType::I8) << p;
    EXPECT_FALSE(after.count(std::string("model.layers.0.self_attn.") + p + ".weight")) << p;
  }
  EXPECT_TRUE(after.count("model.layers.1.mlp.shared_experts.up_proj.weight"));
  EXPECT_TRUE(after.count("model.layers.0.mlp.up_proj.weight"));  // the dense layer
  const TensorSource s = checkpoint_source(file("q"));
  EXPECT_EQ(load_quantized(s, "model.layers.1.mlp.experts.2.down_proj.weight", 64, 32, 32).bits, 4);
  EXPECT_EQ(load_quantized(s, "model.layers.1.mlp.experts.3.down_proj.weight", 64, 32, 32).bits, 8);
}

TEST_F(QuantCkpt, Errors) {
  const std::string src = save_model(qwen2_config(), file("src"));
  QuantizeOptions o;
  o.group = 32;
  quantize_checkpoint(src, file("q"), o);
  expect_error([&] { quantize_checkpoint(src, file("q"), o); },
               {"output directory", "not empty", "--overwrite"});
  QuantizeOptions ow = o;
  ow.overwrite = true;
  EXPECT_NO_THROW(quantize_checkpoint(src, file("q"), ow));
  expect_error([&] { quantize_checkpoint(file("q"), file("q2"), o); }, {"already quantized"});
  model::CompressOptions lr;
  lr.rank = 2;
  model::compress_checkpoint(src, file("lr"), lr);
  expect_error([&] { quantize_checkpoint(file("lr"), file("q4"), o); }, {"holds low-rank experts"});
  expect_error([&] { quantize_checkpoint(file("none"), file("q3"), o); },
               {"model directory", "none", "does not exist"});
  QuantizeOptions bad = o;
  bad.bits = 3;
  expect_error([&] { quantize_checkpoint(src, file("q3"), bad); }, {"bits must be 4 or 8"});
  bad = o;
  bad.group = 64;  // the experts' down projection has K = 32
  expect_error([&] { quantize_checkpoint(src, file("q3"), bad); },
               {"down_proj.weight", "K = 32", "group size 64"});
  EXPECT_FALSE(std::filesystem::exists(file("q3/model.safetensors")));
  bad = o;
  bad.mixed_bits = 8;
  expect_error([&] { quantize_checkpoint(src, file("q3"), bad); }, {"mixed fraction"});
  bad.mixed_fraction = 0.25;
  expect_error([&] { quantize_checkpoint(src, file("q3"), bad); }, {"usage file"});
  std::ofstream(file("usage.json"))
      << R"({"tokens": 1, "layers": [{"layer": 1, "count": [1, 1, 1, 1], "weight": [1, 2, 3, 4]}]})";
  bad.usage_file = file("usage.json");
  expect_error([&] { quantize_checkpoint(src, file("q3"), bad); },
               {"usage.json", "no usage for MoE layer 0"});
  std::ofstream(file("usage2.json"))
      << R"({"tokens": 1, "layers": [{"layer": 0, "count": [1, 1], "weight": [1, 2]}]})";
  bad.usage_file = file("usage2.json");
  expect_error([&] { quantize_checkpoint(src, file("q3"), bad); },
               {"usage2.json", "2 expert weights", "4 experts"});
  std::ofstream(file("usage3.json")) << R"([1, 2])";
  bad.usage_file = file("usage3.json");
  expect_error([&] { quantize_checkpoint(src, file("q3"), bad); }, {"usage3.json", "expert usage file"});

  // Malformed quantization_config.
  auto with_qc = [&](const std::string& qc) {
    std::filesystem::create_directories(file("cfg"));
    std::ofstream(file("cfg/config.json"))
        << R"({"model_type": "qwen2_moe", "quantization_config": )" << qc << "}";
    return file("cfg");
  };
  expect_error([&] { read_quant_config(with_qc(R"({"quant_method": "gptq", "bits": 4})")); },
               {"config.json", "gptq"});
  expect_error(
      [&] {
        read_quant_config(
            with_qc(R"({"quant_method": "moe_cpp", "bits": 3, "group_size": 64, "modules": ["experts"]})"));
      },
      {"bits must be 4 or 8"});
  expect_error(
      [&] {
        read_quant_config(
            with_qc(R"({"quant_method": "moe_cpp", "bits": 4, "group_size": 50, "modules": ["experts"]})"));
      },
      {"group_size"});
  expect_error(
      [&] {
        read_quant_config(
            with_qc(R"({"quant_method": "moe_cpp", "bits": 4, "group_size": 64, "modules": ["mlp"]})"));
      },
      {"modules", "mlp"});
  expect_error(
      [&] {
        read_quant_config(with_qc(
            R"({"quant_method": "moe_cpp", "bits": 4, "group_size": 64, "modules": ["experts"], "expert_bits": [[4, 2]]})"));
      },
      {"expert_bits[0]", "2"});
  EXPECT_EQ(
      read_quant_config(
          with_qc(
              R"({"quant_method": "moe_cpp", "bits": 8, "group_size": 128, "modules": ["experts"], "expert_bits": [[4, 8]]})"))
          .expert_bits[0][0],
      4);
}

}  // namespace
}  // namespace moe::model
