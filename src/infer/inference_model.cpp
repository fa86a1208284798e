// Loading a model for inference: float experts in the model, or quantized / offloaded experts in an
// expert store, every path through model::Transformer::load_for_inference (each weight held once: in
// bf16 inference the linears and experts are packed as they are read and no f32 copy is kept).
// Quantized attention projections (moe quantize --attention) are dequantised to f32 as they are read,
// then packed like the others (bf16 or W8A8 / W4A8 with --bf16 / --linear-format, else held in f32).
#include <set>

#include "low_rank_load.h"
#include "moe/core/error.h"
#include "moe/dist/comm.h"
#include "moe/infer/expert_store.h"
#include "moe/model/gguf_model.h"
#include "moe/model/model_config.h"
#include "moe/model/quantized.h"

namespace moe::infer {

namespace {
const std::string kQ = ".qweight";

bool ends_with(const std::string& s, const std::string& t) {
  return s.size() >= t.size() && s.compare(s.size() - t.size(), t.size(), t) == 0;
}

// `src` with every non-expert "<base>.qweight/.scales/.mins" triple presented as "<base>.weight" (f32).
model::TensorSource dequantizing_source(model::TensorSource src, const model::QuantConfig& qc) {
  std::set<std::string> bases;
  for (const std::string& n : src.names)
    if (ends_with(n, kQ) && n.find(".experts.") == std::string::npos)
      bases.insert(n.substr(0, n.size() - kQ.size()));
  if (bases.empty()) return src;
  model::TensorSource out;
  for (const std::string& n : src.names) {
    bool part = false;
    for (const char* suf : {".qweight", ".scales", ".mins"}) {
      const std::string s = suf;
      if (ends_with(n, s) && bases.count(n.substr(0, n.size() - s.size()))) part = true;
    }
    if (!part) out.names.push_back(n);
  }
  for (const std::string& b : bases) out.names.push_back(b + ".weight");
  const int64_t group = qc.group;
  out.load = [src, bases, group](const std::string& name) {
    if (!ends_with(name, ".weight") || !bases.count(name.substr(0, name.size() - 7))) return src.load(name);
    const std::string base = name.substr(0, name.size() - 7);
    Tensor q = src.load(base + kQ);
    const int bits = q.dtype() == DType::I8 ? 8 : 4;
    Tensor mins = bits == 4 ? src.load(base + ".mins") : Tensor();
    const kernels::QuantizedMatrix m = kernels::quantized_from_tensors(
        bits, group, std::move(q), src.load(base + ".scales"), std::move(mins), base);
    const int64_t N = m.N, K = m.K;
    Tensor w = Tensor::empty({N, K}, DType::F32, name);
    kernels::dequantize_matrix(m.view(), w.data<float>());
    return w;
  };
  if (src.map)  // the tensors made here are not in the file
    out.map = [src, bases](const std::string& name) {
      const bool synth = ends_with(name, ".weight") && bases.count(name.substr(0, name.size() - 7));
      return synth ? Tensor() : src.map(name);
    };
  if (src.file)
    out.file = [src, bases](const std::string& name) {
      const bool synth = ends_with(name, ".weight") && bases.count(name.substr(0, name.size() - 7));
      return src.file(synth ? name.substr(0, name.size() - 7) + kQ : name);
    };
  return out;
}
// The precision InferenceLoadOptions asks for: f32, or bf16 inference with the dense linears in bf16,
// W8A8 or W4A8 (which imply bf16).
model::Transformer::InferenceLoad precision(const InferenceLoadOptions& opt) {
  model::Transformer::InferenceLoad p;
  if (opt.linear_format == "w8a8" || opt.linear_format == "w4a8") {
    p.bf16 = true;
    p.linear_format =
        opt.linear_format == "w8a8" ? kernels::WeightFormat::Int8Packed : kernels::WeightFormat::Int4Packed;
    return p;
  }
  MOE_CHECK(opt.linear_format == "bf16", "inference: unknown linear format '", opt.linear_format,
            "' (bf16, w8a8, w4a8)");
  p.bf16 = opt.bf16;
  return p;
}

// Transformer::load_for_inference with `where` (the directory or file) in front of its errors.
std::unique_ptr<model::Transformer> load_model(const std::string& where, model::ModelConfig cfg,
                                               const model::TensorSource& src,
                                               const model::Transformer::InferenceLoad& p) {
  try {
    return std::make_unique<model::Transformer>(
        model::Transformer::load_for_inference(std::move(cfg), src, p));
  } catch (const Error& e) {
    throw Error(cat(where, ": ", e.what()));
  }
}
}  // namespace

InferenceModel load_inference_model(const std::string& dir, const InferenceLoadOptions& opt) {
  const bool ep = opt.ep && opt.ep->size() > 1;
  if (model::is_gguf_path(dir)) {  // a GGUF file: float experts in the model
    MOE_CHECK(!ep, "gguf '", dir, "': expert parallelism reads safetensors checkpoints only (each rank ",
              "reads its own experts' tensors); run a GGUF file in one process");
    MOE_CHECK(!opt.offload, "gguf '", dir, "': expert offloading reads safetensors checkpoints only; ",
              "drop the offload flags for a GGUF file");
    auto reader = std::make_shared<const gguf::Reader>(dir);
    const model::ModelConfig cfg = model::gguf_model_config(*reader);
    InferenceModel r;
    r.model = load_model(dir, cfg, model::gguf_tensor_source(reader, cfg), precision(opt));
    return r;
  }
  if (const model::LowRankConfig lrc = model::read_low_rank_config(dir); lrc.rank > 0) {
    MOE_CHECK(!ep, dir, ": a low-rank checkpoint (moe compress) runs in one process; expert ",
              "parallelism serves float, bf16, int8 and int4 checkpoints");
    return detail::load_low_rank_model(dir, lrc, opt, precision(opt));
  }
  const model::QuantConfig qc = model::read_quant_config(dir);
  const bool store = opt.offload || qc.bits > 0;
  InferenceModel r;
  const model::ModelConfig cfg = model::load_model_config(dir + "/config.json");
  model::check_checkpoint_shape(cfg, dir);
  ExpertParallel par;
  if (ep) par = {.comm = opt.ep, .chunks = 1, .replicated_tokens = true};
  model::TensorSource src = model::checkpoint_source(dir);
  if (qc.bits > 0) src = dequantizing_source(std::move(src), qc);
  model::Transformer::InferenceLoad p = precision(opt);
  p.external_experts = store;
  p.ep = par;
  r.model = load_model(dir, cfg, src, p);
  if (store) {
    ExpertStoreOptions so = opt.store;
    if (!opt.offload) so.resident_experts = -1, so.cache_gb = 0;
    r.store = ExpertStore::attach(*r.model, dir, so);
  }
  return r;
}

}  // namespace moe::infer
