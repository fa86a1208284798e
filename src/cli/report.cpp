// `moe report RUN_DIR [--out FILE] [--json]`: reads RUN_DIR/metrics.jsonl (written by `moe train`) and
// writes one self-contained HTML page with the run's summary, training curves and per-layer expert
// load heat maps (RUN_DIR/report.html unless --out says otherwise). Prints the path written, or with
// --json a JSON summary of the run that names it. Lines the log ignores (a last line cut short by a
// kill) are reported on stderr as `moe: warning: ...`. Exit 0 on success; 2 for a missing directory
// or log, a malformed line, or an output that cannot be written.
#include <cmath>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "cli/common.h"
#include "moe/core/error.h"
#include "moe/train/report.h"

namespace moe::cli {
namespace {

struct ReportArgs {
  std::string run_dir;
  std::string out;
  bool json = false;
};

// A number for JSON output; null when it is unknown (NaN) or not finite.
nlohmann::ordered_json num(double v, int digits) {
  if (!std::isfinite(v)) return nullptr;
  return round_sig(v, digits);
}
nlohmann::ordered_json count(int64_t v) {
  return v < 0 ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(v);
}

void print_json(const train::ReportResult& r, const std::string& run_dir) {
  const train::ReportSummary& s = r.summary;
  nlohmann::ordered_json j;
  j["command"] = "report";
  j["report"] = r.out_path;
  j["run_dir"] = run_dir;
  j["metrics"] = r.metrics.path;
  j["model"] = s.model_summary;
  j["n_params"] = count(s.n_params);
  j["n_active_params"] = count(s.n_active_params);
  j["logged_steps"] = s.logged_steps;
  j["first_step"] = count(s.first_step);
  j["last_step"] = count(s.last_step);
  j["tokens"] = count(s.tokens);
  j["final_loss"] = num(s.final_loss, 6);
  j["final_loss_mean10"] = num(s.final_loss_mean, 6);
  j["final_eval_step"] = count(s.final_eval_step);
  j["final_eval_loss"] = num(s.final_eval_loss, 6);
  j["final_eval_ppl"] = num(s.final_eval_ppl, 6);
  j["unigram_entropy"] = num(s.unigram_entropy, 6);
  j["tokens_per_s_median"] = num(s.tokens_per_s_median, 6);
  j["skipped_steps"] = s.skipped_steps;
  j["wall_time_s"] = num(s.wall_time_s, 6);
  j["resumes"] = s.resumes;
  j["finished"] = s.finished;
  j["moe_layers"] = s.moe_layers;
  j["warnings"] = r.metrics.warnings;
  std::cout << j.dump() << std::endl;
}

int run_report(const ReportArgs& a) {
  train::ReportOptions opt;
  opt.run_dir = a.run_dir;
  opt.out_path = a.out;
  const train::ReportResult r = train::write_report(opt);
  for (const std::string& w : r.metrics.warnings) std::cerr << "moe: warning: " << w << std::endl;
  if (a.json) {
    print_json(r, a.run_dir);
  } else {
    std::cout << r.out_path << std::endl;
  }
  return kExitOk;
}

}  // namespace

void register_report(CLI::App& app, Registry& reg) {
  auto args = std::make_shared<ReportArgs>();
  CLI::App* sub = app.add_subcommand(
      "report", "Write an HTML report (summary, training curves, expert load) of a training run directory");
  sub->add_option("run_dir", args->run_dir, "Run directory of `moe train` (holds metrics.jsonl)")->required();
  sub->add_option("--out", args->out, "Output file (default: RUN_DIR/report.html)");
  sub->add_flag("--json", args->json,
                "Print a JSON summary of the run (with the report's path) instead of the path");
  sub->callback([&reg, args] { reg.action = [args] { return run_report(*args); }; });
}

}  // namespace moe::cli
