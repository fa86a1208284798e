// Inline SVG line plots and heat maps for the training report (see report_svg.h).
#include "moe/train/svg.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <map>
#include <set>

#include "moe/core/error.h"

namespace moe::train::svg {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kCharW = 6.6;  // mean advance of 12 px sans-serif text, for laying out the legend
constexpr double kMarginLeft = 64, kMarginRight = 16, kMarginBottom = 44;

// A coordinate with one decimal: enough for a screen, and the same bytes on every machine.
std::string px(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", std::fabs(v) < 0.05 ? 0.0 : v);
  return buf;
}

double nice_step(double range, int target) {
  const double raw = range / target;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  const double f = raw / mag;
  return (f < 1.5 ? 1.0 : f < 3.0 ? 2.0 : f < 7.0 ? 5.0 : 10.0) * mag;
}

// Ticks at multiples of a 1/2/5 step inside [lo, hi].
std::vector<double> linear_ticks(double lo, double hi, int target, bool integer, double* step_out) {
  double step = nice_step(hi - lo, target);
  if (integer) step = std::max(step, 1.0);
  std::vector<double> ticks;
  for (double k = std::ceil(lo / step - 1e-9); k * step <= hi + step * 1e-9; k += 1)
    ticks.push_back(k * step);
  *step_out = step;
  return ticks;
}

struct Axis {
  double lo = 0, hi = 1;  // domain
  double a = 0, b = 1;    // pixel range (a maps lo, b maps hi)
  bool log = false;
  double operator()(double v) const {
    const double t =
        log ? (std::log10(v) - std::log10(lo)) / (std::log10(hi) - std::log10(lo)) : (v - lo) / (hi - lo);
    return a + t * (b - a);
  }
};

struct Tick {
  double value;
  std::string label;
};

std::vector<Tick> axis_ticks(const Axis& ax, bool integer) {
  std::vector<Tick> out;
  const double scale = std::max(std::fabs(ax.lo), std::fabs(ax.hi));
  if (ax.log) {
    const int e0 = static_cast<int>(std::lround(std::log10(ax.lo)));
    const int e1 = static_cast<int>(std::lround(std::log10(ax.hi)));
    const bool fine = e1 - e0 <= 2;
    const int every = std::max(1, (e1 - e0 + 7) / 8);  // at most about eight decades labelled
    for (int e = e0; e <= e1; ++e) {
      if ((e - e0) % every != 0) continue;
      for (double m : {1.0, 2.0, 5.0}) {
        const double v = m * std::pow(10.0, e);
        if ((m != 1.0 && !fine) || v > ax.hi * (1 + 1e-9)) continue;
        out.push_back({v, tick_label(v, v, v)});
      }
    }
    return out;
  }
  double step = 1;
  for (double v : linear_ticks(ax.lo, ax.hi, 6, integer, &step))
    out.push_back({v, tick_label(v, step, scale)});
  return out;
}

std::string text(double x, double y, const std::string& s, const char* anchor, const char* cls = "") {
  return cat("<text x=\"", px(x), "\" y=\"", px(y), "\" text-anchor=\"", anchor, "\"",
             *cls ? cat(" class=\"", cls, "\"") : std::string(), ">", esc(s), "</text>");
}

std::string hline(double x0, double x1, double y, const std::string& color, const std::string& dash,
                  double w) {
  return cat("<line x1=\"", px(x0), "\" y1=\"", px(y), "\" x2=\"", px(x1), "\" y2=\"", px(y), "\" stroke=\"",
             color, "\" stroke-width=\"", w, "\"",
             dash.empty() ? "" : cat(" stroke-dasharray=\"", dash, "\""), "/>");
}
std::string vline(double x, double y0, double y1, const std::string& color, const std::string& dash,
                  double w) {
  return cat("<line x1=\"", px(x), "\" y1=\"", px(y0), "\" x2=\"", px(x), "\" y2=\"", px(y1), "\" stroke=\"",
             color, "\" stroke-width=\"", w, "\"",
             dash.empty() ? "" : cat(" stroke-dasharray=\"", dash, "\""), "/>");
}

// Axes of a plot area: grid lines, tick marks and labels, axis titles.
std::string draw_axes(const Axis& xa, const Axis& ya, bool x_integer, const std::string& x_label,
                      const std::string& y_label, double height) {
  std::string s;
  const double top = ya.b, bottom = ya.a, left = xa.a, right = xa.b;
  for (const Tick& t : axis_ticks(ya, false)) {
    const double y = ya(t.value);
    s += hline(left, right, y, "#e8e8e8", "", 1);
    s += text(left - 6, y + 4, t.label, "end", "tick");
  }
  for (const Tick& t : axis_ticks(xa, x_integer)) {
    const double x = xa(t.value);
    s += vline(x, top, bottom, "#f0f0f0", "", 1);
    s += vline(x, bottom, bottom + 4, "#888", "", 1);
    s += text(x, bottom + 17, t.label, "middle", "tick");
  }
  s += hline(left, right, bottom, "#888", "", 1);
  s += vline(left, top, bottom, "#888", "", 1);
  if (!x_label.empty()) s += text((left + right) / 2, height - 8, x_label, "middle", "axis");
  if (!y_label.empty()) {
    const double cy = (top + bottom) / 2;
    s += cat("<text transform=\"translate(14,", px(cy),
             ") rotate(-90)\" text-anchor=\"middle\" class=\"axis\">", esc(y_label), "</text>");
  }
  return s;
}

struct Point {
  double x, y;
  bool ok;
};

// At most two points (the lowest and the highest) per half pixel column, in their order, so that a
// long run draws quickly and its spikes stay visible; a break inside a column is kept.
std::vector<Point> decimate(const std::vector<Point>& pts, const Axis& xa) {
  const double cols = 2 * std::fabs(xa.b - xa.a);
  if (pts.size() <= 3 * cols) return pts;
  std::vector<Point> out;
  size_t i = 0;
  while (i < pts.size()) {
    const long col = std::lround(std::floor((xa(pts[i].x) - xa.a) * 2));
    size_t j = i, lo = pts.size(), hi = pts.size();
    bool brk = false;
    for (; j < pts.size() && std::lround(std::floor((xa(pts[j].x) - xa.a) * 2)) == col; ++j) {
      if (!pts[j].ok) {
        brk = true;
        continue;
      }
      if (lo == pts.size() || pts[j].y < pts[lo].y) lo = j;
      if (hi == pts.size() || pts[j].y > pts[hi].y) hi = j;
    }
    if (lo != pts.size()) {
      out.push_back(pts[std::min(lo, hi)]);
      if (lo != hi) out.push_back(pts[std::max(lo, hi)]);
    }
    if (brk) out.push_back({0, 0, false});
    i = j;
  }
  return out;
}

std::string draw_series(const Series& s, const Axis& xa, const Axis& ya) {
  std::vector<Point> pts;
  const size_t n = std::min(s.x.size(), s.y.size());
  for (size_t i = 0; i < n; ++i) {
    const bool ok = std::isfinite(s.x[i]) && std::isfinite(s.y[i]) && (!ya.log || s.y[i] > 0);
    pts.push_back({s.x[i], s.y[i], ok});
  }
  pts = decimate(pts, xa);
  const std::string opacity = s.opacity < 1 ? cat(" opacity=\"", s.opacity, "\"") : "";
  std::string out, path, dots;
  size_t run = 0;  // points in the current unbroken piece
  double last_x = 0, last_y = 0;
  auto close_run = [&] {
    if (run == 1 && s.line && !s.markers) {  // a lone point of a line: a dot, or it would not show
      dots +=
          cat("<circle cx=\"", px(last_x), "\" cy=\"", px(last_y), "\" r=\"2.5\" fill=\"", s.color, "\"/>");
    }
    run = 0;
  };
  for (const Point& p : pts) {
    if (!p.ok) {
      close_run();
      continue;
    }
    last_x = xa(p.x);
    last_y = ya(p.y);
    path += cat(run == 0 ? "M" : "L", px(last_x), " ", px(last_y));
    ++run;
    if (s.markers) {
      dots += cat("<circle cx=\"", px(last_x), "\" cy=\"", px(last_y), "\" r=\"3.5\" fill=\"", s.color,
                  "\" stroke=\"#fff\" stroke-width=\"1\"/>");
    }
  }
  close_run();
  if (s.line && !path.empty()) {
    out += cat("<path d=\"", path, "\" fill=\"none\" stroke=\"", s.color, "\" stroke-width=\"", s.width,
               "\" stroke-linejoin=\"round\"",
               s.dash.empty() ? "" : cat(" stroke-dasharray=\"", s.dash, "\""), opacity, "/>");
  }
  if (!dots.empty()) out += cat("<g", opacity, ">", dots, "</g>");
  return out;
}

struct LegendItem {
  std::string name, color, dash;
  bool line, marker;
  double opacity;
};

// Legend entries in rows under the title, wrapped at `right`; returns the rows' height.
double draw_legend(const std::vector<LegendItem>& items, double left, double right, double top,
                   std::string& out) {
  if (items.empty()) return 0;
  double x = left, y = top;
  for (const LegendItem& it : items) {
    const double w = 26 + kCharW * static_cast<double>(it.name.size()) + 14;
    if (x > left && x + w > right) {
      x = left;
      y += 17;
    }
    const double cy = y + 8;
    const std::string swatch_opacity = it.opacity < 1 ? cat(" opacity=\"", it.opacity, "\"") : "";
    out += cat("<g", swatch_opacity, ">");
    if (it.line) out += hline(x, x + 20, cy, it.color, it.dash, 2.5);
    if (it.marker)
      out += cat("<circle cx=\"", px(x + 10), "\" cy=\"", px(cy), "\" r=\"3.5\" fill=\"", it.color, "\"/>");
    out += "</g>";
    out += text(x + 25, cy + 4, it.name, "start", "legend");
    x += w;
  }
  return y + 17 - top;
}

}  // namespace

std::string esc(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

const std::string& palette(size_t i) {
  static const std::array<std::string, 10> colors = {"#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
                                                     "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"};
  return colors[i % colors.size()];
}

std::string viridis(double t) {
  static constexpr std::array<std::array<int, 3>, 9> stops = {{{0x44, 0x01, 0x54},
                                                               {0x47, 0x2c, 0x7a},
                                                               {0x3b, 0x51, 0x8b},
                                                               {0x2c, 0x71, 0x8e},
                                                               {0x21, 0x90, 0x8d},
                                                               {0x27, 0xad, 0x81},
                                                               {0x5c, 0xc8, 0x63},
                                                               {0xaa, 0xdc, 0x32},
                                                               {0xfd, 0xe7, 0x25}}};
  t = std::isfinite(t) ? std::clamp(t, 0.0, 1.0) : 0.0;
  const double f = t * 8;
  const size_t i = std::min<size_t>(7, static_cast<size_t>(f));
  const double u = f - static_cast<double>(i);
  char buf[8];
  int rgb[3];
  for (int k = 0; k < 3; ++k)
    rgb[k] = static_cast<int>(std::lround(stops[i][k] + u * (stops[i + 1][k] - stops[i][k])));
  std::snprintf(buf, sizeof buf, "#%02x%02x%02x", rgb[0], rgb[1], rgb[2]);
  return buf;
}

std::string tick_label(double v, double step, double scale) {
  char buf[48];
  if (!std::isfinite(v)) return "–";
  if (std::fabs(v) < std::fabs(step) * 1e-6) return "0";
  scale = std::fabs(scale);
  step = std::fabs(step);
  auto decimals_for = [](double st) {
    return std::clamp(static_cast<int>(-std::floor(std::log10(st) + 1e-9)), 0, 6);
  };
  if (scale >= 1e4) {  // SI suffix: 12k, 1.5M
    static constexpr std::array<std::pair<double, const char*>, 4> units = {
        {{1e12, "T"}, {1e9, "G"}, {1e6, "M"}, {1e3, "k"}}};
    for (const auto& [div, suffix] : units) {
      if (scale < div) continue;
      std::snprintf(buf, sizeof buf, "%.*f%s", decimals_for(step / div), v / div, suffix);
      return buf;
    }
  }
  if (scale < 1e-2) {  // 3e-4, 2.5e-5
    int e = static_cast<int>(std::floor(std::log10(std::fabs(v))));
    const int digits = std::clamp(e - static_cast<int>(std::floor(std::log10(step) + 1e-9)), 0, 4);
    double m = v / std::pow(10.0, e);
    std::snprintf(buf, sizeof buf, "%.*f", digits, m);
    if (std::fabs(std::atof(buf)) >= 10) {  // 9.99 rounded up to 10
      ++e;
      m /= 10;
      std::snprintf(buf, sizeof buf, "%.*f", digits, m);
    }
    std::string mantissa = buf;  // "3.0" -> "3": one spelling per value along the axis
    if (mantissa.find('.') != std::string::npos) {
      while (mantissa.back() == '0') mantissa.pop_back();
      if (mantissa.back() == '.') mantissa.pop_back();
    }
    return cat(mantissa, "e", e);
  }
  std::snprintf(buf, sizeof buf, "%.*f", decimals_for(step), v);
  return buf;
}

std::string line_plot(const LinePlot& p) {
  const double W = p.width, H = p.height;
  std::string body;
  body += text(kMarginLeft, 18, p.title, "start", "title");

  // Legend: named series, then reference lines with a legend entry (each text once).
  std::vector<LegendItem> items;
  std::set<std::string> seen;
  for (const Series& s : p.series) {
    if (!s.name.empty() && seen.insert(s.name).second)
      items.push_back({s.name, s.color, s.dash, s.line, s.markers, std::max(s.opacity, 0.5)});
  }
  for (const RefLine& r : p.refs) {
    if (!r.legend.empty() && seen.insert(r.legend).second)
      items.push_back({r.legend, r.color, r.dash, true, false, 1.0});
  }
  const double legend_h = draw_legend(items, kMarginLeft, W - kMarginRight, 26, body);

  // Domains.
  double xlo = p.x_min, xhi = p.x_max, ylo = kInf, yhi = -kInf;
  if (std::isnan(xlo) || std::isnan(xhi)) {
    double dlo = kInf, dhi = -kInf;
    for (const Series& s : p.series) {
      for (double x : s.x) {
        if (!std::isfinite(x)) continue;
        dlo = std::min(dlo, x);
        dhi = std::max(dhi, x);
      }
    }
    if (std::isnan(xlo)) xlo = std::isfinite(dlo) ? dlo : 0;
    if (std::isnan(xhi)) xhi = std::isfinite(dhi) ? dhi : 1;
  }
  if (!(xhi > xlo)) {
    xlo -= 1;
    xhi += 1;
  }
  auto take_y = [&](double y) {
    if (!std::isfinite(y) || (p.log_y && y <= 0)) return;
    ylo = std::min(ylo, y);
    yhi = std::max(yhi, y);
  };
  for (const Series& s : p.series) {
    for (size_t i = 0; i < s.y.size() && i < s.x.size(); ++i) {
      if (s.x[i] >= xlo && s.x[i] <= xhi) take_y(s.y[i]);
    }
  }
  for (const RefLine& r : p.refs) {
    if (!r.vertical) take_y(r.value);
  }
  take_y(p.y_include);
  if (p.y_include_zero && !p.log_y) take_y(0);
  if (!(yhi >= ylo)) {
    ylo = p.log_y ? 0.1 : 0;
    yhi = 1;
  }
  Axis ya;
  ya.log = p.log_y;
  if (p.log_y) {
    ya.lo = std::pow(10.0, std::floor(std::log10(ylo)));
    ya.hi = std::pow(10.0, std::ceil(std::log10(yhi)));
    if (!(ya.hi > ya.lo)) ya.hi = ya.lo * 10;
  } else {
    if (!(yhi > ylo)) {
      const double d = ylo != 0 ? std::fabs(ylo) * 0.1 : 1;
      ylo -= d;
      yhi += d;
    }
    const double step = nice_step(yhi - ylo, 5);
    ya.lo = std::floor(ylo / step + 1e-9) * step;
    ya.hi = std::ceil(yhi / step - 1e-9) * step;
    if (!(ya.hi > ya.lo)) ya.hi = ya.lo + step;
  }
  const double top = 26 + legend_h + 8, bottom = H - kMarginBottom;
  ya.a = bottom;
  ya.b = top;
  Axis xa;
  xa.lo = xlo;
  xa.hi = xhi;
  xa.a = kMarginLeft;
  xa.b = W - kMarginRight;

  body += draw_axes(xa, ya, p.x_integer, p.x_label, p.y_label, H);
  for (const RefLine& r : p.refs) {
    if (r.vertical) {
      if (r.value < xlo || r.value > xhi) continue;
      const double x = xa(r.value);
      body += vline(x, top, bottom, r.color, r.dash, 1.2);
      if (!r.label.empty()) body += text(x + 3, top + 11, r.label, "start", "note");
    } else {
      if (p.log_y && r.value <= 0) continue;
      const double y = ya(r.value);
      body += hline(xa.a, xa.b, y, r.color, r.dash, 1.5);
      if (!r.label.empty()) body += text(xa.b - 4, y - 5, r.label, "end", "note");
    }
  }
  bool drawn = false;
  for (const Series& s : p.series) {
    const std::string part = draw_series(s, xa, ya);
    drawn = drawn || !part.empty();
    body += part;
  }
  if (!drawn) body += text((xa.a + xa.b) / 2, (top + bottom) / 2, "not logged", "middle", "axis");

  return cat("<svg id=\"", esc(p.id), "\" class=\"plot\" width=\"", W, "\" height=\"", H, "\" viewBox=\"0 0 ",
             W, " ", H, "\" role=\"img\" aria-label=\"", esc(p.title), "\">", body, "</svg>\n");
}

std::string heatmap(const Heatmap& h) {
  const size_t cols = h.col_edges.size() > 0 ? h.col_edges.size() - 1 : 0;
  MOE_CHECK(cols >= 1 && h.rows >= 1 && h.values.size() == static_cast<size_t>(h.rows) * cols, "heatmap '",
            h.id, "': ", h.rows, " rows x ", cols, " columns but ", h.values.size(), " values");
  const double W = h.width;
  const double plot_h = std::clamp(h.rows * 16.0, 96.0, 320.0), row_h = plot_h / h.rows;
  const double top = 32, bottom = top + plot_h, H = bottom + kMarginBottom;
  const double bar_x = W - 86, bar_w = 14;
  Axis xa;
  xa.lo = h.col_edges.front();
  xa.hi = h.col_edges.back();
  if (!(xa.hi > xa.lo)) xa.hi = xa.lo + 1;
  xa.a = kMarginLeft;
  xa.b = bar_x - 36;
  const double v_max = h.v_max > 0 && std::isfinite(h.v_max) ? h.v_max : 1.0;

  std::string body;
  body += text(kMarginLeft, 18, h.title, "start", "title");
  body += cat("<rect x=\"", px(xa.a), "\" y=\"", px(top), "\" width=\"", px(xa.b - xa.a), "\" height=\"",
              px(plot_h), "\" fill=\"#d9d9d9\"/>");

  // Cells: one path per colour level, runs of equal level in a row merged into one rectangle.
  constexpr int kLevels = 64;
  std::vector<std::string> paths(kLevels);
  for (int r = 0; r < h.rows; ++r) {
    const std::string y0 = px(top + r * row_h), y1 = px(top + (r + 1) * row_h);
    size_t c = 0;
    while (c < cols) {
      auto level = [&](size_t col) {
        const double v = h.values[static_cast<size_t>(r) * cols + col];
        if (!std::isfinite(v)) return -1;
        return std::clamp(static_cast<int>(std::floor(v / v_max * kLevels)), 0, kLevels - 1);
      };
      const int q = level(c);
      size_t e = c + 1;
      while (e < cols && level(e) == q) ++e;
      if (q >= 0) {
        paths[q] += cat("M", px(xa(h.col_edges[c])), " ", y0, "H", px(xa(h.col_edges[e])), "V", y1, "H",
                        px(xa(h.col_edges[c])), "Z");
      }
      c = e;
    }
  }
  body += "<g shape-rendering=\"crispEdges\">";
  for (int q = 0; q < kLevels; ++q) {
    if (!paths[q].empty())
      body += cat("<path fill=\"", viridis((q + 0.5) / kLevels), "\" d=\"", paths[q], "\"/>");
  }
  body += "</g>";

  // Axes: steps below, one label per row (thinned to one every 12 px) on the left.
  for (const Tick& t : axis_ticks(xa, true)) {
    const double x = xa(t.value);
    body += vline(x, bottom, bottom + 4, "#888", "", 1);
    body += text(x, bottom + 17, t.label, "middle", "tick");
  }
  const int every = std::max(1, static_cast<int>(std::ceil(12.0 / row_h)));
  for (int r = 0; r < h.rows; r += every) {
    body += text(xa.a - 6, top + (r + 0.5) * row_h + 4, std::to_string(r), "end", "tick");
  }
  body += hline(xa.a, xa.b, bottom, "#888", "", 1);
  body += text((xa.a + xa.b) / 2, H - 8, h.x_label, "middle", "axis");
  body += cat("<text transform=\"translate(14,", px((top + bottom) / 2),
              ") rotate(-90)\" text-anchor=\"middle\" class=\"axis\">", esc(h.y_label), "</text>");

  // Colour bar: a gradient from 0 (bottom) to v_max (top), ticks on its right, the mark on its left.
  const std::string grad = esc(h.id) + "-scale";
  body += cat("<defs><linearGradient id=\"", grad, "\" x1=\"0\" y1=\"1\" x2=\"0\" y2=\"0\">");
  for (int i = 0; i <= 8; ++i)
    body += cat("<stop offset=\"", i / 8.0, "\" stop-color=\"", viridis(i / 8.0), "\"/>");
  body += "</linearGradient></defs>";
  body += cat("<rect x=\"", px(bar_x), "\" y=\"", px(top), "\" width=\"", bar_w, "\" height=\"", px(plot_h),
              "\" fill=\"url(#", grad, ")\" stroke=\"#888\" stroke-width=\"0.5\"/>");
  double step = 1;
  for (double v : linear_ticks(0, v_max, 4, false, &step)) {
    const double y = bottom - v / v_max * plot_h;
    body += hline(bar_x + bar_w, bar_x + bar_w + 4, y, "#888", "", 1);
    body += text(bar_x + bar_w + 7, y + 4, tick_label(v, step, v_max), "start", "tick");
  }
  if (std::isfinite(h.mark) && h.mark >= 0 && h.mark <= v_max) {
    const double y = bottom - h.mark / v_max * plot_h;
    body += hline(bar_x - 5, bar_x + bar_w, y, "#222", "", 2);
    body += text(bar_x - 8, y + 4, h.mark_label, "end", "note");
  }
  body += cat("<text transform=\"translate(", px(W - 8), ",", px((top + bottom) / 2),
              ") rotate(-90)\" text-anchor=\"middle\" class=\"axis\">", esc(h.value_label), "</text>");

  return cat("<svg id=\"", esc(h.id), "\" class=\"plot heat\" width=\"", W, "\" height=\"", H,
             "\" viewBox=\"0 0 ", W, " ", H, "\" role=\"img\" aria-label=\"", esc(h.title), "\">", body,
             "</svg>\n");
}

}  // namespace moe::train::svg
