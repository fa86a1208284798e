// Models in GGUF files (tests/fixtures/gguf, written by the gguf package from tests/fixtures/hf):
// each architecture loads with the config and logits of its safetensors checkpoint; quantized files
// give the logits of the checkpoint with the same quantization applied to its weights; export ->
// load round trips.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <string>

#include "moe/core/error.h"
#include "moe/infer/generate.h"
#include "moe/model/gguf_model.h"
#include "moe/model/safetensors.h"
#include "moe/model/transformer.h"
#include "temp_path.h"

using namespace moe;

namespace {

const std::string kFixtures = std::string(MOE_TEST_FIXTURES);

struct Prompt {
  std::vector<int32_t> ids;
  std::vector<int32_t> greedy;
};

Prompt prompt_of(const std::string& arch) {
  const auto exp = load_safetensors(kFixtures + "/hf/" + arch + "/expected.safetensors");
  Prompt p;
  for (double v : exp.at("input_ids").to_vector()) p.ids.push_back(static_cast<int32_t>(v));
  for (double v : exp.at("greedy_ids").to_vector()) p.greedy.push_back(static_cast<int32_t>(v));
  return p;
}

std::vector<double> logits(const model::Transformer& m, const Prompt& p) {
  return m.logits(p.ids.data(), 1, static_cast<int64_t>(p.ids.size())).to_vector();
}

// max |a - b| / max |b|
double rel_err(const std::vector<double>& a, const std::vector<double>& b) {
  double scale = 0, err = 0;
  for (size_t i = 0; i < b.size(); ++i) scale = std::max(scale, std::abs(b[i]));
  for (size_t i = 0; i < b.size(); ++i) err = std::max(err, std::abs(a[i] - b[i]));
  return err / scale;
}

// The checkpoint with every matrix that the fixture quantizes (2-D and up, not a router) passed
// through the format (f16 for rows of partial blocks): quantize_row then dequantize_row.
model::Transformer quantized_reference(const std::string& arch, gguf::GgmlType t) {
  model::Transformer m = model::load_pretrained(kFixtures + "/hf/" + arch);
  for (model::NamedParam& p : m.parameters()) {
    const bool router = p.name.find(".gate.weight") != std::string::npos;
    if (p.value.dim() < 2 || router) continue;
    // Rows of partial blocks: f16, as the converter writes them.
    const gguf::GgmlType pt =
        p.value.shape().back() % gguf::ggml_block_size(t) != 0 ? gguf::GgmlType::F16 : t;
    Tensor v = p.value.contiguous();
    std::vector<uint8_t> q(gguf::ggml_row_bytes(pt, v.numel()));
    gguf::quantize_row(pt, v.data<float>(), v.numel(), q.data());
    gguf::dequantize_row(pt, q.data(), v.numel(), p.value.data<float>());
  }
  return m;
}

}  // namespace

class GgufArch : public ::testing::TestWithParam<std::string> {};

TEST_P(GgufArch, F32FileGivesTheCheckpointsConfigAndLogits) {
  const std::string arch = GetParam();
  const model::Transformer ref = model::load_pretrained(kFixtures + "/hf/" + arch);
  const model::Transformer m = model::load_gguf(kFixtures + "/gguf/" + arch + ".f32.gguf");
  const model::ModelConfig &a = m.config(), &b = ref.config();
  EXPECT_EQ(a.arch, b.arch);
  EXPECT_EQ(a.vocab_size, b.vocab_size);
  EXPECT_EQ(a.num_hidden_layers, b.num_hidden_layers);
  EXPECT_EQ(a.head_dim_or_default(), b.head_dim_or_default());
  EXPECT_EQ(a.expert_width(), b.expert_width());
  EXPECT_EQ(a.num_experts, b.num_experts);
  EXPECT_EQ(a.num_experts_per_tok, b.num_experts_per_tok);
  EXPECT_EQ(a.norm_topk_prob, b.norm_topk_prob);
  EXPECT_EQ(a.shared_expert_intermediate_size, b.shared_expert_intermediate_size);
  for (int64_t l = 0; l < a.num_hidden_layers; ++l) EXPECT_EQ(a.is_moe_layer(l), b.is_moe_layer(l)) << l;
  EXPECT_EQ(a.rms_norm_eps, b.rms_norm_eps);
  // The same f32 weights (the rope permutation undone exactly): the same logits, bit for bit.
  const Prompt p = prompt_of(arch);
  EXPECT_EQ(logits(m, p), logits(ref, p));
  infer::GenerateOptions o;
  o.max_new_tokens = static_cast<int64_t>(p.greedy.size());
  o.sampling.temperature = 0;
  EXPECT_EQ(infer::generate(m, p.ids, o).tokens, p.greedy);
}

TEST_P(GgufArch, ExportThenLoadGivesTheSameLogits) {
  const std::string arch = GetParam();
  const model::Transformer ref = model::load_pretrained(kFixtures + "/hf/" + arch);
  const std::string out = moe::testutil::unique_temp_path(("moe_test_export_" + arch + ".gguf"));
  // What llama.cpp cannot run of these fixtures is said: qwen's dense layers, olmoe's kv heads.
  const std::string note = model::export_gguf(ref, out, {});
  const std::string want = arch == "mixtral" ? "" : arch == "olmoe" ? "key/value heads" : "dense layers";
  if (want.empty())
    EXPECT_EQ(note, "");
  else
    EXPECT_NE(note.find(want), std::string::npos) << note;
  const model::Transformer m = model::load_gguf(out);
  const Prompt p = prompt_of(arch);
  EXPECT_EQ(logits(m, p), logits(ref, p));
  // The exporter writes what the fixture (the converter's layout) holds: same names, shapes, types.
  const gguf::Reader mine(out), theirs(kFixtures + "/gguf/" + arch + ".f32.gguf");
  ASSERT_EQ(mine.tensors().size(), theirs.tensors().size());
  for (const gguf::TensorInfo& t : theirs.tensors()) {
    const gguf::TensorInfo* u = mine.find_tensor(t.name);
    ASSERT_NE(u, nullptr) << t.name;
    EXPECT_EQ(u->ne, t.ne) << t.name;
    EXPECT_EQ(mine.read_raw(*u), theirs.read_raw(t)) << t.name;
  }
  std::filesystem::remove(out);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, GgufArch, ::testing::Values("mixtral", "qwen2_moe", "qwen3_moe", "olmoe"),
                         [](const ::testing::TestParamInfo<std::string>& p) { return p.param; });

class GgufType : public ::testing::TestWithParam<std::string> {};

// The file's matrices were quantized by the gguf package; the engine's logits of it equal, within
// f32 rounding, the logits of the checkpoint with its matrices put through the same format here.
// That equality is the check; the distance to the unquantized logits is reported, and bounded by
// the format's relative step times a depth factor (generous: it catches a wrong layout, which is
// an O(1) error, not a rounding difference).
TEST_P(GgufType, QuantizedFileGivesTheLogitsOfTheQuantizedWeights) {
  const gguf::GgmlType t = gguf::ggml_type_from_name(GetParam());
  const model::Transformer m = model::load_gguf(kFixtures + "/gguf/mixtral." + GetParam() + ".gguf");
  const Prompt p = prompt_of("mixtral");
  const std::vector<double> got = logits(m, p);
  EXPECT_LT(rel_err(got, logits(quantized_reference("mixtral", t), p)), 2e-5);
  const double step = t == gguf::GgmlType::F16    ? 0x1p-11
                      : t == gguf::GgmlType::BF16 ? 0x1p-8
                      : t == gguf::GgmlType::Q8_0 ? 1.0 / 127
                                                  : 1.0 / 8;
  const double err = rel_err(got, logits(model::load_pretrained(kFixtures + "/hf/mixtral"), p));
  RecordProperty("relative_logit_error_vs_f32", std::to_string(err));
  EXPECT_LT(err, 10 * step);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, GgufType, ::testing::Values("f16", "bf16", "q8_0", "q4_0"),
                         [](const ::testing::TestParamInfo<std::string>& p) { return p.param; });

TEST(GgufModel, ExportQuantizedThenLoadMatchesTheSameQuantization) {
  const model::Transformer ref = model::load_pretrained(kFixtures + "/hf/mixtral");
  const std::string out = moe::testutil::unique_temp_path("moe_test_export_q8.gguf");
  model::GgufExportOptions opt;
  opt.type = gguf::GgmlType::Q8_0;
  const std::string note = model::export_gguf(ref, out, opt);
  EXPECT_NE(note.find("written as f16"), std::string::npos) << note;  // rows of 24 are not q8_0 blocks
  const model::Transformer m = model::load_gguf(out);
  // The exporter's q8_0 is ggml's: the file holds the gguf package's fixture byte for byte.
  const gguf::Reader mine(out), theirs(kFixtures + "/gguf/mixtral.q8_0.gguf");
  ASSERT_EQ(mine.tensors().size(), theirs.tensors().size());
  for (const gguf::TensorInfo& t : theirs.tensors()) {
    EXPECT_EQ(mine.tensor(t.name).type, t.type) << t.name;
    EXPECT_EQ(mine.read_raw(mine.tensor(t.name)), theirs.read_raw(t)) << t.name;
  }
  const Prompt p = prompt_of("mixtral");
  EXPECT_LT(rel_err(logits(m, p), logits(quantized_reference("mixtral", gguf::GgmlType::Q8_0), p)), 2e-5);
  std::filesystem::remove(out);
}

TEST(GgufModel, MissingTensorsAndUnknownArchitecturesAreNamed) {
  const std::string out = moe::testutil::unique_temp_path("moe_test_gguf_bad_arch.gguf");
  gguf::WriteFile f;
  f.metadata = {{"general.architecture", gguf::str_value("gpt2")}};
  gguf::write_file(out, f);
  try {
    model::load_gguf(out);
    FAIL() << "accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("architecture 'gpt2' is not supported"), std::string::npos)
        << e.what();
  }
  // A mixtral file without its layer-1 router: refused, naming the tensor.
  const gguf::Reader r(kFixtures + "/gguf/mixtral.f32.gguf");
  f.metadata.clear();
  for (const auto& [k, v] : r.metadata()) f.metadata.emplace_back(k, v);
  f.tensors.clear();
  for (const gguf::TensorInfo& t : r.tensors())
    if (t.name != "blk.1.attn_v.weight")
      f.tensors.push_back({t.name, r.load_f32(t.name), gguf::GgmlType::F32});
  gguf::write_file(out, f);
  try {
    model::load_gguf(out);
    FAIL() << "accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.layers.1.self_attn.v_proj.weight"), std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find(out), std::string::npos) << e.what();
  }
  std::filesystem::remove(out);
}

TEST(GgufModel, ExpertsStoredOnePerTensorLoadAsStacked) {
  // Files from before llama.cpp stacked the experts hold blk.N.ffn_gate.E.weight, one per expert.
  const gguf::Reader r(kFixtures + "/gguf/mixtral.f32.gguf");
  gguf::WriteFile f;
  for (const auto& [k, v] : r.metadata()) f.metadata.emplace_back(k, v);
  for (const gguf::TensorInfo& t : r.tensors()) {
    const Tensor v = r.load_f32(t.name);
    const size_t at = t.name.find("_exps.weight");
    if (at == std::string::npos) {
      f.tensors.push_back({t.name, v, gguf::GgmlType::F32});
      continue;
    }
    for (int64_t e = 0; e < v.size(0); ++e)
      f.tensors.push_back({t.name.substr(0, at) + "." + std::to_string(e) + ".weight",
                           v.slice(0, e, e + 1).reshape({v.size(1), v.size(2)}).contiguous(),
                           gguf::GgmlType::F32});
  }
  const std::string out = moe::testutil::unique_temp_path("moe_test_gguf_split_experts.gguf");
  gguf::write_file(out, f);
  ASSERT_NE(gguf::Reader(out).find_tensor("blk.1.ffn_down.3.weight"), nullptr);
  const Prompt p = prompt_of("mixtral");
  EXPECT_EQ(logits(model::load_gguf(out), p), logits(model::load_pretrained(kFixtures + "/hf/mixtral"), p));
  std::filesystem::remove(out);
}

namespace {
// deepseek_v3's checkpoint as GGUF can hold it: YaRN's mscale equal to mscale_all_dim (GGUF keeps
// 0.1 · mscale_all_dim only and llama.cpp takes mscale equal to it; the fixture has 1.0 and 0.8).
model::Transformer deepseek_reference() {
  const std::string dir = kFixtures + "/hf/deepseek_v3";
  model::ModelConfig c = model::load_model_config(dir + "/config.json");
  c.rope_scaling.mscale = c.rope_scaling.mscale_all_dim;
  model::Transformer m(c);
  m.load_hf_state_dict(model::checkpoint_source(dir));
  return m;
}
}  // namespace

TEST(GgufModel, Deepseek2GivesTheCheckpointsConfigAndLogits) {
  const model::Transformer ref = deepseek_reference();
  const model::Transformer m = model::load_gguf(kFixtures + "/gguf/deepseek_v3.f32.gguf");
  const model::ModelConfig &a = m.config(), &b = ref.config();
  EXPECT_EQ(a.arch, model::Arch::DeepseekV3);
  EXPECT_EQ(a.q_lora_rank, b.q_lora_rank);
  EXPECT_EQ(a.kv_lora_rank, b.kv_lora_rank);
  EXPECT_EQ(a.qk_nope_head_dim, b.qk_nope_head_dim);
  EXPECT_EQ(a.qk_rope_head_dim, b.qk_rope_head_dim);
  EXPECT_EQ(a.v_head_dim, b.v_head_dim);
  EXPECT_EQ(a.n_group, b.n_group);
  EXPECT_EQ(a.topk_group, b.topk_group);
  EXPECT_EQ(a.routed_scaling_factor, b.routed_scaling_factor);
  EXPECT_EQ(a.norm_topk_prob, b.norm_topk_prob);
  EXPECT_EQ(a.first_k_dense_replace, b.first_k_dense_replace);
  EXPECT_EQ(a.n_shared_experts, b.n_shared_experts);
  EXPECT_EQ(a.rope_scaling.factor, b.rope_scaling.factor);
  EXPECT_EQ(a.rope_scaling.mscale_all_dim, b.rope_scaling.mscale_all_dim);
  EXPECT_EQ(a.rope_scaling.original_max_position_embeddings, b.rope_scaling.original_max_position_embeddings);
  EXPECT_EQ(a.rms_norm_eps, b.rms_norm_eps);
  const Prompt p = prompt_of("deepseek_v3");
  EXPECT_EQ(logits(m, p), logits(ref, p));
  // Export writes the converter's layout (k_b/v_b split, metadata) and says what GGUF loses.
  const std::string out = moe::testutil::unique_temp_path("moe_test_export_deepseek.gguf");
  const model::Transformer hf = model::load_pretrained(kFixtures + "/hf/deepseek_v3");
  EXPECT_NE(model::export_gguf(hf, out, {}).find("mscale"), std::string::npos);
  const gguf::Reader mine(out), theirs(kFixtures + "/gguf/deepseek_v3.f32.gguf");
  ASSERT_EQ(mine.tensors().size(), theirs.tensors().size());
  for (const gguf::TensorInfo& t : theirs.tensors()) {
    ASSERT_NE(mine.find_tensor(t.name), nullptr) << t.name;
    EXPECT_EQ(mine.tensor(t.name).ne, t.ne) << t.name;
    EXPECT_EQ(mine.read_raw(mine.tensor(t.name)), theirs.read_raw(t)) << t.name;
  }
  EXPECT_EQ(logits(model::load_gguf(out), p), logits(ref, p));
  std::filesystem::remove(out);
}
