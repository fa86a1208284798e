// Helpers shared by the subcommands (see common.h).
#include "cli/common.h"

#include "moe/model/transformer.h"

#include <sys/resource.h>

#include <cmath>
#include <iomanip>
#include <limits>
#include <sstream>

#include "moe/core/parallel.h"

namespace moe::cli {

CLI::Option* add_threads_flag(CLI::App* c, int& threads) {
  return c
      ->add_option("--threads", threads,
                   "CPU threads (0 = the default: MOE_NUM_THREADS when set, else all cores; at most " +
                       std::to_string(kMaxThreads) + ")")
      ->check(in_range(0, kMaxThreads))
      ->capture_default_str();
}

void apply_threads(int threads) {
  if (threads > 0) set_num_threads(threads);
}

CLI::Option* add_json_flag(CLI::App* c, bool& json, const std::string& help) {
  return c->add_flag("--json", json, help);
}

CLI::Option* add_model_flag(CLI::App* c, std::string& model, const std::string& help) {
  return c->add_option("--model", model, help)->required();
}

CLI::Option* add_seed_flag(CLI::App* c, uint64_t& seed, const std::string& what) {
  return c->add_option("--seed", seed, "Seed of " + what)->capture_default_str();
}

namespace {
std::string fmt_bound(double v) {
  std::ostringstream o;
  o << std::setprecision(15) << v;
  return o.str();
}

CLI::Validator range_validator(double lo, double hi, const std::string& what, bool lo_open = false) {
  return CLI::Validator(
      [lo, hi, what, lo_open](std::string& in) -> std::string {
        double v = 0;
        size_t used = 0;
        try {
          v = std::stod(in, &used);
        } catch (...) {
          used = 0;
        }
        if (used != in.size() || in.empty() || !std::isfinite(v))
          return "expected a number, got '" + in + "'";
        if (v < lo || v > hi || (lo_open && v == lo)) return "must be " + what + ", got " + in;
        return {};
      },
      what);
}
}  // namespace

CLI::Validator at_least(double lo) {
  return range_validator(lo, std::numeric_limits<double>::max(), ">= " + fmt_bound(lo));
}

CLI::Validator in_range(double lo, double hi) {
  return range_validator(lo, hi, "in [" + fmt_bound(lo) + ", " + fmt_bound(hi) + "]");
}

CLI::Validator above(double lo) {
  return range_validator(lo, std::numeric_limits<double>::max(), "> " + fmt_bound(lo), true);
}

CLI::Validator above_at_most(double lo, double hi) {
  return range_validator(lo, hi, "in (" + fmt_bound(lo) + ", " + fmt_bound(hi) + "]", true);
}

void add_inference_routing_flags(CLI::App* c, InferenceRouting& r, const std::string& skip_help) {
  c->add_option("--skip-threshold", r.skip_threshold, skip_help)->check(in_range(0, 1));
  c->add_option("--router-top-p", r.router_top_p,
                "Adaptive-k routing: each token's experts by score until their mass reaches P (at most the "
                "model's top-k; 0 = top-k always; default: the model's own)")
      ->check(in_range(0, 1));
}

void apply_inference_routing(model::Transformer& m, const InferenceRouting& r) {
  m.set_expert_skip_threshold(r.skip_threshold);
  if (r.router_top_p >= 0) m.set_router_top_p(r.router_top_p);
}

double peak_rss_mb() {
  struct rusage ru {};
  if (getrusage(RUSAGE_SELF, &ru) != 0) return 0.0;
  return static_cast<double>(ru.ru_maxrss) / 1024.0;  // Linux reports KiB
}

}  // namespace moe::cli
