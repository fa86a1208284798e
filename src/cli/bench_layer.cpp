// `moe bench layer`: times one MoE layer (f32) forward and forward+backward on random inputs and
// prints the median times, the achieved expert-matmul GFLOP/s, the routing balance and peak memory.
//
// FLOPs counted: the expert matmuls only (MoELayer::expert_flops over the kept assignments, routed
// and shared experts) for the forward; three times that for forward+backward (backward = 2x).
// Router GEMM, softmax, sorting and combine are in the time but not in the FLOP count.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "moe/core/error.h"
#include "moe/core/parallel.h"
#include "moe/core/rng.h"
#include "moe/core/tensor.h"
#include "moe/moe/config.h"
#include "moe/moe/layer.h"

namespace moe::cli {
namespace {

struct BenchLayerOptions {
  int64_t tokens = 512;
  int64_t d_model = 256;
  int64_t d_ff = 512;
  int64_t experts = 8;
  int top_k = 2;
  int64_t shared_experts = 0;
  std::string router = "softmax";
  std::string activation = "swiglu";
  double capacity_factor = 0.0;
  int threads = 0;  // 0: keep the library's default (OpenMP's)
  int warmup = 2;
  int iters = 10;
  std::string backend = "cpu";
  uint64_t seed = 42;
  bool json = false;
};

struct BenchLayerResult {
  double fwd_ms = 0, fwd_ms_min = 0, fwd_bwd_ms = 0, fwd_bwd_ms_min = 0;
  double flops_fwd = 0;
  MoEStats stats;
  int threads = 0;
  double peak_rss_mb = 0;
};

// Checks of the options that only the tool has; the layer's own fields are checked by
// MoEConfig::validate, but the tool names the flags so the user knows what to change.
void check_options(const BenchLayerOptions& o) {
  MOE_CHECK(o.tokens >= 1, "--tokens must be >= 1, got ", o.tokens,
            " (a benchmark of no tokens measures nothing)");
  MOE_CHECK(o.d_model >= 1, "--d-model must be >= 1, got ", o.d_model);
  MOE_CHECK(o.d_ff >= 1, "--d-ff must be >= 1, got ", o.d_ff);
  MOE_CHECK(o.experts >= 1, "--experts must be >= 1, got ", o.experts);
  MOE_CHECK(o.top_k >= 1 && o.top_k <= o.experts, "--top-k: top_k = ", o.top_k,
            " must be in [1, E] with E = ", o.experts, " (--experts)");
  MOE_CHECK(o.shared_experts >= 0, "--shared-experts must be >= 0, got ", o.shared_experts);
  MOE_CHECK(o.capacity_factor >= 0.0, "--capacity-factor must be >= 0 (0 = dropless), got ",
            o.capacity_factor);
  MOE_CHECK(o.threads >= 0, "--threads must be >= 1 (or 0 for the default), got ", o.threads);
  MOE_CHECK(o.warmup >= 0, "--warmup must be >= 0, got ", o.warmup);
  MOE_CHECK(o.iters >= 1, "--iters must be >= 1, got ", o.iters);
}

MoEConfig make_config(const BenchLayerOptions& o) {
  MoEConfig cfg;
  cfg.d_model = o.d_model;
  cfg.d_ff = o.d_ff;
  cfg.n_experts = o.experts;
  cfg.activation = kernels::activation_from_name(o.activation);
  cfg.n_shared_experts = o.shared_experts;
  cfg.router.top_k = o.top_k;
  cfg.router.score = score_fn_from_name(o.router);
  cfg.router.capacity_factor = o.capacity_factor;
  cfg.validate();
  return cfg;
}

BenchLayerResult bench(const BenchLayerOptions& o) {
  const MoEConfig cfg = make_config(o);
  const kernels::Backend backend = kernels::backend_from_name(o.backend);
  MOE_CHECK(kernels::backend_available(backend), "backend '", o.backend, "' is not available in this build");
  if (o.threads > 0) set_num_threads(o.threads);

  MoELayer layer(cfg, DType::F32, backend);
  layer.init_params(o.seed);
  const Rng rng(o.seed);
  Tensor x = Tensor::empty({o.tokens, o.d_model}, DType::F32, "x");    // (T, d)
  Tensor dy = Tensor::empty({o.tokens, o.d_model}, DType::F32, "dy");  // (T, d)
  rng.fork(1).fill_normal(x, 0.0, 1.0);
  rng.fork(2).fill_normal(dy, 0.0, 1.0);

  BenchLayerResult r;
  r.threads = num_threads();

  // Forward only. Routing is deterministic, so every iteration has the same statistics.
  for (int i = 0; i < o.warmup; ++i) (void)layer.forward(x);
  std::vector<double> fwd;
  for (int i = 0; i < o.iters; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    MoEForward f = layer.forward(x);
    fwd.push_back(ms_since(t0));
    if (i == 0) r.stats = f.stats;
  }

  // Forward + backward.
  for (int i = 0; i < o.warmup; ++i) {
    MoEForward f = layer.forward(x);
    (void)layer.backward(f, dy);
  }
  std::vector<double> fwd_bwd;
  for (int i = 0; i < o.iters; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    MoEForward f = layer.forward(x);
    MoEGrads g = layer.backward(f, dy);
    fwd_bwd.push_back(ms_since(t0));
  }

  r.fwd_ms = median(fwd);
  r.fwd_ms_min = *std::min_element(fwd.begin(), fwd.end());
  r.fwd_bwd_ms = median(fwd_bwd);
  r.fwd_bwd_ms_min = *std::min_element(fwd_bwd.begin(), fwd_bwd.end());
  r.flops_fwd = layer.expert_flops(r.stats, o.tokens);
  r.peak_rss_mb = peak_rss_mb();
  return r;
}

// GFLOP/s for `flops` in `ms` milliseconds (0 when nothing was timed).
double gflops(double flops, double ms) { return ms > 0 ? flops / (ms * 1e6) : 0.0; }

void print_json(const BenchLayerOptions& o, const BenchLayerResult& r) {
  nlohmann::ordered_json j;
  j["command"] = "bench layer";
  j["version"] = MOE_VERSION;
  j["dtype"] = "f32";
  j["backend"] = o.backend;
  j["threads"] = r.threads;
  j["tokens"] = o.tokens;
  j["d_model"] = o.d_model;
  j["d_ff"] = o.d_ff;
  j["experts"] = o.experts;
  j["top_k"] = o.top_k;
  j["shared_experts"] = o.shared_experts;
  j["router"] = o.router;
  j["activation"] = o.activation;
  j["capacity_factor"] = o.capacity_factor;
  j["warmup"] = o.warmup;
  j["iters"] = o.iters;
  j["seed"] = o.seed;
  j["fwd_ms"] = round_to(r.fwd_ms, 6);
  j["fwd_ms_min"] = round_to(r.fwd_ms_min, 6);
  j["fwd_bwd_ms"] = round_to(r.fwd_bwd_ms, 6);
  j["fwd_bwd_ms_min"] = round_to(r.fwd_bwd_ms_min, 6);
  j["flops_fwd"] = r.flops_fwd;
  j["flops_fwd_bwd"] = 3.0 * r.flops_fwd;
  j["gflops_fwd"] = round_sig(gflops(r.flops_fwd, r.fwd_ms), 5);
  j["gflops_fwd_bwd"] = round_sig(gflops(3.0 * r.flops_fwd, r.fwd_bwd_ms), 5);
  j["imbalance"] = round_to(r.stats.imbalance, 4);
  j["dropped"] = r.stats.dropped;
  j["tokens_per_expert"] = r.stats.tokens_per_expert;
  j["peak_rss_mb"] = round_to(r.peak_rss_mb, 1);
  std::cout << j.dump() << std::endl;
}

void print_table(const BenchLayerOptions& o, const BenchLayerResult& r) {
  std::printf("moe bench layer: f32, backend %s, %d thread%s, median of %d (after %d warmup)\n",
              o.backend.c_str(), r.threads, r.threads == 1 ? "" : "s", o.iters, o.warmup);
  std::printf("  shape       tokens %lld  d_model %lld  d_ff %lld  experts %lld  top_k %d  shared %lld\n",
              static_cast<long long>(o.tokens), static_cast<long long>(o.d_model),
              static_cast<long long>(o.d_ff), static_cast<long long>(o.experts), o.top_k,
              static_cast<long long>(o.shared_experts));
  std::printf("  router      %s, %s, capacity factor %g%s\n", o.router.c_str(), o.activation.c_str(),
              o.capacity_factor, o.capacity_factor == 0.0 ? " (dropless)" : "");
  std::printf("\n  %-12s %12s %12s %14s\n", "pass", "median ms", "min ms", "expert GFLOP/s");
  std::printf("  %-12s %12.3f %12.3f %14.2f\n", "forward", r.fwd_ms, r.fwd_ms_min,
              gflops(r.flops_fwd, r.fwd_ms));
  std::printf("  %-12s %12.3f %12.3f %14.2f\n\n", "fwd+bwd", r.fwd_bwd_ms, r.fwd_bwd_ms_min,
              gflops(3.0 * r.flops_fwd, r.fwd_bwd_ms));
  std::printf("  expert FLOPs  %.4g forward, %.4g forward+backward\n", r.flops_fwd, 3.0 * r.flops_fwd);
  std::printf("  imbalance     %.3f (max/mean tokens per expert), %lld dropped\n", r.stats.imbalance,
              static_cast<long long>(r.stats.dropped));
  std::printf("  per expert   ");
  for (int64_t n : r.stats.tokens_per_expert) std::printf(" %lld", static_cast<long long>(n));
  std::printf("\n  peak RSS      %.1f MiB\n", r.peak_rss_mb);
}

int run_bench_layer(const BenchLayerOptions& o) {
  check_options(o);
  const BenchLayerResult r = bench(o);
  if (o.json) {
    print_json(o, r);
  } else {
    print_table(o, r);
  }
  return kExitOk;
}

void add_bench_layer(CLI::App& bench_app, Registry& reg) {
  auto opts = std::make_shared<BenchLayerOptions>();
  CLI::App* sub = bench_app.add_subcommand(
      "layer", "Time one MoE layer (f32) forward and forward+backward on random inputs");
  sub->add_option("--tokens", opts->tokens, "Tokens T in the batch (>= 1)")->capture_default_str();
  sub->add_option("--d-model", opts->d_model, "Model width d")->capture_default_str();
  sub->add_option("--d-ff", opts->d_ff, "Width of each routed expert")->capture_default_str();
  sub->add_option("--experts", opts->experts, "Routed experts E")->capture_default_str();
  sub->add_option("--top-k", opts->top_k, "Experts per token k (1 <= k <= E)")->capture_default_str();
  sub->add_option("--shared-experts", opts->shared_experts, "Shared experts (each of width d_ff)")
      ->capture_default_str();
  sub->add_option("--router", opts->router, "Router scoring")
      ->check(CLI::IsMember({"softmax", "sigmoid"}))
      ->capture_default_str();
  sub->add_option("--activation", opts->activation, "Expert activation")
      ->check(CLI::IsMember({"swiglu", "gelu", "relu", "silu"}))
      ->capture_default_str();
  sub->add_option("--capacity-factor", opts->capacity_factor, "Capacity factor (0 = dropless)")
      ->capture_default_str();
  sub->add_option("--threads", opts->threads, "CPU threads (0 = OpenMP default)")->capture_default_str();
  sub->add_option("--warmup", opts->warmup, "Untimed runs before timing")->capture_default_str();
  sub->add_option("--iters", opts->iters, "Timed runs; the median is reported")->capture_default_str();
  sub->add_option("--backend", opts->backend, "Kernel backend")
      ->check(CLI::IsMember({"ref", "cpu"}))
      ->capture_default_str();
  sub->add_option("--seed", opts->seed, "Seed of the parameters and inputs")->capture_default_str();
  sub->add_flag("--json", opts->json, "Print one JSON object instead of a table");
  sub->footer(
      "Prints median forward and forward+backward times, expert-matmul GFLOP/s (forward+backward counts\n"
      "3x the forward FLOPs), tokens per expert and peak RSS. --tokens 0 is rejected (exit 2).");
  sub->callback([&reg, opts] { reg.action = [opts] { return run_bench_layer(*opts); }; });
}

}  // namespace

void register_bench(CLI::App& app, Registry& reg) {
  CLI::App* bench_app = app.add_subcommand("bench", "Benchmarks");
  bench_app->require_subcommand(1);
  add_bench_layer(*bench_app, reg);
}

}  // namespace moe::cli
