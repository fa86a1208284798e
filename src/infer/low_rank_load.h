// Loading a low-rank checkpoint (moe/model/low_rank.h) for inference: the experts factored (a
// LowRankExecutor on every MoE layer) or materialised into a plain model, as InferenceLoadOptions::
// low_rank asks ("auto" chooses by model::factored_is_faster).
#pragma once

#include <string>

#include "moe/infer/expert_store.h"
#include "moe/model/low_rank.h"

namespace moe::infer::detail {

InferenceModel load_low_rank_model(const std::string& dir, const model::LowRankConfig& lrc,
                                   const InferenceLoadOptions& opt);

}  // namespace moe::infer::detail
