// The training report: reads the metrics log of a `moe train` run directory (RUN_DIR/metrics.jsonl)
// and writes one self-contained HTML page (RUN_DIR/report.html) with the run's summary and plots.
//
// metrics.jsonl holds one JSON object per line, told apart by "type":
//   run   {"model": {config.json}, "train": {options}, "started": ISO-8601, "n_params": int,
//          "n_active_params": int, "unigram_entropy": nats/token (optional)}   first line; again on resume
//   step  {"step", "loss", "aux_loss", "lr", "grad_norm", "tokens" (cumulative), "tokens_per_s",
//          "elapsed_s", "skipped", "imbalance": [per MoE layer], "expert_load": [[per expert] per MoE
//          layer], "moe_layers": [layer index per MoE layer], "mean_k": [experts per token per MoE layer]}
//   eval  {"step", "loss", "ppl", "tokens"}
//   skip  {"step", "reason"}
//   end   {"step", "elapsed_s", "checkpoint"}
// Only "step" is required in step/eval/skip/end lines; absent numbers read as NaN. A number may also
// be null, "NaN", "Infinity" or "-Infinity" (and the bare NaN/Infinity tokens Python's json writes):
// all read as the non-finite value they name. Lines of an unknown type are ignored (newer writers).
//
// A resumed run appends another "run" line and logs again from its checkpoint's step: from the first
// step it logs, the records the earlier processes wrote for that step and later ones are dropped (that
// part of the run was rolled back), so the later line for a step wins. A last line without its newline that
// is not valid JSON (a write cut short by a kill) is ignored with a warning; every other malformed line
// throws moe::Error naming the file and line.
#pragma once

#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace moe::train {

inline constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// Key/value pairs of a JSON object flattened for display: nested keys joined with '.', strings as
// they are, other values as JSON text.
using FlatFields = std::vector<std::pair<std::string, std::string>>;

// One "run" line: a start or a resume.
struct RunStart {
  size_t line = 0;                // 1-based line number in metrics.jsonl
  std::string started;            // ISO-8601 time, as written
  int64_t n_params = -1;          // -1 when absent
  int64_t n_active_params = -1;   // -1 when absent
  double unigram_entropy = kNaN;  // nats/token; NaN when absent
  std::string model_summary;      // "mixtral · 8 layers · d_model 512 · 8 experts, top-2 · ..."
  FlatFields model;               // the HF config.json object
  FlatFields train;               // the training options
  int64_t first_step = -1;        // first step logged after this line (-1: none yet)
};

struct StepRecord {
  int64_t step = 0;
  double loss = kNaN, aux_loss = kNaN, lr = kNaN, grad_norm = kNaN;
  int64_t tokens = -1;  // cumulative; -1 when absent
  double tokens_per_s = kNaN, elapsed_s = kNaN;
  bool skipped = false;
  std::vector<double> imbalance;                 // (L): max/mean expert load per MoE layer
  std::vector<std::vector<double>> expert_load;  // (L, E): fraction of routed assignments per expert
  std::vector<int64_t> moe_layers;               // (L): model layer index of each MoE layer
  std::vector<double> mean_k;                    // (L): experts per token (adaptive-k routing varies it)
};

struct EvalRecord {
  int64_t step = 0;
  double loss = kNaN, ppl = kNaN;
  int64_t tokens = -1;
};

struct SkipRecord {
  int64_t step = 0;
  std::string reason;
};

struct EndRecord {
  int64_t step = 0;
  double elapsed_s = kNaN;
  std::string checkpoint;
};

// A parsed metrics log. steps/evals/skips are sorted by step, one record per step (the last line
// written for it).
struct RunMetrics {
  std::string path;            // the file read (for messages)
  std::vector<RunStart> runs;  // in file order; empty only for an empty file
  std::vector<StepRecord> steps;
  std::vector<EvalRecord> evals;
  std::vector<SkipRecord> skips;
  std::optional<EndRecord> end;       // the last "end" line, when the last segment has one
  double wall_time_s = kNaN;          // summed over segments (see summarize); NaN when unknown
  std::vector<std::string> warnings;  // "metrics.jsonl:57: ..." for lines that were ignored
};

// Parses the text of a metrics log; `path` names it in messages.
RunMetrics parse_metrics(const std::string& text, const std::string& path);
// Reads and parses a metrics log file.
RunMetrics read_metrics(const std::string& path);

// The figures of the summary table (and of `moe report --json`). NaN / -1 when unknown.
struct ReportSummary {
  int64_t logged_steps = 0;  // distinct steps with a "step" line
  int64_t first_step = -1, last_step = -1;
  double final_loss = kNaN;       // loss of the last logged step with a finite loss
  double final_loss_mean = kNaN;  // mean of the finite losses of the last (up to) 10 logged steps
  int64_t final_eval_step = -1;
  double final_eval_loss = kNaN, final_eval_ppl = kNaN;
  int64_t tokens = -1;  // cumulative tokens at the last step
  double tokens_per_s_median = kNaN;
  int64_t skipped_steps = 0;  // distinct steps marked skipped (step lines or skip lines)
  double wall_time_s = kNaN;
  int64_t n_params = -1, n_active_params = -1;
  double unigram_entropy = kNaN;
  int64_t resumes = 0;     // "run" lines after the first
  bool finished = false;   // an "end" line closes the log
  int64_t moe_layers = 0;  // MoE layers in the last step with load statistics
  std::string model_summary;
};
ReportSummary summarize(const RunMetrics& m);

// The report page: one HTML document with inline CSS and SVG, no scripts, no network. `title`
// (escaped) heads the page. The same input gives the same bytes.
std::string report_html(const RunMetrics& m, const std::string& title);

struct ReportOptions {
  std::string run_dir;   // holds metrics.jsonl
  std::string out_path;  // empty: RUN_DIR/report.html
};
struct ReportResult {
  std::string out_path;  // the file written
  RunMetrics metrics;
  ReportSummary summary;
};
// Reads RUN_DIR/metrics.jsonl and writes the page (to a temporary file renamed into place, so a
// browser reloading it never sees half a page). Throws moe::Error for a missing directory or log,
// a malformed line, or an output path that cannot be written.
ReportResult write_report(const ReportOptions& opt);

}  // namespace moe::train
