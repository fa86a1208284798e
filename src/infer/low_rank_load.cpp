// Low-rank checkpoints at inference (src/infer/low_rank_load.h).
#include "low_rank_load.h"

#include "moe/core/error.h"
#include "moe/model/model_config.h"
#include "moe/model/quantized.h"

namespace moe::infer::detail {

InferenceModel load_low_rank_model(const std::string& dir, const model::LowRankConfig& lrc,
                                   const InferenceLoadOptions& opt,
                                   const model::Transformer::InferenceLoad& precision) {
  MOE_CHECK(!opt.offload, "checkpoint ", dir,
            " has low-rank experts; expert offloading reads full or quantized ",
            "experts only: drop the offload flags");
  MOE_CHECK(model::read_quant_config(dir).bits == 0, "checkpoint ", dir,
            " has both a low_rank_config and a quantization_config");
  MOE_CHECK(opt.low_rank == "auto" || opt.low_rank == "factored" || opt.low_rank == "materialise",
            "inference: unknown low-rank execution '", opt.low_rank, "' (auto, factored, materialise)");
  const model::ModelConfig cfg = model::load_model_config(dir + "/config.json");
  model::check_checkpoint_shape(cfg, dir);
  // Per MoE layer by FLOPs; every MoE layer of a checkpoint has the same shapes and rank, so the
  // choice is the same for all of them and the model is loaded one way.
  bool factored = opt.low_rank == "factored";
  if (opt.low_rank == "auto") {
    for (int64_t l = 0; l < cfg.num_hidden_layers; ++l)
      if (cfg.is_moe_layer(l)) {
        factored = model::factored_is_faster(cfg, l, lrc);
        break;
      }
  }
  InferenceModel r;
  model::TensorSource src = model::checkpoint_source(dir);
  model::Transformer::InferenceLoad p = precision;
  p.external_experts = factored;
  try {
    r.model = std::make_unique<model::Transformer>(model::Transformer::load_for_inference(
        cfg, factored ? src : model::materializing_source(src, cfg, lrc), p));
    if (factored) model::attach_low_rank_experts(*r.model, src, lrc);
  } catch (const Error& e) {
    throw Error(cat(dir, ": ", e.what()));
  }
  return r;
}

}  // namespace moe::infer::detail
