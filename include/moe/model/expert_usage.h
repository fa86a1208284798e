// Expert usage measured on calibration text: how often each expert of each MoE layer is chosen and
// how much routing weight it receives. Used by `moe prune` (which experts to keep, moe/model/prune.h)
// and by `moe quantize --mixed-bits` (which experts get fewer bits). infer::measure_expert_usage
// (moe/infer/calibrate.h) measures it by running the model.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace moe::model {

struct LayerUsage {
  int64_t layer = 0;           // transformer layer index
  std::vector<int64_t> count;  // (E) assignments routed to each expert (before capacity)
  std::vector<double> weight;  // (E) sum of their combine weights
};

struct ExpertUsage {
  int64_t tokens = 0;              // tokens run
  std::vector<LayerUsage> layers;  // one per MoE layer, in layer order
};

// JSON: {"tokens": N, "layers": [{"layer": l, "count": [...], "weight": [...]}, ...]}.
void save_expert_usage(const ExpertUsage& u, const std::string& path);
ExpertUsage load_expert_usage(const std::string& path);  // throws naming the file on bad input

}  // namespace moe::model
