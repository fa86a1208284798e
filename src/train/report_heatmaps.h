// The "Expert load" section of the training report: one heat map per MoE layer (report_heatmaps.cpp).
#pragma once

#include <cstddef>
#include <string>

#include "moe/train/report.h"

namespace moe::train {

// x = step, y = expert, colour = the fraction of the layer's routed assignments that went to the
// expert. With more than `max_columns` logged steps, consecutive steps are averaged into at most
// `max_columns` columns. All layers share one colour scale, so they can be compared.
std::string expert_load_section(const RunMetrics& m, int width, size_t max_columns);

}  // namespace moe::train
