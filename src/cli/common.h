// Shared pieces of the `moe` command-line tool: exit codes, the command registry, timing and
// memory helpers. Each subcommand lives in its own file and adds itself with a register_* function
// (called from main.cpp); its callback stores the action to run once parsing has succeeded.
#pragma once

#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "moe/core/parallel.h"

namespace moe::model {
class Transformer;
}

namespace moe::cli {

// Exit codes of every subcommand.
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;  // an unexpected failure while running (out of memory, I/O)
inline constexpr int kExitUsage = 2;    // bad command line, bad config, bad input (moe::Error)

// The action chosen by the command line, filled in by a subcommand's CLI11 callback and run by main
// after parsing, so that a parse error never leaves a half-run command behind.
struct Registry {
  std::function<int()> action;
};

// Subcommands. Future ones (train, eval, generate, serve) follow the same pattern: one file, one
// register function, listed in main.cpp.
void register_version(CLI::App& app, Registry& reg);
void register_bench(CLI::App& app, Registry& reg);
void register_layer(CLI::App& app, Registry& reg);
void register_train(CLI::App& app, Registry& reg);
// `moe distill` (src/cli/distill.cpp): knowledge distillation into a student model.
void register_distill(CLI::App& app, Registry& reg);
void register_eval(CLI::App& app, Registry& reg);
void register_generate(CLI::App& app, Registry& reg);
void register_upcycle(CLI::App& app, Registry& reg);
void register_init(CLI::App& app, Registry& reg);
// `moe quantize` (src/cli/quantize.cpp): group-wise int8/int4 experts.
void register_quantize(CLI::App& app, Registry& reg);
// `moe export` (src/cli/export.cpp): a model as GGUF for llama.cpp.
void register_export(CLI::App& app, Registry& reg);
// `moe bench quant` (src/cli/bench_quant.cpp): quantized-weight GEMM rates.
void add_bench_quant(CLI::App& bench, Registry& reg);
void register_prune(CLI::App& app, Registry& reg);
// `moe compress` (src/cli/compress.cpp): low-rank (truncated SVD) experts.
void register_compress(CLI::App& app, Registry& reg);
// `moe merge` (src/cli/merge.cpp): merge each MoE layer's experts into fewer (docs/MERGING.md).
void register_merge(CLI::App& app, Registry& reg);
// `moe predictor` (src/cli/predictor.cpp): fit the prefetch's expert predictor on calibration text.
void register_predictor(CLI::App& app, Registry& reg);
// `moe bench train` (src/cli/bench_train.cpp), added to the `bench` group by register_bench.
void add_bench_train(CLI::App& bench, Registry& reg);
// `moe bench generate` (src/cli/bench_generate.cpp): serving throughput of the engine.
void add_bench_generate(CLI::App& bench, Registry& reg);
void add_bench_offload(CLI::App& bench, Registry& reg);
// `moe bench alltoall` (src/cli/bench_alltoall.cpp): expert-parallel all-to-all under mpirun.
void add_bench_alltoall(CLI::App& bench, Registry& reg);
// `moe bench ep` (src/cli/bench_ep.cpp): one expert-parallel MoE layer under mpirun.
void add_bench_ep(CLI::App& bench, Registry& reg);
void register_report(CLI::App& app, Registry& reg);
void register_serve(CLI::App& app, Registry& reg);
// `moe plan` (src/cli/plan.cpp): EP x DP layouts of MoE training on a GPU cluster, predicted.
void register_plan(CLI::App& app, Registry& reg);

// ---- The flags many subcommands share: defined once (name, meaning, range), applied in one place ----

// The most threads --threads accepts (a larger count is a typo, and OpenMP fails on it).
inline constexpr int kMaxThreads = kMaxThreadCount;
// --threads N: CPU threads; 0 (the default) means MOE_NUM_THREADS when set, else every core.
CLI::Option* add_threads_flag(CLI::App* c, int& threads);
// Sets the thread count of the library when --threads was given (N > 0).
void apply_threads(int threads);
// --json: print one JSON object (the help may say more).
CLI::Option* add_json_flag(CLI::App* c, bool& json, const std::string& help = "Print one JSON object");
// --model DIR (required): a model directory (Hugging Face layout) or a run directory of `moe train`.
CLI::Option* add_model_flag(
    CLI::App* c, std::string& model,
    const std::string& help = "Model directory (Hugging Face layout) or run directory");
// --seed N: the seed of what `what` names, default shown.
CLI::Option* add_seed_flag(CLI::App* c, uint64_t& seed, const std::string& what);

// Validators of numeric flags with one-line messages ("--experts: must be >= 1, got 0"): sizes and
// counts are at_least(1), coefficients and rates at_least(0); an upper bound where a larger value
// would exhaust the machine.
CLI::Validator at_least(double lo);
CLI::Validator in_range(double lo, double hi);
// (lo, +inf) and (lo, hi]: where lo itself means nothing (a zero learning rate, bandwidth or mass).
CLI::Validator above(double lo);
CLI::Validator above_at_most(double lo, double hi);
// Bounds of the flags that are not model sizes (those are bounded by ModelConfig::validate): tokens
// of a prompt, sequence or batch, and repetitions (benchmark iterations, warmups, epochs).
inline constexpr double kMaxTokensFlag = 1 << 24;
inline constexpr double kMaxRepsFlag = 1e6;
// Test that every numeric flag of every command carries one of these validators:
// tests/cli/flag_audit.py (cli.flag_audit).

// Expert routing at inference, set on a loaded model (docs/PRUNING.md): --skip-threshold X (dynamic
// expert skipping, 0 = off) and --router-top-p P (adaptive-k routing; not given: the model's own).
struct InferenceRouting {
  double skip_threshold = 0;
  double router_top_p = -1;
};
void add_inference_routing_flags(CLI::App* c, InferenceRouting& r, const std::string& skip_help);
void apply_inference_routing(model::Transformer& m, const InferenceRouting& r);

// Peak resident set size of this process in MiB (getrusage ru_maxrss).
double peak_rss_mb();

// Wall-clock milliseconds since `start`.
inline double ms_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
}

// Median of a non-empty sample (mean of the two middle values for an even count).
inline double median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Rounds to `digits` decimals, for output that stays readable in JSON.
inline double round_to(double x, int digits) {
  const double s = std::pow(10.0, digits);
  return std::round(x * s) / s;
}

// Rounds to `digits` significant digits (rates that range from 1e-4 to 1e4 GFLOP/s).
inline double round_sig(double x, int digits) {
  if (x == 0.0 || !std::isfinite(x)) return x;
  const int magnitude = static_cast<int>(std::floor(std::log10(std::fabs(x))));
  return round_to(x, digits - 1 - magnitude);
}

}  // namespace moe::cli
