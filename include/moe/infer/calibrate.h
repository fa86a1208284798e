// Expert usage measured on calibration text (moe/model/expert_usage.h): runs the model over the
// text and sums how often each expert of each MoE layer is chosen and how much routing weight it
// receives. Used by `moe prune` (which experts to keep) and by `moe quantize --mixed-bits` (which
// experts get fewer bits).
#pragma once

#include <cstdint>
#include <vector>

#include "moe/model/expert_usage.h"
#include "moe/model/transformer.h"

namespace moe::infer {

// The usage types and their JSON I/O live in the model layer (prune reads them); named here too.
using model::ExpertUsage;
using model::LayerUsage;
using model::load_expert_usage;
using model::save_expert_usage;

// Runs the model (forward only) over `tokens` in windows of `seq_len` and sums the routing
// statistics of every MoE layer. Throws moe::Error when tokens is empty or an id is out of range.
ExpertUsage measure_expert_usage(const model::Transformer& m, const std::vector<int32_t>& tokens,
                                 int64_t seq_len);

}  // namespace moe::infer
