// Inline SVG plots for the training report: line plots (linear or log y) and heat maps, with axes,
// tick labels, titles and legends. Written out here rather than with a plotting library so that the
// page needs no script, font or network and renders the same everywhere; the output depends only on
// the input (fixed number formatting, no clock, no randomness).
//
// All text is HTML-escaped; every id is prefixed with the plot's `id`, so many plots share a page.
// A public header of the train layer, so that the `moe` tool's benchmarks (bench offload) plot with
// it too.
#pragma once

#include <limits>
#include <string>
#include <string_view>
#include <vector>

namespace moe::train::svg {

inline constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// Escapes & < > " ' for HTML text and attribute values.
std::string esc(std::string_view s);

// Categorical colours (Tableau 10), for series that have no order.
const std::string& palette(size_t i);
// Viridis, t in [0, 1] (clamped): dark purple (0) to yellow (1); as "#rrggbb".
std::string viridis(double t);

// A compact number for tick labels and tables: "0", "0.25", "3e-4", "1.2M", "12k".
// `step` (> 0) is the resolution the label must show; `scale` the largest magnitude on the axis.
std::string tick_label(double v, double step, double scale);

struct Series {
  std::string name;  // legend text; empty: not in the legend
  std::string color = "#4e79a7";
  std::vector<double> x, y;  // (n), (n); a non-finite y (or y <= 0 on a log axis) breaks the line
  double width = 1.6;
  double opacity = 1.0;
  bool line = true;
  bool markers = false;
  std::string dash;  // stroke-dasharray, e.g. "6 4"; empty: solid
};

// A reference line across the plot at y = value (horizontal) or x = value (vertical).
struct RefLine {
  double value = 0;
  bool vertical = false;
  std::string color = "#777";
  std::string dash = "6 4";
  std::string label;   // drawn beside the line; empty: none
  std::string legend;  // legend entry (one per distinct text); empty: none
};

struct LinePlot {
  std::string id;  // unique on the page
  std::string title, x_label, y_label;
  std::vector<Series> series;
  std::vector<RefLine> refs;
  double x_min = kNaN, x_max = kNaN;  // NaN: from the data
  bool x_integer = true;              // x ticks at whole numbers (steps)
  bool log_y = false;
  bool y_include_zero = false;
  double y_include = kNaN;  // a value the y range must contain (e.g. 1 for load imbalance)
  int width = 560, height = 300;
};
std::string line_plot(const LinePlot& p);

// Cells on a grid: column c spans x in [col_edges[c], col_edges[c + 1]), row r is one band from the
// top; the colour is viridis(value / v_max).
struct Heatmap {
  std::string id;
  std::string title, x_label, y_label, value_label;
  std::vector<double> col_edges;  // (cols + 1), increasing
  int rows = 0;
  std::vector<double> values;  // (rows, cols) row-major; NaN: no data (drawn grey)
  double v_max = 1;            // top of the colour scale (the bottom is 0)
  double mark = kNaN;          // a value marked on the colour bar (uniform load 1/E)
  std::string mark_label;
  int width = 1160;
};
std::string heatmap(const Heatmap& h);

}  // namespace moe::train::svg
