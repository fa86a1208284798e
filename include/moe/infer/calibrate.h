// Expert usage measured on calibration text: how often each expert of each MoE layer is chosen and
// how much routing weight it receives. Used by `moe prune` (which experts to keep) and by
// `moe quantize --mixed-bits` (which experts get fewer bits).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "moe/model/transformer.h"

namespace moe::infer {

struct LayerUsage {
  int64_t layer = 0;              // transformer layer index
  std::vector<int64_t> count;     // (E) assignments routed to each expert (before capacity)
  std::vector<double> weight;     // (E) sum of their combine weights
};

struct ExpertUsage {
  int64_t tokens = 0;             // tokens run
  std::vector<LayerUsage> layers; // one per MoE layer, in layer order
};

// Runs the model (forward only) over `tokens` in windows of `seq_len` and sums the routing
// statistics of every MoE layer. Throws moe::Error when tokens is empty or an id is out of range.
ExpertUsage measure_expert_usage(const model::Transformer& m, const std::vector<int32_t>& tokens, int64_t seq_len);

// JSON: {"tokens": N, "layers": [{"layer": l, "count": [...], "weight": [...]}, ...]}.
void save_expert_usage(const ExpertUsage& u, const std::string& path);
ExpertUsage load_expert_usage(const std::string& path);  // throws naming the file on bad input

}  // namespace moe::infer
