// Inference-only models hold each weight once (Transformer::load_for_inference, release_masters,
// infer::load_inference_model): the packed weights are those of a model loaded whole and switched to
// bf16 inference, bit for bit, so the outputs are too; no f32 copy of a packed weight is held; the
// embedding table stays mapped from the file; what needs the f32 masters throws moe::Error.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "model/row_pack.h"
#include "model_testutil.h"
#include "moe/core/error.h"
#include "moe/core/rng.h"
#include "moe/infer/expert_store.h"
#include "moe/kernels/ops_quant.h"
#include "moe/kernels/weights.h"
#include "moe/model/gguf_model.h"
#include "moe/model/quantized.h"
#include "moe/model/safetensors.h"
#include "moe/model/transformer.h"
#include "temp_path.h"

namespace fs = std::filesystem;
using namespace moe;
using namespace moe::model;
using kernels::WeightFormat;

namespace {

using moe::model::testing::random_tokens;

// A checkpoint directory of `c` with random weights (removed with the object).
struct TempModel {
  std::string dir;
  TempModel(const ModelConfig& c, uint64_t seed, const std::string& stem)
      : dir(moe::testutil::unique_temp_path(stem)) {
    Transformer m(c);
    m.init_params(seed);
    save_pretrained(m, dir);
  }
  ~TempModel() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
};

Transformer load_inference(const std::string& dir, bool bf16, WeightFormat f = WeightFormat::Bf16Packed) {
  Transformer::InferenceLoad o;
  o.bf16 = bf16;
  o.linear_format = f;
  return Transformer::load_for_inference(load_model_config(dir + "/config.json"), checkpoint_source(dir), o);
}

// The model loaded whole (f32 masters), in the same precision.
Transformer load_whole(const std::string& dir, bool bf16, WeightFormat f = WeightFormat::Bf16Packed) {
  Transformer m = load_pretrained(dir);
  if (bf16) m.set_inference_linear_format(f);
  return m;
}

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.dtype() == b.dtype() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

// The logits of a batch, then those of greedy decoding with the KV cache, one after the other.
std::vector<float> outputs(const Transformer& m) {
  const int64_t V = m.config().vocab_size;
  const std::vector<int32_t> tok = random_tokens(2 * 6, V, 3);
  const Tensor l = m.logits(tok.data(), 2, 6);
  std::vector<float> out(l.data<float>(), l.data<float>() + l.numel());
  KVCache cache = m.new_cache(16);
  Tensor x = m.decode(cache, tok.data(), 6);
  for (int step = 0; step < 4; ++step) {
    out.insert(out.end(), x.data<float>(), x.data<float>() + x.numel());
    int32_t next = 0;
    for (int64_t v = 1; v < V; ++v)
      if (x.data<float>()[v] > x.data<float>()[next]) next = static_cast<int32_t>(v);
    x = m.decode(cache, &next, 1);
  }
  return out;
}

void expect_same_outputs(const Transformer& a, const Transformer& b) {
  const std::vector<float> x = outputs(a), y = outputs(b);
  ASSERT_EQ(x.size(), y.size());
  EXPECT_EQ(std::memcmp(x.data(), y.data(), x.size() * sizeof(float)), 0) << "outputs differ";
}

// A config whose linears have inputs of whole int8/int4 groups (32) and whose head is several row
// blocks of the loader (kBlockBytes of f32 rows) long, with a last block of a partial panel.
ModelConfig wide_config(Arch arch) {
  ModelConfig c = moe::model::testing::tiny_config(arch);
  c.hidden_size = 64, c.head_dim = 16, c.num_attention_heads = 4, c.num_key_value_heads = 2;
  c.intermediate_size = 64, c.moe_intermediate_size = 32;
  if (arch == Arch::Qwen2Moe) c.shared_expert_intermediate_size = 32;
  c.vocab_size = 2 * detail::RowReader::kBlockBytes / (4 * 64) + 40;
  c.initializer_range = 0.1;
  return c;
}

int64_t bytes_of_small_params(const Transformer& m) {  // norms, biases, routers, shared gates
  int64_t n = 0;
  for (const NamedParam& p : m.parameters())
    if (p.value.defined() && (p.value.dim() == 1 || p.name.find(".gate.weight") != std::string::npos ||
                              p.name.find("shared_expert_gate") != std::string::npos))
      n += static_cast<int64_t>(p.value.nbytes());
  return n;
}

}  // namespace

// Row blocks packed one after the other give the bytes of the whole matrix packed at once, in every
// packed format, for rows that are not a whole number of panels and parts that split a block.
TEST(InferenceLoad, RowBlocksPackAsTheWholeMatrix) {
  const int64_t K = 64;
  for (WeightFormat f : {WeightFormat::Bf16Packed, WeightFormat::Int8Packed, WeightFormat::Int4Packed}) {
    for (int64_t N : {16, 45, 100}) {
      for (int64_t block : {16, 32}) {
        SCOPED_TRACE(cat(kernels::weight_format_name(f), " N ", N, " block ", block));
        const int64_t group = f == WeightFormat::Bf16Packed ? 0 : 32;
        Tensor w = Tensor::empty({N, K}, DType::F32, "w");
        Rng(N + block).fill_normal(w, 0.0, 1.0);
        std::vector<uint8_t> whole(static_cast<size_t>(detail::packed_weight_bytes(f, N, K, group)), 0xAB);
        if (f == WeightFormat::Bf16Packed) {
          kernels::pack_bf16_weights({.format = WeightFormat::F32, .N = N, .K = K, .data = w.data<float>()},
                                     1, whole.data());
        } else {
          const int bits = f == WeightFormat::Int8Packed ? 8 : 4;
          const kernels::QuantizedMatrix q = kernels::quantize_matrix(w.data<float>(), N, K, bits, group);
          const kernels::QuantWeight v = q.view();
          kernels::pack_int_weights({.format = bits == 8 ? WeightFormat::Int8 : WeightFormat::Int4,
                                     .N = N,
                                     .K = K,
                                     .data = v.q,
                                     .scales = v.scales,
                                     .mins = v.mins,
                                     .group = group},
                                    1, whole.data());
        }
        // [top | bottom]: the matrix in two parts, the first one not a whole number of blocks
        const int64_t split = N / 2 + 3;
        detail::RowReader top(w.slice(0, 0, split).contiguous(), "top", {split, K}, "", false);
        detail::RowReader bottom(w.slice(0, split, N).contiguous(), "bottom", {N - split, K}, "", false);
        std::vector<uint8_t> blocks(whole.size(), 0xCD);
        detail::RowPacker p(f, N, K, group, blocks.data(), "w");
        detail::pack_rows({&top, &bottom}, p, block);
        EXPECT_EQ(p.done(), N);
        EXPECT_EQ(blocks, whole);
      }
    }
  }
}

// bf16 inference loaded tensor by tensor equals the model loaded whole and switched to bf16
// inference: the same packed weights, bit for bit the same logits and greedy decoding, the same bytes
// per token; and it holds no f32 copy of what it packed.
TEST(InferenceLoad, Bf16LoadEqualsLoadThenBf16AndHoldsNoMasters) {
  for (Arch arch : {Arch::Mixtral, Arch::Qwen2Moe, Arch::Qwen3Moe, Arch::Olmoe, Arch::DeepseekV3}) {
    SCOPED_TRACE(arch_name(arch));
    const ModelConfig c = moe::model::testing::tiny_config(arch);
    const TempModel t(c, 11, "m");
    const Transformer whole = load_whole(t.dir, true);
    const Transformer m = load_inference(t.dir, true);
    EXPECT_TRUE(m.bf16_inference());
    EXPECT_TRUE(m.masters_released());
    expect_same_outputs(whole, m);
    EXPECT_EQ(m.weight_bytes_per_token().total(), whole.weight_bytes_per_token().total());
    // Every linear and expert weight is held packed only; the embedding table is mapped.
    for (const NamedParam& p : m.parameters()) {
      const bool small = p.name.find("norm") != std::string::npos ||
                         p.name.find("bias") != std::string::npos ||
                         p.name.find(".gate.weight") != std::string::npos ||
                         p.name.find("shared_expert_gate") != std::string::npos;
      EXPECT_EQ(p.value.defined(), small) << p.name;
    }
    const Transformer::WeightMemory a = m.weight_memory(), b = whole.weight_memory();
    EXPECT_EQ(a.packed, b.packed);
    EXPECT_EQ(a.masters, bytes_of_small_params(m));
    EXPECT_EQ(a.mapped, c.vocab_size * c.hidden_size * 4);
    int64_t released = 0;  // the f32 bytes of what is held packed only (and of the mapped table)
    for (size_t i = 0; i < m.parameters().size(); ++i)
      if (!m.parameters()[i].value.defined()) released += whole.parameters()[i].value.nbytes();
    EXPECT_EQ(b.masters, a.masters + released);
  }
}

// W8A8 / W4A8 linears, and a head and embedding table of several row blocks (tied and not).
TEST(InferenceLoad, IntegerLinearsAndLongTablesLoadAsLoadThenPack) {
  for (bool tied : {false, true}) {
    ModelConfig c = wide_config(Arch::Qwen2Moe);
    c.tie_word_embeddings = tied;
    const TempModel t(c, 12, tied ? "tied" : "untied");
    for (WeightFormat f : {WeightFormat::Bf16Packed, WeightFormat::Int8Packed, WeightFormat::Int4Packed}) {
      SCOPED_TRACE(cat(kernels::weight_format_name(f), tied ? " tied" : " untied"));
      const Transformer whole = load_whole(t.dir, true, f);
      const Transformer m = load_inference(t.dir, true, f);
      EXPECT_EQ(m.inference_linear_format(), f);
      expect_same_outputs(whole, m);
      EXPECT_EQ(m.weight_memory().packed, whole.weight_memory().packed);
    }
  }
}

// An f32 load: an ordinary f32 model (same outputs, same training step), its parameters read into
// place and its f32 embedding table the mapped file tensor, privately: writes do not reach the file.
TEST(InferenceLoad, F32LoadIsAnOrdinaryModelWithAMappedTable) {
  const ModelConfig c = moe::model::testing::tiny_config(Arch::Qwen2Moe);
  const TempModel t(c, 13, "f32");
  Transformer whole = load_whole(t.dir, false);
  Transformer m = load_inference(t.dir, false);
  EXPECT_FALSE(m.masters_released());
  expect_same_outputs(whole, m);
  const Transformer::WeightMemory w = m.weight_memory();
  EXPECT_EQ(w.mapped, c.vocab_size * c.hidden_size * 4);
  EXPECT_EQ(w.masters + w.mapped, whole.weight_memory().masters);
  const std::vector<int32_t> tok = random_tokens(10, c.vocab_size, 4),
                             tgt = random_tokens(10, c.vocab_size, 5);
  StepOptions o;
  o.training = false;
  whole.zero_grads(), m.zero_grads();
  EXPECT_EQ(whole.forward_backward(tok.data(), tgt.data(), 2, 5, o).loss_sum,
            m.forward_backward(tok.data(), tgt.data(), 2, 5, o).loss_sum);
  for (size_t i = 0; i < m.parameters().size(); ++i)
    EXPECT_TRUE(same_bits(m.parameters()[i].grad, whole.parameters()[i].grad)) << m.parameters()[i].name;
  Tensor& embed = m.param("model.embed_tokens.weight").value;
  const double before = embed.get(3);
  embed.set(3, before + 1.0);
  EXPECT_EQ(embed.get(3), before + 1.0);
  EXPECT_EQ(load_pretrained(t.dir).param("model.embed_tokens.weight").value.get(3), before);
  save_pretrained(m, t.dir + "_saved");  // savable, with the change
  EXPECT_EQ(load_pretrained(t.dir + "_saved").param("model.embed_tokens.weight").value.get(3), before + 1.0);
  fs::remove_all(t.dir + "_saved");
}

// A bf16 checkpoint: the embedding table stays mapped in bf16 (its rows widened exactly as looked up).
TEST(InferenceLoad, Bf16CheckpointKeepsItsTableInBf16) {
  const ModelConfig c = moe::model::testing::tiny_config(Arch::Olmoe);
  const TempModel t(c, 14, "bf16");
  {
    std::map<std::string, Tensor> sd = load_pretrained(t.dir).hf_state_dict();
    for (auto& [name, v] : sd) v = v.to(DType::BF16);
    save_safetensors(t.dir + "/model.safetensors", sd);
  }
  const Transformer whole = load_whole(t.dir, true);
  const Transformer m = load_inference(t.dir, true);
  expect_same_outputs(whole, m);
  EXPECT_EQ(m.weight_memory().mapped, c.vocab_size * c.hidden_size * 2);
  // f32: a bf16 table is widened into the model's own f32 parameter
  const Transformer f = load_inference(t.dir, false);
  expect_same_outputs(load_whole(t.dir, false), f);
  EXPECT_EQ(f.weight_memory().mapped, 0);
}

// release_masters on a model loaded whole: the same outputs, the linears' and experts' f32 weights
// gone (a tied embedding table stays: lookups read it).
TEST(InferenceLoad, ReleaseMastersKeepsTheOutputs) {
  for (Arch arch : {Arch::Mixtral, Arch::DeepseekV3}) {
    SCOPED_TRACE(arch_name(arch));
    const ModelConfig c = moe::model::testing::tiny_config(arch);
    const TempModel t(c, 15, "release");
    Transformer m = load_whole(t.dir, true);
    const std::vector<float> before = outputs(m);
    const int64_t held = m.weight_memory().masters;
    m.release_masters();
    const std::vector<float> after = outputs(m);
    ASSERT_EQ(before.size(), after.size());
    EXPECT_EQ(std::memcmp(before.data(), after.data(), before.size() * sizeof(float)), 0);
    EXPECT_LT(m.weight_memory().masters, held);
    EXPECT_TRUE(m.param("model.embed_tokens.weight").value.defined());  // lookups read it (tied: packed too)
    EXPECT_FALSE(m.param("model.layers.0.self_attn.o_proj.weight").value.defined());
  }
  Transformer f32 = load_pretrained(TempModel(moe::model::testing::tiny_config(Arch::Olmoe), 16, "f").dir);
  EXPECT_THROW(f32.release_masters(), Error);  // nothing packed: the f32 weights are the only ones
}

// What needs the f32 masters throws a clear moe::Error on a released model; inference goes on.
TEST(InferenceLoad, ReleasedModelRefusesWhatNeedsMasters) {
  const ModelConfig c = moe::model::testing::tiny_config(Arch::Qwen2Moe);
  const TempModel t(c, 17, "refuse");
  Transformer m = load_inference(t.dir, true);
  const std::vector<int32_t> tok = random_tokens(6, c.vocab_size, 6);
  auto expect_refused = [&](const char* what, const std::function<void()>& f) {
    try {
      f();
      ADD_FAILURE() << what << " did not throw";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("inference only"), std::string::npos) << what << ": " << e.what();
    }
  };
  StepOptions o;
  expect_refused("forward_backward", [&] { m.forward_backward(tok.data(), tok.data(), 1, 6, o); });
  expect_refused("set_bf16_inference(false)", [&] { m.set_bf16_inference(false); });
  expect_refused("set_bf16_inference(true)", [&] { m.set_bf16_inference(true); });
  expect_refused("set_inference_linear_format",
                 [&] { m.set_inference_linear_format(WeightFormat::Int8Packed); });
  expect_refused("set_bf16_compute", [&] { m.set_bf16_compute(true); });
  expect_refused("zero_grads", [&] { m.zero_grads(); });
  expect_refused("init_params", [&] { m.init_params(1); });
  expect_refused("hf_state_dict", [&] { (void)m.hf_state_dict(); });
  expect_refused("save_pretrained", [&] { save_pretrained(m, t.dir + "_out"); });
  expect_refused("load_hf_state_dict", [&] { m.load_hf_state_dict(checkpoint_source(t.dir)); });
  MoELayer* layer = m.mutable_moe_layer(0);
  ASSERT_NE(layer, nullptr);
  EXPECT_TRUE(layer->expert_masters_released());
  for (auto f : std::vector<std::function<void()>>{[&] { layer->set_bf16_expert_weights(false); },
                                                   [&] { layer->set_bf16_compute(true); },
                                                   [&] { layer->init_params(1); }}) {
    try {
      f();
      ADD_FAILURE() << "the MoE layer did not refuse";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("released"), std::string::npos) << e.what();
    }
  }
  EXPECT_FALSE(fs::exists(t.dir + "_out/model.safetensors"));
  // Inference is unaffected.
  EXPECT_EQ(m.evaluate(tok.data(), tok.data(), 1, 6).count, 6);
  expect_same_outputs(load_whole(t.dir, true), m);
}

// The loader's errors name the tensor, as load_pretrained's do.
TEST(InferenceLoad, BadCheckpointsAreNamed) {
  const ModelConfig c = moe::model::testing::tiny_config(Arch::Mixtral);
  const TempModel t(c, 18, "bad");
  std::map<std::string, Tensor> sd = load_pretrained(t.dir).hf_state_dict();
  auto expect_error = [&](const std::map<std::string, Tensor>& tensors, const std::string& needle) {
    save_safetensors(t.dir + "/model.safetensors", tensors);
    for (bool bf16 : {false, true}) {
      try {
        (void)load_inference(t.dir, bf16);
        ADD_FAILURE() << needle << " not reported";
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
      }
    }
  };
  auto missing = sd;
  missing.erase("model.layers.1.self_attn.k_proj.weight");
  expect_error(missing, "missing tensor 'model.layers.1.self_attn.k_proj.weight'");
  auto shaped = sd;
  shaped["model.layers.0.block_sparse_moe.experts.1.w2.weight"] = Tensor::zeros({3, 3});
  expect_error(shaped, "model.layers.0.block_sparse_moe.experts.1.w2.weight");
  auto extra = sd;
  extra["model.layers.0.extra.weight"] = Tensor::zeros({2});
  expect_error(extra, "unexpected tensor(s)");
  auto ints = sd;
  ints["model.norm.weight"] = Tensor::zeros({c.hidden_size}, DType::I32);
  expect_error(ints, "expected a float type");
}

// infer::load_inference_model (moe generate / serve / eval / bench generate): bf16 holds no masters,
// also with the experts in an expert store (the shared experts packed in the model), and with
// --linear-format w8a8 on a quantized checkpoint the outputs are those of the f32 load switched to it.
TEST(InferenceLoad, InferenceModelsHoldEachWeightOnce) {
  ModelConfig c = wide_config(Arch::Qwen2Moe);
  c.vocab_size = 50;
  const TempModel t(c, 19, "infer");
  infer::InferenceLoadOptions lo;
  lo.bf16 = true;
  infer::InferenceModel im = infer::load_inference_model(t.dir, lo);
  EXPECT_TRUE(im.model->masters_released());
  EXPECT_EQ(im.model->weight_memory().masters, bytes_of_small_params(*im.model));
  expect_same_outputs(load_whole(t.dir, true), *im.model);
  lo.offload = true;
  lo.store.resident_experts = 4;
  infer::InferenceModel om = infer::load_inference_model(t.dir, lo);
  ASSERT_TRUE(om.store);
  EXPECT_TRUE(om.model->masters_released());
  EXPECT_EQ(om.model->weight_memory().masters, bytes_of_small_params(*om.model));
  const std::string qdir = t.dir + "_q8";
  QuantizeOptions qo;
  qo.bits = 8, qo.group = 32, qo.attention = true;
  quantize_checkpoint(t.dir, qdir, qo);
  infer::InferenceLoadOptions q;
  q.store.format = "w8a8";
  infer::InferenceModel f32 = infer::load_inference_model(qdir, q);
  EXPECT_FALSE(f32.model->masters_released());
  f32.model->set_inference_linear_format(WeightFormat::Int8Packed);
  q.linear_format = "w8a8";
  infer::InferenceModel w8 = infer::load_inference_model(qdir, q);
  EXPECT_TRUE(w8.model->masters_released());
  EXPECT_EQ(w8.model->weight_memory().masters, bytes_of_small_params(*w8.model));
  expect_same_outputs(*f32.model, *w8.model);
  fs::remove_all(qdir);
}

// A GGUF file (moe generate --model FILE.gguf): its tensors dequantized as they are read and packed
// one by one, as load_gguf followed by bf16 inference packs them.
TEST(InferenceLoad, GgufLoadEqualsLoadThenBf16) {
  const ModelConfig c = moe::model::testing::tiny_config(Arch::Qwen3Moe);
  Transformer m(c);
  m.init_params(20);
  const std::string file = moe::testutil::unique_temp_path("m.gguf");
  GgufExportOptions go;
  go.type = gguf::GgmlType::F16;
  (void)export_gguf(m, file, go);
  Transformer whole = load_gguf(file);
  whole.set_bf16_inference(true);
  infer::InferenceLoadOptions lo;
  lo.bf16 = true;
  const infer::InferenceModel im = infer::load_inference_model(file, lo);
  EXPECT_TRUE(im.model->masters_released());
  expect_same_outputs(whole, *im.model);
  fs::remove(file);
}
