// Loading a low-rank checkpoint (moe/model/low_rank.h) for inference: the experts factored (a
// LowRankExecutor on every MoE layer) or materialised into a plain model, as InferenceLoadOptions::
// low_rank asks ("auto" chooses by model::factored_is_faster).
#pragma once

#include <string>

#include "moe/infer/expert_store.h"
#include "moe/model/low_rank.h"

namespace moe::infer::detail {

// `precision`: f32 or bf16 inference (Transformer::load_for_inference; the factored experts' own
// weights stay as the executor holds them).
InferenceModel load_low_rank_model(const std::string& dir, const model::LowRankConfig& lrc,
                                   const InferenceLoadOptions& opt,
                                   const model::Transformer::InferenceLoad& precision);

}  // namespace moe::infer::detail
