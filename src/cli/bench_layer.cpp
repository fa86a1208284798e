// `moe bench layer`: times one MoE layer (f32) forward and forward+backward on random inputs and
// prints the median times, the achieved expert-matmul GFLOP/s, the routing balance and memory, next
// to the dense f32 GEMM rate of this machine measured in the same process.
//
// FLOPs counted: the expert matmuls only (MoELayer::expert_flops over the kept assignments, routed
// and shared experts) for the forward; three times that for forward+backward (backward = 2x).
// Router GEMM, softmax, sorting and combine are in the time but not in the FLOP count.
//
// Dense ceiling: kernels::gemm (cpu backend) on the same FLOPs in the expert layout (bench_dense.h):
// M = FLOPs / (mats · 2·d_ff·d) rows (= T·k + T·shared width/d_ff), N = d_ff, K = d_model for gate
// and up, N = d_model, K = d_ff for down; the best of --dense-reps reps.
//
// Activation memory (act_peak_mb): glibc's mmap threshold is fixed at 128 KiB first, so the resident
// set follows live memory. The gradients (dx and every parameter's) are kept from pass to pass, as
// a training loop keeps them (MoELayer::backward_into adds into them; PyTorch's .grad tensors in
// bench/torch_moe_block.py are kept the same way). After the parameters, x, dy and the gradients
// exist (one untimed forward+backward has allocated and written the gradients, and freed the
// rest), the peak (VmHWM) is reset and one more forward+backward runs:
//   fwd_peak_mb     = VmHWM after its forward - VmRSS before it
//   fwd_bwd_peak_mb = VmHWM after its backward - VmRSS before it
//   act_peak_mb     = max(fwd_peak_mb, fwd_bwd_peak_mb)
// what forward+backward needs beyond parameters, inputs (x, dy) and gradients (grads_mb is their
// size, for reference): the quantity bench/torch_moe_block.py measures. The tensor cache
// (moe/core/tensor.h) is emptied before that pass, so buffers it keeps count only when the pass
// itself keeps them; the timed passes run with the cache warm, as steps of a training loop do.

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/bench_dense.h"
#include "cli/bench_memory.h"
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
  std::string weights = "f32";  // f32 | bf16 (inference path, forward only) | bf16-compute (training)
  int dense_reps = 3;           // 0: skip the dense GEMM ceiling
};

struct BenchLayerResult {
  double fwd_ms = 0, fwd_ms_min = 0, fwd_bwd_ms = 0, fwd_bwd_ms_min = 0;
  double flops_fwd = 0;
  MoEStats stats;
  int threads = 0;
  double peak_rss_mb = 0;
  // Memory of one forward+backward (see the top of this file), MiB.
  double fwd_peak_mb = 0, fwd_bwd_peak_mb = 0, act_peak_mb = 0, grads_mb = 0, rss_before_mb = 0;
  bool peak_reset = false;  // /proc/self/clear_refs worked; otherwise VmHWM is the process peak
  bool mmap_threshold_fixed = false;
  // Dense GEMM ceiling (dense_reps > 0).
  bool dense = false;
  int64_t dense_m = 0, dense_n = 0, dense_k = 0;
  DenseGemmResult dense_r;
  // --weights bf16 / bf16-compute: the same forward (and forward+backward) in f32, timed in the same run.
  double f32_fwd_ms = 0, f32_fwd_bwd_ms = 0;
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
  MOE_CHECK(o.dense_reps >= 0, "--dense-reps must be >= 0 (0 skips the dense GEMM), got ", o.dense_reps);
}

// Bytes of every gradient tensor that backward returned (dx and each parameter's).
double grads_bytes(const MoEGrads& g) {
  double b = 0;
  for (const Tensor* t : {&g.dx, &g.router_w, &g.w_gate, &g.w_up, &g.w_down, &g.shared_w_gate, &g.shared_w_up,
                          &g.shared_w_down, &g.shared_gate_w}) {
    if (t->defined()) b += static_cast<double>(t->nbytes());
  }
  return b;
}

// One untimed forward+backward, then the measured one (see the top of this file).
void measure_memory(const MoELayer& layer, const Tensor& x, const Tensor& dy, BenchLayerResult& r) {
  const bool train = !layer.has_bf16_expert_weights();  // the bf16 path is forward only
  MoEGrads grads;  // kept from pass to pass; the untimed pass allocates and writes them
  {
    MoEForward f = layer.forward(x);
    if (train) layer.backward_into(f, dy, grads);
  }
  // Buffers the untimed pass left in the tensor cache go back first, so the measured pass's own
  // allocations (and whatever of them it keeps cached while others are live) count in its peak.
  tensor_cache_release();
  r.peak_reset = reset_peak_rss();
  r.rss_before_mb = current_rss_mib();
  double hwm_fwd = 0;
  {
    MoEForward f = layer.forward(x);
    hwm_fwd = peak_rss_hwm_mib();
    if (train) layer.backward_into(f, dy, grads);
  }
  // A peak cannot fall, but Linux's VmHWM can read lower than a moment before: each thread batches its
  // resident-page counts (up to 64 pages) before the process total sees them, and tiny layers move
  // less than that. The peak after backward is at least the one after forward.
  const double hwm_read = peak_rss_hwm_mib();  // < 0: not readable
  const double hwm = hwm_read < 0 ? hwm_read : std::max(hwm_read, hwm_fwd);
  r.grads_mb = grads_bytes(grads) / (1024.0 * 1024.0);
  if (hwm >= 0 && hwm_fwd >= 0 && r.rss_before_mb >= 0) {
    r.fwd_peak_mb = std::max(0.0, hwm_fwd - r.rss_before_mb);
    r.fwd_bwd_peak_mb = std::max(0.0, hwm - r.rss_before_mb);
    r.act_peak_mb = std::max(r.fwd_peak_mb, r.fwd_bwd_peak_mb);
  }
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
  apply_threads(o.threads);

  MoELayer layer(cfg, DType::F32, backend);
  layer.init_params(o.seed);
  const bool bf16 = o.weights == "bf16", bf16_compute = o.weights == "bf16-compute";
  if (bf16) layer.set_bf16_expert_weights(true);
  if (bf16_compute) layer.set_bf16_compute(true);
  const Rng rng(o.seed);
  Tensor x = Tensor::empty({o.tokens, o.d_model}, DType::F32, "x");    // (T, d)
  Tensor dy = Tensor::empty({o.tokens, o.d_model}, DType::F32, "dy");  // (T, d)
  rng.fork(1).fill_normal(x, 0.0, 1.0);
  rng.fork(2).fill_normal(dy, 0.0, 1.0);

  BenchLayerResult r;
  r.threads = num_threads();

  // Memory first, while the process peak is still this layer's (matters only when the peak cannot
  // be reset).
  measure_memory(layer, x, dy, r);

  // Forward only. Routing is deterministic, so every iteration has the same statistics.
  for (int i = 0; i < o.warmup; ++i) (void)layer.forward(x);
  std::vector<double> fwd;
  for (int i = 0; i < o.iters; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    MoEForward f = layer.forward(x);
    fwd.push_back(ms_since(t0));
    if (i == 0) r.stats = f.stats;
  }

  r.fwd_ms = median(fwd);
  r.fwd_ms_min = *std::min_element(fwd.begin(), fwd.end());

  if (bf16) {
    // bf16 weights are an inference path (no backward); time the f32 forward beside it instead.
    layer.set_bf16_expert_weights(false);
    for (int i = 0; i < o.warmup; ++i) (void)layer.forward(x);
    std::vector<double> f32;
    for (int i = 0; i < o.iters; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      (void)layer.forward(x);
      f32.push_back(ms_since(t0));
    }
    r.f32_fwd_ms = median(f32);
  } else {
    // Forward + backward, accumulating into gradients kept from step to step (as a training loop
    // keeps its parameters' gradients; the PyTorch block keeps its .grad tensors the same way).
    MoEGrads grads;
    for (int i = 0; i < o.warmup; ++i) {
      MoEForward f = layer.forward(x);
      layer.backward_into(f, dy, grads);
    }
    std::vector<double> fwd_bwd;
    for (int i = 0; i < o.iters; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      MoEForward f = layer.forward(x);
      layer.backward_into(f, dy, grads);
      fwd_bwd.push_back(ms_since(t0));
    }
    r.fwd_bwd_ms = median(fwd_bwd);
    r.fwd_bwd_ms_min = *std::min_element(fwd_bwd.begin(), fwd_bwd.end());
    if (bf16_compute) {  // the f32 forward and forward+backward beside it
      layer.set_bf16_compute(false);
      for (int i = 0; i < o.warmup; ++i) {
        MoEForward f = layer.forward(x);
        layer.backward_into(f, dy, grads);
      }
      std::vector<double> f32, f32_bwd;
      for (int i = 0; i < o.iters; ++i) {
        const auto t0 = std::chrono::steady_clock::now();
        MoEForward f = layer.forward(x);
        f32.push_back(ms_since(t0));
        layer.backward_into(f, dy, grads);
        f32_bwd.push_back(ms_since(t0));
      }
      r.f32_fwd_ms = median(f32);
      r.f32_fwd_bwd_ms = median(f32_bwd);
    }
  }
  r.flops_fwd = layer.expert_flops(r.stats, o.tokens);
  r.peak_rss_mb = peak_rss_mb();

  // Dense ceiling on the same FLOPs, after the layer's buffers are freed.
  if (o.dense_reps > 0) {
    const int mats = kernels::Activation::SwiGLU == cfg.activation ? 3 : 2;
    const double per_row = 2.0 * static_cast<double>(o.d_ff) * static_cast<double>(o.d_model) * mats;
    DenseGemmSpec spec;
    spec.rows = std::max<int64_t>(1, std::llround(r.flops_fwd / per_row));
    spec.F = o.d_ff;
    spec.d = o.d_model;
    spec.mats = mats;
    spec.reps = o.dense_reps;
    spec.backend = kernels::Backend::Cpu;
    spec.seed = o.seed;
    r.dense = true;
    r.dense_m = spec.rows;
    r.dense_n = o.d_ff;
    r.dense_k = o.d_model;
    r.dense_r = measure_dense_gemm(spec);
  }
  return r;
}

// GFLOP/s for `flops` in `ms` milliseconds (0 when nothing was timed).
double gflops(double flops, double ms) { return ms > 0 ? flops / (ms * 1e6) : 0.0; }

// rate / dense rate (0 when there is no dense rate).
double vs_dense(const BenchLayerResult& r, double rate) {
  return r.dense && r.dense_r.gflops_best > 0 ? rate / r.dense_r.gflops_best : 0.0;
}

void print_json(const BenchLayerOptions& o, const BenchLayerResult& r) {
  nlohmann::ordered_json j;
  j["command"] = "bench layer";
  j["version"] = MOE_VERSION;
  j["dtype"] = "f32";
  j["weights"] = o.weights;
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
  j["act_peak_mb"] = round_to(r.act_peak_mb, 1);
  j["fwd_peak_mb"] = round_to(r.fwd_peak_mb, 1);
  j["fwd_bwd_peak_mb"] = round_to(r.fwd_bwd_peak_mb, 1);
  j["grads_mb"] = round_to(r.grads_mb, 1);
  j["rss_before_mb"] = round_to(r.rss_before_mb, 1);
  j["peak_reset"] = r.peak_reset;
  j["mmap_threshold_fixed"] = r.mmap_threshold_fixed;
  const double g_fwd = gflops(r.flops_fwd, r.fwd_ms), g_fwd_bwd = gflops(3.0 * r.flops_fwd, r.fwd_bwd_ms);
  if (o.weights == "bf16") {
    // No backward on bf16 weights: forward+backward fields are null; the f32 forward is beside it.
    for (const char* k :
         {"fwd_bwd_ms", "fwd_bwd_ms_min", "flops_fwd_bwd", "gflops_fwd_bwd", "fwd_bwd_peak_mb", "grads_mb"})
      j[k] = nullptr;
    j["f32_fwd_ms"] = round_to(r.f32_fwd_ms, 6);
    j["f32_gflops_fwd"] = round_sig(gflops(r.flops_fwd, r.f32_fwd_ms), 5);
    j["bf16_vs_f32_fwd"] = round_to(r.fwd_ms > 0 ? r.f32_fwd_ms / r.fwd_ms : 0.0, 4);
  }
  if (o.weights == "bf16-compute") {
    j["f32_fwd_ms"] = round_to(r.f32_fwd_ms, 6);
    j["f32_fwd_bwd_ms"] = round_to(r.f32_fwd_bwd_ms, 6);
    j["bf16_vs_f32_fwd"] = round_to(r.fwd_ms > 0 ? r.f32_fwd_ms / r.fwd_ms : 0.0, 4);
    j["bf16_vs_f32_fwd_bwd"] = round_to(r.fwd_bwd_ms > 0 ? r.f32_fwd_bwd_ms / r.fwd_bwd_ms : 0.0, 4);
  }
  if (r.dense) {
    j["dense_backend"] = "cpu";
    j["dense_m"] = r.dense_m;
    j["dense_n"] = r.dense_n;
    j["dense_k"] = r.dense_k;
    j["dense_reps"] = o.dense_reps;
    j["dense_flops"] = r.dense_r.flops;
    j["dense_ms_best"] = round_to(r.dense_r.best_ms, 6);
    j["dense_gflops"] = round_sig(r.dense_r.gflops_best, 5);
    j["dense_gflops_median"] = round_sig(r.dense_r.gflops_median, 5);
    j["fwd_vs_dense"] = round_to(vs_dense(r, g_fwd), 4);
    if (o.weights == "bf16") {
      j["fwd_bwd_vs_dense"] = nullptr;
    } else {
      j["fwd_bwd_vs_dense"] = round_to(vs_dense(r, g_fwd_bwd), 4);
    }
  } else {
    j["dense_gflops"] = nullptr;
    j["fwd_vs_dense"] = nullptr;
    j["fwd_bwd_vs_dense"] = nullptr;
  }
  std::cout << j.dump() << std::endl;
}

void print_table(const BenchLayerOptions& o, const BenchLayerResult& r) {
  std::printf(
      "moe bench layer: f32 activations, %s expert weights, backend %s, %d thread%s, median of %d "
      "(after %d warmup)\n",
      o.weights.c_str(), o.backend.c_str(), r.threads, r.threads == 1 ? "" : "s", o.iters, o.warmup);
  std::printf("  shape       tokens %lld  d_model %lld  d_ff %lld  experts %lld  top_k %d  shared %lld\n",
              static_cast<long long>(o.tokens), static_cast<long long>(o.d_model),
              static_cast<long long>(o.d_ff), static_cast<long long>(o.experts), o.top_k,
              static_cast<long long>(o.shared_experts));
  std::printf("  router      %s, %s, capacity factor %g%s\n", o.router.c_str(), o.activation.c_str(),
              o.capacity_factor, o.capacity_factor == 0.0 ? " (dropless)" : "");
  const double g_fwd = gflops(r.flops_fwd, r.fwd_ms), g_fwd_bwd = gflops(3.0 * r.flops_fwd, r.fwd_bwd_ms);
  std::printf("\n  %-12s %12s %12s %14s %10s\n", "pass", "median ms", "min ms", "expert GFLOP/s", "vs dense");
  auto ratio = [&](double rate) {
    char buf[32];
    if (r.dense) {
      std::snprintf(buf, sizeof buf, "%.3f", vs_dense(r, rate));
    } else {
      std::snprintf(buf, sizeof buf, "-");
    }
    return std::string(buf);
  };
  std::printf("  %-12s %12.3f %12.3f %14.2f %10s\n", "forward", r.fwd_ms, r.fwd_ms_min, g_fwd,
              ratio(g_fwd).c_str());
  if (o.weights == "bf16") {
    std::printf("  %-12s %12.3f %12s %14.2f %10s   (bf16 forward is %.2fx the f32 forward)\n", "f32 forward",
                r.f32_fwd_ms, "-", gflops(r.flops_fwd, r.f32_fwd_ms),
                ratio(gflops(r.flops_fwd, r.f32_fwd_ms)).c_str(),
                r.fwd_ms > 0 ? r.f32_fwd_ms / r.fwd_ms : 0.0);
  } else {
    std::printf("  %-12s %12.3f %12.3f %14.2f %10s\n", "fwd+bwd", r.fwd_bwd_ms, r.fwd_bwd_ms_min, g_fwd_bwd,
                ratio(g_fwd_bwd).c_str());
  }
  if (r.dense) {
    std::printf("  %-12s %12.3f %12.3f %14.2f %10s\n\n", "dense GEMM", r.dense_r.median_ms, r.dense_r.best_ms,
                r.dense_r.gflops_best, "1");
    std::printf(
        "  dense GEMM    kernels::gemm (cpu), M %lld  N %lld  K %lld in the expert layout, best of %d "
        "(its rate is the best rep's)\n",
        static_cast<long long>(r.dense_m), static_cast<long long>(r.dense_n),
        static_cast<long long>(r.dense_k), o.dense_reps);
  } else {
    std::printf("\n  dense GEMM    skipped (--dense-reps 0)\n");
  }
  std::printf("  expert FLOPs  %.4g forward, %.4g forward+backward\n", r.flops_fwd, 3.0 * r.flops_fwd);
  std::printf("  imbalance     %.3f (max/mean tokens per expert), %lld dropped\n", r.stats.imbalance,
              static_cast<long long>(r.stats.dropped));
  std::printf("  per expert   ");
  for (int64_t n : r.stats.tokens_per_expert) std::printf(" %lld", static_cast<long long>(n));
  std::printf(
      "\n  act memory    %.1f MiB forward+backward beyond params, x, dy and gradients "
      "(forward %.1f MiB, backward %.1f MiB; gradients kept between passes %.1f MiB)%s\n",
      r.act_peak_mb, r.fwd_peak_mb, r.fwd_bwd_peak_mb, r.grads_mb,
      r.peak_reset ? "" : "; peak not resettable: upper bound");
  std::printf("  peak RSS      %.1f MiB\n", r.peak_rss_mb);
}

int run_bench_layer(const BenchLayerOptions& o) {
  check_options(o);
  // Before any allocation of the benchmark: freed large buffers go back to the OS, so the resident
  // set measures live memory (act_peak_mb). Timings run under the same setting.
  const bool fixed = fix_mmap_threshold(kBenchMmapThreshold);
  BenchLayerResult r = bench(o);
  r.mmap_threshold_fixed = fixed;
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
  sub->add_option("--tokens", opts->tokens, "Tokens T in the batch (>= 1)")
      ->check(in_range(1, kMaxTokensFlag))
      ->capture_default_str();
  sub->add_option("--d-model", opts->d_model, "Model width d")
      ->check(in_range(1, 1 << 16))
      ->capture_default_str();
  sub->add_option("--d-ff", opts->d_ff, "Width of each routed expert")
      ->check(in_range(1, 1 << 18))
      ->capture_default_str();
  sub->add_option("--experts", opts->experts, "Routed experts E")
      ->check(in_range(1, 1 << 14))
      ->capture_default_str();
  sub->add_option("--top-k", opts->top_k, "Experts per token k (1 <= k <= E)")
      ->check(in_range(1, 1 << 14))
      ->capture_default_str();
  sub->add_option("--shared-experts", opts->shared_experts, "Shared experts (each of width d_ff)")
      ->check(in_range(0, 64))
      ->capture_default_str();
  sub->add_option("--router", opts->router, "Router scoring")
      ->check(CLI::IsMember({"softmax", "sigmoid"}))
      ->capture_default_str();
  sub->add_option("--activation", opts->activation, "Expert activation")
      ->check(CLI::IsMember({"swiglu", "gelu", "relu", "silu"}))
      ->capture_default_str();
  sub->add_option("--capacity-factor", opts->capacity_factor, "Capacity factor (0 = dropless)")
      ->check(in_range(0, 1024))
      ->capture_default_str();
  add_threads_flag(sub, opts->threads);
  sub->add_option("--warmup", opts->warmup, "Untimed runs before timing")
      ->check(in_range(0, kMaxRepsFlag))
      ->capture_default_str();
  sub->add_option("--iters", opts->iters, "Timed runs; the median is reported")
      ->check(in_range(1, kMaxRepsFlag))
      ->capture_default_str();
  sub->add_option("--backend", opts->backend, "Kernel backend")
      ->check(CLI::IsMember({"ref", "cpu"}))
      ->capture_default_str();
  add_seed_flag(sub, opts->seed, "the parameters and inputs");
  sub->add_option(
         "--weights", opts->weights,
         "Expert weights: f32; bf16 (inference copies, forward only; the f32 forward is timed beside it); "
         "bf16-compute (training: forward and input-gradient GEMMs on bf16 copies, f32 weight gradients; "
         "the f32 forward and forward+backward are timed beside it)")
      ->check(CLI::IsMember({"f32", "bf16", "bf16-compute"}))
      ->capture_default_str();
  sub->add_option("--dense-reps", opts->dense_reps,
                  "Timed reps of the dense GEMM ceiling, best one reported (0 = skip)")
      ->check(in_range(0, kMaxRepsFlag))
      ->capture_default_str();
  add_json_flag(sub, opts->json, "Print one JSON object instead of a table");
  sub->footer(
      "Prints median forward and forward+backward times, expert-matmul GFLOP/s (forward+backward counts\n"
      "3x the forward FLOPs), tokens per expert and peak RSS. --tokens 0 is rejected (exit 2).\n"
      "\n"
      "Dense ceiling (dense_gflops): kernels::gemm (cpu backend) in the same process on the same FLOPs in\n"
      "the expert layout: M = T*k (+ T per shared expert) rows, N = d_ff, K = d_model (gate, up) and\n"
      "N = d_model, K = d_ff (down); best of --dense-reps. fwd_vs_dense and fwd_bwd_vs_dense are the\n"
      "layer's median expert GFLOP/s over it.\n"
      "\n"
      "Memory: glibc's mmap threshold is fixed at 128 KiB, so freed buffers leave the resident set.\n"
      "Gradients (dx and every parameter's, grads_mb) are kept from pass to pass, as a training loop\n"
      "keeps them. After params, x, dy and one untimed forward+backward (which writes the gradients),\n"
      "the peak (VmHWM) is reset through /proc/self/clear_refs and one forward+backward runs; against\n"
      "VmRSS before it: fwd_peak_mb = VmHWM after forward - before, fwd_bwd_peak_mb = VmHWM after\n"
      "backward - before, act_peak_mb = the larger: the memory forward+backward needs beyond\n"
      "parameters, inputs (x, dy) and gradients. The tensor cache (freed buffers >= 1 MiB kept for\n"
      "reuse, MOE_TENSOR_CACHE_MB) is emptied before that pass and warm in the timed ones.\n"
      "When the peak cannot be reset (peak_reset false) both are upper bounds. peak_rss_mb is the\n"
      "resident peak (getrusage), which Linux resets with VmHWM: the peak from that pass on (timed\n"
      "passes and dense GEMM included). Timings run under the same malloc setting. MiB throughout.\n"
      "\n"
      "--weights bf16 rounds the expert weights to bf16 (inference path): forward only, timed beside the "
      "f32\n"
      "forward of the same layer (f32_fwd_ms, bf16_vs_f32_fwd); forward+backward fields are null.");
  sub->callback([&reg, opts] { reg.action = [opts] { return run_bench_layer(*opts); }; });
}

}  // namespace

void register_bench(CLI::App& app, Registry& reg) {
  CLI::App* bench_app = app.add_subcommand("bench", "Benchmarks");
  bench_app->require_subcommand(1);
  add_bench_layer(*bench_app, reg);
  add_bench_train(*bench_app, reg);
  add_bench_generate(*bench_app, reg);
  add_bench_offload(*bench_app, reg);
  add_bench_quant(*bench_app, reg);
  add_bench_alltoall(*bench_app, reg);
  add_bench_ep(*bench_app, reg);
}

}  // namespace moe::cli
