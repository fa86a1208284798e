// The training report page: summary tiles and table, the training curves, per-layer expert load
// heat maps and the run's log, as one HTML document with inline CSS and SVG (report.h).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <set>
#include <string>
#include <vector>

#include "moe/core/error.h"
#include "moe/train/report.h"
#include "moe/train/svg.h"
#include "train/report_heatmaps.h"

namespace moe::train {
namespace {

using svg::esc;

constexpr int kFullWidth = 1134, kHalfWidth = 546;  // plot widths that fill a card, one or two per row
constexpr size_t kMaxHeatColumns = 200;             // more logged steps than this are binned

constexpr const char* kStyle = R"css(
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; background: #f5f6f8; color: #1f2328;
  font: 14px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, "Noto Sans", "DejaVu Sans", sans-serif; }
main { max-width: 1200px; margin: 0 auto; padding: 24px 20px 40px; }
h1 { font-size: 24px; margin: 0 0 2px; }
h2 { font-size: 17px; margin: 28px 0 10px; padding-bottom: 4px; border-bottom: 1px solid #d0d7de; }
.sub { color: #57606a; margin: 0 0 18px; overflow-wrap: anywhere; }
.card { background: #fff; border: 1px solid #d0d7de; border-radius: 8px; padding: 12px; margin-bottom: 16px; }
.tiles { display: grid; grid-template-columns: repeat(auto-fit, minmax(160px, 1fr)); gap: 12px; margin-bottom: 16px; }
.tile { background: #fff; border: 1px solid #d0d7de; border-radius: 8px; padding: 10px 14px; }
.tile .k { color: #57606a; font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.tile .v { font-size: 22px; font-weight: 600; font-variant-numeric: tabular-nums; white-space: nowrap; }
.tile .d { color: #57606a; font-size: 12px; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 5px 10px; border-bottom: 1px solid #eaeef2; vertical-align: top; }
tr:last-child th, tr:last-child td { border-bottom: none; }
table.kv th { color: #57606a; font-weight: 500; width: 210px; }
table.list { width: auto; min-width: 40%; }
table.list th { color: #57606a; font-weight: 500; border-bottom: 1px solid #d0d7de; }
table.list th, table.list td { padding: 5px 18px; }
td { overflow-wrap: anywhere; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.grid { display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 0 16px; }
svg.plot { display: block; width: 100%; height: auto; }
svg text { font-family: inherit; fill: #1f2328; }
svg .title { font-size: 14px; font-weight: 600; }
svg .tick { font-size: 11px; fill: #57606a; }
svg .axis { font-size: 12px; fill: #57606a; }
svg .legend { font-size: 12px; }
svg .note { font-size: 11px; fill: #57606a; }
.note { color: #57606a; margin: 0 0 12px; }
.warn { background: #fff8c5; border: 1px solid #d4a72c; border-radius: 8px; padding: 8px 12px; margin-bottom: 16px; }
.empty { font-size: 16px; text-align: center; padding: 40px 12px; color: #57606a; }
details { margin-bottom: 12px; }
details > summary { cursor: pointer; font-weight: 600; padding: 4px 0; }
code { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 13px; }
footer { color: #57606a; font-size: 12px; margin-top: 32px; }
@media (max-width: 900px) { .grid { grid-template-columns: 1fr; } }
)css";

// ---- number formatting (fixed, locale-free) ----

std::string dash_if(bool missing, const std::string& s) { return missing ? "—" : s; }

std::string fmt_g(double v, int sig = 4) {
  if (!std::isfinite(v)) return std::isnan(v) ? "—" : (v > 0 ? "∞" : "−∞");
  char buf[48];
  const double a = std::fabs(v);
  if (a != 0 && (a >= 1e6 || a < 1e-3)) {
    std::snprintf(buf, sizeof buf, "%.*e", sig - 1, v);
  } else {
    std::snprintf(buf, sizeof buf, "%.*g", sig, v);
  }
  return buf;
}

std::string fmt_int(int64_t v) {
  const uint64_t magnitude = v < 0 ? 0 - static_cast<uint64_t>(v) : static_cast<uint64_t>(v);
  const std::string digits = std::to_string(magnitude);
  std::string out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return v < 0 ? "-" + out : out;
}

// 1.23 B, 456 M, 12.3 k: parameter and token counts.
std::string fmt_si(double v) {
  if (!std::isfinite(v)) return "—";
  static constexpr std::pair<double, const char*> units[] = {
      {1e12, " T"}, {1e9, " B"}, {1e6, " M"}, {1e3, " k"}};
  for (const auto& [div, suffix] : units) {
    if (std::fabs(v) >= div) return fmt_g(v / div, 3) + suffix;
  }
  return fmt_g(v, 4);
}

std::string fmt_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "—";
  char buf[64];
  if (s < 60) {
    std::snprintf(buf, sizeof buf, "%.1f s", s);
  } else if (s < 3600) {
    std::snprintf(buf, sizeof buf, "%d min %02d s", static_cast<int>(s / 60), static_cast<int>(s) % 60);
  } else if (s < 86400) {
    std::snprintf(buf, sizeof buf, "%d h %02d min", static_cast<int>(s / 3600),
                  static_cast<int>(s / 60) % 60);
  } else {
    std::snprintf(buf, sizeof buf, "%d d %d h", static_cast<int>(s / 86400), static_cast<int>(s / 3600) % 24);
  }
  return buf;
}

// ---- page pieces ----

std::string tile(const std::string& key, const std::string& value, const std::string& detail) {
  return cat("<div class=\"tile\"><div class=\"k\">", esc(key), "</div><div class=\"v\">", esc(value),
             "</div><div class=\"d\">", detail.empty() ? "&nbsp;" : esc(detail), "</div></div>");
}

std::string kv_row(const std::string& key, const std::string& value) {
  return cat("<tr><th>", esc(key), "</th><td>", esc(value), "</td></tr>");
}

std::string fields_table(const FlatFields& fields) {
  std::string s = "<table class=\"kv\">";
  for (const auto& [k, v] : fields)
    s += cat("<tr><th><code>", esc(k), "</code></th><td><code>", esc(v), "</code></td></tr>");
  return s + "</table>";
}

std::string summary_section(const RunMetrics& m, const ReportSummary& s) {
  std::string out = "<div class=\"tiles\">";
  out += tile("final train loss", fmt_g(s.final_loss),
              std::isfinite(s.final_loss_mean) ? "mean of last 10: " + fmt_g(s.final_loss_mean) : "");
  out += tile("final eval loss", fmt_g(s.final_eval_loss),
              s.final_eval_step >= 0
                  ? cat("ppl ", fmt_g(s.final_eval_ppl), " at step ", fmt_int(s.final_eval_step))
                  : "");
  out += tile("last step", s.last_step >= 0 ? fmt_int(s.last_step) : "—",
              cat(fmt_int(s.logged_steps), " logged", s.finished ? ", finished" : ""));
  out += tile("tokens/s", fmt_si(s.tokens_per_s_median), "median over logged steps");
  out += tile("wall time", fmt_duration(s.wall_time_s),
              s.tokens >= 0 ? fmt_si(static_cast<double>(s.tokens)) + " tokens" : "");
  out += "</div>";

  std::string params = "—";
  if (s.n_params >= 0) {
    params = fmt_si(static_cast<double>(s.n_params)) + " total";
    if (s.n_active_params >= 0) {
      params += cat(" · ", fmt_si(static_cast<double>(s.n_active_params)), " active per token");
      if (s.n_params > 0) {
        params += cat(
            " (", fmt_g(100.0 * static_cast<double>(s.n_active_params) / static_cast<double>(s.n_params), 3),
            "%)");
      }
    }
  }
  std::string steps = "—";
  if (s.logged_steps > 0) {
    steps = s.first_step == s.last_step
                ? cat(fmt_int(s.logged_steps), " logged, step ", fmt_int(s.first_step))
                : cat(fmt_int(s.logged_steps), " logged, steps ", fmt_int(s.first_step), "–",
                      fmt_int(s.last_step));
  }
  std::string skipped = fmt_int(s.skipped_steps);
  std::string status =
      s.finished ? "finished"
                 : (s.logged_steps > 0 ? "running, or stopped without an end line" : "no steps yet");
  if (s.resumes > 0) status += cat(" · resumed ", s.resumes, s.resumes == 1 ? " time" : " times");

  out += "<div class=\"card\"><table class=\"kv\">";
  out += kv_row("Model", s.model_summary.empty() ? "—" : s.model_summary);
  out += kv_row("Parameters", params);
  out += kv_row("Status", status);
  out += kv_row("Steps", steps);
  out +=
      kv_row("Tokens",
             s.tokens >= 0 ? cat(fmt_int(s.tokens), " (", fmt_si(static_cast<double>(s.tokens)), ")") : "—");
  out += kv_row(
      "Final train loss",
      s.logged_steps > 0
          ? cat(fmt_g(s.final_loss), " (mean of the last 10 logged steps: ", fmt_g(s.final_loss_mean), ")")
          : "—");
  out += kv_row("Final eval", s.final_eval_step >= 0
                                  ? cat("loss ", fmt_g(s.final_eval_loss), " · perplexity ",
                                        fmt_g(s.final_eval_ppl), " (step ", fmt_int(s.final_eval_step), ")")
                                  : "—");
  out += kv_row("Unigram entropy",
                dash_if(std::isnan(s.unigram_entropy),
                        fmt_g(s.unigram_entropy) + " nats/token (loss of a model that ignores context)"));
  out += kv_row("Throughput", std::isfinite(s.tokens_per_s_median)
                                  ? fmt_int(std::llround(s.tokens_per_s_median)) + " tokens/s (median)"
                                  : "—");
  out += kv_row("Skipped steps", skipped);
  out += kv_row("Wall time", fmt_duration(s.wall_time_s));
  if (!m.runs.empty())
    out += kv_row("Started", dash_if(m.runs.front().started.empty(), m.runs.front().started));
  if (m.end) out += kv_row("Checkpoint", dash_if(m.end->checkpoint.empty(), m.end->checkpoint));
  out += "</table></div>";
  return out;
}

// Centred moving average over `half` logged steps either side, of the finite values only (a
// non-finite value stays a gap). Centred rather than exponential, so the curve does not lag the data.
std::vector<double> smooth(const std::vector<double>& y, size_t half) {
  const size_t n = y.size();
  std::vector<double> sum(n + 1, 0.0), count(n + 1, 0.0);  // prefix sums
  for (size_t i = 0; i < n; ++i) {
    const bool ok = std::isfinite(y[i]);
    sum[i + 1] = sum[i] + (ok ? y[i] : 0.0);
    count[i + 1] = count[i] + (ok ? 1.0 : 0.0);
  }
  std::vector<double> out(n, svg::kNaN);
  for (size_t i = 0; i < n; ++i) {
    if (!std::isfinite(y[i])) continue;
    const size_t lo = i >= half ? i - half : 0, hi = std::min(n, i + half + 1);
    out[i] = (sum[hi] - sum[lo]) / (count[hi] - count[lo]);
  }
  return out;
}

struct StepAxis {
  double lo, hi;
};

StepAxis step_axis(const RunMetrics& m) {
  double lo = static_cast<double>(m.steps.front().step), hi = static_cast<double>(m.steps.back().step);
  for (const EvalRecord& e : m.evals) {
    lo = std::min(lo, static_cast<double>(e.step));
    hi = std::max(hi, static_cast<double>(e.step));
  }
  if (hi <= lo) {  // one step: centred, with a single tick
    lo -= 0.5;
    hi += 0.5;
  }
  return {lo, hi};
}

svg::LinePlot step_plot(const RunMetrics& m, const char* id, const char* title, const char* y_label,
                        int width) {
  svg::LinePlot p;
  const StepAxis ax = step_axis(m);
  p.id = id;
  p.title = title;
  p.x_label = "step";
  p.y_label = y_label;
  p.x_min = ax.lo;
  p.x_max = ax.hi;
  p.width = width;
  p.height = width == kFullWidth ? 360 : 280;
  return p;
}

// A series of one field of every logged step.
template <typename F>
svg::Series step_series(const RunMetrics& m, const std::string& name, const std::string& color, F field) {
  svg::Series s;
  s.name = name;
  s.color = color;
  for (const StepRecord& st : m.steps) {
    s.x.push_back(static_cast<double>(st.step));
    s.y.push_back(field(st));
  }
  return s;
}

void add_event_lines(const RunMetrics& m, svg::LinePlot& p) {
  for (size_t i = 1; i < m.runs.size(); ++i) {
    if (m.runs[i].first_step < 0) continue;
    p.refs.push_back({static_cast<double>(m.runs[i].first_step), true, "#8c959f", "2 3", "resumed", ""});
  }
  std::set<int64_t> skipped;  // a step line and a skip line may name the same step
  for (const StepRecord& st : m.steps) {
    if (st.skipped) skipped.insert(st.step);
  }
  for (const SkipRecord& sk : m.skips) skipped.insert(sk.step);
  for (int64_t step : skipped)
    p.refs.push_back({static_cast<double>(step), true, "#e15759", "3 3", "", "skipped step"});
}

bool any_finite(const std::vector<double>& v) {
  return std::any_of(v.begin(), v.end(), [](double x) { return std::isfinite(x); });
}

std::string loss_plot(const RunMetrics& m, const ReportSummary& s) {
  svg::LinePlot p = step_plot(m, "plot-loss", "Loss", "loss (nats/token)", kFullWidth);
  svg::Series raw =
      step_series(m, "train loss", svg::palette(0), [](const StepRecord& st) { return st.loss; });
  if (m.steps.size() >= 40) {
    const size_t half = std::max<size_t>(1, m.steps.size() / 80);
    svg::Series smoothed = raw;
    smoothed.y = smooth(raw.y, half);
    smoothed.name = cat("train loss, mean of ", 2 * half + 1, " logged steps");
    smoothed.width = 2.2;
    raw.opacity = 0.35;
    raw.width = 1.2;
    p.series.push_back(raw);
    p.series.push_back(smoothed);
  } else {
    raw.markers = m.steps.size() <= 20;
    p.series.push_back(raw);
  }
  if (!m.evals.empty()) {
    svg::Series ev;
    ev.name = "eval loss";
    ev.color = svg::palette(1);
    ev.markers = true;
    ev.width = 2;
    for (const EvalRecord& e : m.evals) {
      ev.x.push_back(static_cast<double>(e.step));
      ev.y.push_back(e.loss);
    }
    p.series.push_back(ev);
  }
  if (std::isfinite(s.unigram_entropy)) {
    p.refs.push_back({s.unigram_entropy, false, "#6e7781", "7 5",
                      cat("unigram entropy ", fmt_g(s.unigram_entropy)), "unigram entropy"});
  }
  add_event_lines(m, p);
  return svg::line_plot(p);
}

// Experts per token per MoE layer, when it varied (adaptive-k routing): one line per layer.
std::string mean_k_plot(const RunMetrics& m, const std::vector<int64_t>& layer_ids) {
  size_t layers = 0;
  double lo = svg::kNaN, hi = svg::kNaN;
  for (const StepRecord& st : m.steps) {
    layers = std::max(layers, st.mean_k.size());
    for (double k : st.mean_k)
      if (std::isfinite(k))
        lo = std::isnan(lo) ? k : std::min(lo, k), hi = std::isnan(hi) ? k : std::max(hi, k);
  }
  if (layers == 0 || !(hi > lo)) return "";  // fixed k: nothing to show
  svg::LinePlot p =
      step_plot(m, "plot-mean-k", "Experts per token (adaptive-k routing)", "mean k", kFullWidth);
  p.height = 280;
  p.y_include = 1;
  for (size_t l = 0; l < layers; ++l) {
    const std::string name = l < layer_ids.size() ? cat("layer ", layer_ids[l]) : cat("MoE layer ", l);
    const std::string color = layers <= 10 ? svg::palette(l) : cat("hsl(", l * 330 / layers, ",70%,45%)");
    p.series.push_back(step_series(m, name, color, [l](const StepRecord& st) {
      return l < st.mean_k.size() ? st.mean_k[l] : svg::kNaN;
    }));
    p.series.back().width = 1.4;
  }
  return "<div class=\"card\">" + svg::line_plot(p) + "</div>";
}

std::string curve_plots(const RunMetrics& m, const ReportSummary& s) {
  std::string out = "<div class=\"grid\">";
  {
    svg::LinePlot p = step_plot(m, "plot-tps", "Throughput", "tokens/s", kHalfWidth);
    p.series.push_back(
        step_series(m, "", svg::palette(4), [](const StepRecord& st) { return st.tokens_per_s; }));
    p.y_include_zero = true;
    if (std::isfinite(s.tokens_per_s_median)) {
      p.refs.push_back(
          {s.tokens_per_s_median, false, "#6e7781", "7 5", "", "median " + fmt_si(s.tokens_per_s_median)});
    }
    out += "<div class=\"card\">" + svg::line_plot(p) + "</div>";
  }
  {
    svg::LinePlot p = step_plot(m, "plot-lr", "Learning rate", "learning rate", kHalfWidth);
    p.series.push_back(step_series(m, "", svg::palette(6), [](const StepRecord& st) { return st.lr; }));
    p.y_include_zero = true;
    out += "<div class=\"card\">" + svg::line_plot(p) + "</div>";
  }
  {
    svg::LinePlot p = step_plot(m, "plot-gnorm", "Gradient norm", "grad norm", kHalfWidth);
    svg::Series g = step_series(m, "", svg::palette(2), [](const StepRecord& st) { return st.grad_norm; });
    double lo = svg::kNaN, hi = svg::kNaN;
    for (double v : g.y) {
      if (!std::isfinite(v) || v <= 0) continue;
      lo = std::isnan(lo) ? v : std::min(lo, v);
      hi = std::isnan(hi) ? v : std::max(hi, v);
    }
    p.log_y = std::isfinite(lo) && hi / lo > 100;  // spikes would flatten the rest on a linear axis
    if (p.log_y) p.title += " (log scale)";
    p.y_include_zero = !p.log_y;
    p.series.push_back(g);
    add_event_lines(m, p);
    out += "<div class=\"card\">" + svg::line_plot(p) + "</div>";
  }
  {
    svg::LinePlot p = step_plot(m, "plot-aux", "Auxiliary (load-balancing) loss", "aux loss", kHalfWidth);
    p.series.push_back(step_series(m, "", svg::palette(3), [](const StepRecord& st) { return st.aux_loss; }));
    if (any_finite(p.series[0].y)) out += "<div class=\"card\">" + svg::line_plot(p) + "</div>";
  }
  out += "</div>";

  // Load imbalance: one line per MoE layer.
  size_t layers = 0;
  std::vector<int64_t> layer_ids;
  for (const StepRecord& st : m.steps) {
    if (st.imbalance.size() >= layers) {
      layers = st.imbalance.size();
      if (!st.moe_layers.empty()) layer_ids = st.moe_layers;
    }
  }
  if (layers > 0) {
    svg::LinePlot p = step_plot(m, "plot-imbalance", "Expert load imbalance (max / mean tokens per expert)",
                                "max / mean load", kFullWidth);
    p.height = 320;
    p.y_include = 1;
    for (size_t l = 0; l < layers; ++l) {
      const std::string name = l < layer_ids.size() ? cat("layer ", layer_ids[l]) : cat("MoE layer ", l);
      // Past ten layers: hues evenly around the colour wheel, in layer order.
      const std::string color = layers <= 10 ? svg::palette(l) : cat("hsl(", l * 330 / layers, ",70%,45%)");
      p.series.push_back(step_series(m, name, color, [l](const StepRecord& st) {
        return l < st.imbalance.size() ? st.imbalance[l] : svg::kNaN;
      }));
      p.series.back().width = 1.4;
    }
    p.refs.push_back({1.0, false, "#6e7781", "7 5", "", "1 = perfect balance"});
    out += "<div class=\"card\">" + svg::line_plot(p) + "</div>";
  }
  out += mean_k_plot(m, layer_ids);
  return out;
}

}  // namespace

std::string report_html(const RunMetrics& m, const std::string& title) {
  const ReportSummary s = summarize(m);
  std::string page = "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n";
  page += "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n";
  page += cat("<title>Training report: ", esc(title), "</title>\n<style>", kStyle,
              "</style>\n</head>\n<body>\n<main>\n");
  page += cat("<h1>Training report</h1>\n<p class=\"sub\"><code>", esc(title), "</code>",
              s.model_summary.empty() ? "" : cat(" · ", esc(s.model_summary)), "</p>\n");
  for (const std::string& w : m.warnings) page += cat("<div class=\"warn\">Warning: ", esc(w), "</div>\n");
  page += summary_section(m, s);

  if (m.steps.empty()) {
    page +=
        "<div class=\"card empty\">No steps logged yet: the plots appear once training has logged a "
        "step.</div>\n";
  } else {
    page += "<h2>Training curves</h2>\n<div class=\"card\">" + loss_plot(m, s) + "</div>\n";
    page += curve_plots(m, s);
    page += expert_load_section(m, kFullWidth, kMaxHeatColumns);
  }

  // The log: segments, evaluations, skipped steps, model config and training options.
  page += "<h2>Run log</h2>\n";
  if (m.runs.size() > 1) {
    page += "<details open><summary>Starts and resumes</summary><div class=\"card\"><table class=\"list\">";
    page += "<tr><th>#</th><th class=\"num\">line</th><th>started</th><th class=\"num\">first step</th></tr>";
    for (size_t i = 0; i < m.runs.size(); ++i) {
      const RunStart& r = m.runs[i];
      page += cat("<tr><td>", i == 0 ? "start" : cat("resume ", i), "</td><td class=\"num\">", r.line,
                  "</td><td>", esc(dash_if(r.started.empty(), r.started)), "</td><td class=\"num\">",
                  r.first_step >= 0 ? fmt_int(r.first_step) : "—", "</td></tr>");
    }
    page += "</table></div></details>\n";
  }
  if (!m.evals.empty()) {
    page += cat("<details", m.evals.size() <= 12 ? " open" : "", "><summary>Evaluations (", m.evals.size(),
                ")</summary><div class=\"card\"><table class=\"list\">");
    page +=
        "<tr><th class=\"num\">step</th><th class=\"num\">loss</th><th class=\"num\">perplexity</th>"
        "<th class=\"num\">tokens</th></tr>";
    for (const EvalRecord& e : m.evals) {
      page += cat("<tr><td class=\"num\">", fmt_int(e.step), "</td><td class=\"num\">", fmt_g(e.loss),
                  "</td><td class=\"num\">", fmt_g(e.ppl), "</td><td class=\"num\">",
                  e.tokens >= 0 ? fmt_int(e.tokens) : "—", "</td></tr>");
    }
    page += "</table></div></details>\n";
  }
  if (s.skipped_steps > 0) {
    page += cat("<details open><summary>Skipped steps (", s.skipped_steps,
                ")</summary><div class=\"card\"><table class=\"list\">");
    page += "<tr><th class=\"num\">step</th><th>reason</th></tr>";
    std::vector<std::pair<int64_t, std::string>> rows;
    for (const SkipRecord& sk : m.skips) rows.emplace_back(sk.step, sk.reason);
    for (const StepRecord& st : m.steps) {
      const bool listed =
          std::any_of(m.skips.begin(), m.skips.end(), [&](const SkipRecord& k) { return k.step == st.step; });
      if (st.skipped && !listed) rows.emplace_back(st.step, "");
    }
    std::sort(rows.begin(), rows.end());
    const size_t shown = std::min<size_t>(rows.size(), 100);
    for (size_t i = 0; i < shown; ++i) {
      page += cat("<tr><td class=\"num\">", fmt_int(rows[i].first), "</td><td>",
                  esc(dash_if(rows[i].second.empty(), rows[i].second)), "</td></tr>");
    }
    if (rows.size() > shown) page += cat("<tr><td></td><td>… and ", rows.size() - shown, " more</td></tr>");
    page += "</table></div></details>\n";
  }
  if (!m.runs.empty() && !m.runs.back().model.empty()) {
    page += "<details><summary>Model config</summary><div class=\"card\">" +
            fields_table(m.runs.back().model) + "</div></details>\n";
  }
  if (!m.runs.empty() && !m.runs.back().train.empty()) {
    page += "<details><summary>Training options</summary><div class=\"card\">" +
            fields_table(m.runs.back().train) + "</div></details>\n";
  }
  page +=
      cat("<footer>Written by <code>moe report</code> from <code>", esc(m.path), "</code>: ", m.steps.size(),
          " logged steps, ", m.evals.size(), " evaluations.</footer>\n</main>\n</body>\n</html>\n");
  return page;
}

}  // namespace moe::train
