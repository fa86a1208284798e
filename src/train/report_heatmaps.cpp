// Per-layer expert load heat maps of the training report (report_heatmaps.h).
#include "train/report_heatmaps.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "moe/core/error.h"
#include "moe/train/svg.h"

namespace moe::train {
namespace {

struct LayerMap {
  svg::Heatmap map;
  size_t experts = 0;
  size_t per_column = 1;  // logged steps averaged into one column
};

// The heat map of MoE layer `l` (values only; titles and scale are set by the caller), or nothing
// when no step logged that layer's load.
bool build_layer(const RunMetrics& m, size_t l, size_t max_columns, LayerMap& out) {
  std::vector<const StepRecord*> logged;
  size_t experts = 0;
  for (const StepRecord& st : m.steps) {
    if (l >= st.expert_load.size() || st.expert_load[l].empty()) continue;
    logged.push_back(&st);
    experts = std::max(experts, st.expert_load[l].size());
  }
  if (logged.empty()) return false;
  const size_t n = logged.size();
  const size_t group = n > max_columns ? (n + max_columns - 1) / max_columns : 1;
  const size_t cols = (n + group - 1) / group;

  std::vector<double> values(experts * cols, svg::kNaN);  // (E, cols)
  std::vector<double> sum(experts), count(experts);
  for (size_t c = 0; c < cols; ++c) {
    std::fill(sum.begin(), sum.end(), 0.0);
    std::fill(count.begin(), count.end(), 0.0);
    for (size_t i = c * group; i < std::min(n, (c + 1) * group); ++i) {
      const std::vector<double>& load = logged[i]->expert_load[l];  // (E)
      for (size_t e = 0; e < load.size(); ++e) {
        if (!std::isfinite(load[e])) continue;
        sum[e] += load[e];
        count[e] += 1;
      }
    }
    for (size_t e = 0; e < experts; ++e) {
      if (count[e] > 0) values[e * cols + c] = sum[e] / count[e];
    }
  }

  // Column edges on the step axis: halfway between groups, half the usual logging interval outside.
  std::vector<double> gaps;
  for (size_t i = 1; i < n; ++i) gaps.push_back(static_cast<double>(logged[i]->step - logged[i - 1]->step));
  double interval = 1;
  if (!gaps.empty()) {
    std::nth_element(gaps.begin(), gaps.begin() + gaps.size() / 2, gaps.end());
    interval = std::max(1.0, gaps[gaps.size() / 2]);
  }
  auto first_step = [&](size_t c) { return static_cast<double>(logged[c * group]->step); };
  auto last_step = [&](size_t c) {
    return static_cast<double>(logged[std::min(n, (c + 1) * group) - 1]->step);
  };
  std::vector<double> edges(cols + 1);
  edges[0] = first_step(0) - interval / 2;
  for (size_t c = 1; c < cols; ++c) edges[c] = (last_step(c - 1) + first_step(c)) / 2;
  edges[cols] = last_step(cols - 1) + interval / 2;

  out.map.col_edges = std::move(edges);
  out.map.rows = static_cast<int>(experts);
  out.map.values = std::move(values);
  out.experts = experts;
  out.per_column = group;
  return true;
}

}  // namespace

std::string expert_load_section(const RunMetrics& m, int width, size_t max_columns) {
  MOE_CHECK(max_columns >= 1, "report: max_columns must be >= 1");
  size_t layers = 0;
  std::vector<int64_t> layer_ids;
  for (const StepRecord& st : m.steps) {
    if (st.expert_load.size() < layers) continue;
    layers = st.expert_load.size();
    if (st.moe_layers.size() == layers) layer_ids = st.moe_layers;
  }
  std::string out = "<h2>Expert load</h2>\n";
  if (layers == 0) {
    return out + "<div class=\"card note\">No expert load statistics in the log.</div>\n";
  }

  std::vector<LayerMap> maps;
  std::vector<size_t> map_layer;
  double v_max = 0;
  size_t per_column = 1;
  for (size_t l = 0; l < layers; ++l) {
    LayerMap lm;
    if (!build_layer(m, l, max_columns, lm)) continue;
    for (double v : lm.map.values) {
      if (std::isfinite(v)) v_max = std::max(v_max, v);
    }
    per_column = std::max(per_column, lm.per_column);
    maps.push_back(std::move(lm));
    map_layer.push_back(l);
  }
  out +=
      "<p class=\"note\">The share of each MoE layer's routed token assignments that went to each expert, "
      "per "
      "logged step. A balanced router gives every expert 1/E (marked on the colour scale): a bright band is "
      "an "
      "expert that takes more than its share, a dark one an expert that is starved. All layers share one "
      "colour "
      "scale; grey cells were not logged.";
  if (per_column > 1)
    out +=
        cat(" With ", m.steps.size(), " logged steps, each column averages up to ", per_column, " of them.");
  out += "</p>\n";

  for (size_t i = 0; i < maps.size(); ++i) {
    svg::Heatmap& h = maps[i].map;
    const size_t l = map_layer[i];
    const std::string name = l < layer_ids.size() ? cat("Layer ", layer_ids[l]) : cat("MoE layer ", l);
    h.id = cat("heat-", l);
    h.title = cat(name, ": expert load, ", maps[i].experts, " experts");
    if (maps[i].per_column > 1) h.title += cat(" (", maps[i].per_column, " logged steps per column)");
    h.x_label = "step";
    h.y_label = "expert";
    h.value_label = "load fraction";
    h.v_max = v_max > 0 ? v_max : 1;
    h.mark = 1.0 / static_cast<double>(maps[i].experts);
    h.mark_label = "1/E";
    h.width = width;
    out += "<div class=\"card\">" + svg::heatmap(h) + "</div>\n";
  }
  return out;
}

}  // namespace moe::train
