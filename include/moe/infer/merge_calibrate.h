// Calibration for expert merging (moe/model/merge.h): one pass over calibration text gives both the
// expert usage (as measure_expert_usage, moe/infer/calibrate.h) and a deterministic sample of every
// MoE layer's input rows, observed through an expert executor (MoELayer::set_expert_executor) that
// records the rows and computes the experts from the layer's own weights.
#pragma once

#include <cstdint>
#include <vector>

#include "moe/infer/calibrate.h"
#include "moe/model/low_rank.h"
#include "moe/model/merge.h"
#include "moe/model/transformer.h"

namespace moe::infer {

struct MergeCalibration {
  ExpertUsage usage;
  std::vector<model::LayerRows> rows;  // one per MoE layer, in layer order, the same tokens in each
};

// Runs the model (forward only) over `tokens` in windows of `seq_len`, as measure_expert_usage does,
// and keeps the layer input of tokens 0, s, 2s, ... with s = ceil(N / max_rows) (N = tokens.size()),
// so at most max_rows rows per MoE layer. The model must be f32 with its experts in memory and no
// executor attached; the executors used here are removed before returning (also on error).
// Throws moe::Error on bad input (as measure_expert_usage) and when max_rows < 1.
MergeCalibration measure_merge_calibration(model::Transformer& m, const std::vector<int32_t>& tokens,
                                           int64_t seq_len, int64_t max_rows);

// Calibration for activation-aware low-rank experts (`moe compress --calibration`): runs the model
// over `tokens` as measure_expert_usage does and sums, per MoE layer and expert, x·xᵀ over the layer
// inputs routed to it and h·hᵀ over their hidden vectors (the down projection's inputs). Memory:
// (d² + F²) doubles per expert. The same model conditions and errors as measure_merge_calibration.
model::ExpertInputMoments measure_expert_moments(model::Transformer& m, const std::vector<int32_t>& tokens,
                                                 int64_t seq_len);

}  // namespace moe::infer
