// `moe bench ep [--tokens 1024] [--d-model 512] [--d-ff 512] [--experts 16] [--top-k 2]
//  [--chunks 1,2,4] [--iters 5] [--warmup 1] [--timeout S] [--json]`: one expert-parallel MoE layer
// (forward + backward, f32) under mpirun, every rank holding E / ranks experts and routing its own
// `--tokens` tokens.
//
// Per chunk count (ExpertParallel::chunks, the overlap of one chunk's exchange with another's
// compute; 0 = the single-process layer without a dispatcher exchange, one rank only) the ranks run `warmup`
// untimed steps, then `iters` timed ones, each between barriers; reported: the median over steps of the
// slowest rank's time, the layer's tokens/s over all ranks and its expert GFLOP/s, the all-to-all's share of
// the step, and the bytes each rank sent to the others per step, next to the bytes the cost model of `moe
// plan` (dist::dispatch_bytes) gives for the same routing: four exchanges of d-wide rows (dispatch, combine,
// dy, dx), two of one value per row (the routing weights and their gradients) and the row counts, E/ranks
// int64 to every rank (once per chunk). Configurations alternate within each iteration so that all see the
// same machine state.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli/common.h"
#include "moe/core/error.h"
#include "moe/core/parallel.h"
#include "moe/core/rng.h"
#include "moe/dist/comm.h"
#include "moe/dist/plan.h"
#include "moe/moe/layer.h"

namespace moe::cli {
namespace {

struct BenchEpOptions {
  int64_t tokens = 1024, d_model = 512, d_ff = 512, experts = 16;
  int top_k = 2;
  std::vector<int> chunks{1, 2, 4};
  int iters = 5, warmup = 1, threads = 0;
  double timeout = 120;
  bool json = false;
};

struct Config {
  int chunks = 1;
  std::unique_ptr<MoELayer> layer;
  std::vector<double> step_s, a2a_s;
  int64_t bytes_sent = 0;       // per step, this rank (measured by the communicator)
  int64_t bytes_predicted = 0;  // per step, this rank (cost model on the measured routing)
  double flops = 0;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

int run(const BenchEpOptions& o) {
  MOE_CHECK(o.tokens >= 0 && o.d_model >= 1 && o.d_ff >= 1 && o.experts >= 1,
            "bench ep: sizes must be positive");
  MOE_CHECK(o.top_k >= 1 && o.top_k <= o.experts, "bench ep: --top-k must be in [1, --experts]");
  MOE_CHECK(o.iters >= 1 && o.warmup >= 0, "bench ep: --iters must be >= 1 and --warmup >= 0");
  for (int c : o.chunks) MOE_CHECK(c >= 0, "bench ep: --chunks values must be >= 0, got ", c);
  apply_threads(o.threads);
  std::shared_ptr<dist::Communicator> world =
      dist::launched_by_mpi() ? dist::mpi_world()
                              : std::shared_ptr<dist::Communicator>(dist::self_communicator());
  world->set_timeout(o.timeout);
  const int R = world->size(), me = world->rank();
  MOE_CHECK(o.experts % R == 0, "bench ep: --experts ", o.experts, " must be a multiple of the ranks (", R,
            ")");

  MoEConfig cfg;
  cfg.d_model = o.d_model;
  cfg.d_ff = o.d_ff;
  cfg.n_experts = o.experts;
  cfg.router.top_k = o.top_k;
  Tensor x = Tensor::empty({o.tokens, o.d_model}, DType::F32, "x");
  Rng(100 + me).fill_normal(x, 0.0, 1.0);
  Tensor dy = Tensor::empty({o.tokens, o.d_model}, DType::F32, "dy");
  Rng(200 + me).fill_normal(dy, 0.0, 1.0);

  std::vector<Config> cfgs;
  for (int c : o.chunks) {
    Config k;
    k.chunks = c;
    MOE_CHECK(c > 0 || R == 1, "bench ep: --chunks 0 (the single-process layer) needs one rank");
    k.layer = std::make_unique<MoELayer>(cfg, DType::F32, kernels::Backend::Cpu, false,
                                         c == 0 ? ExpertParallel{} : ExpertParallel{world, c});
    k.layer->init_params(7);
    cfgs.push_back(std::move(k));
  }
  using Clock = std::chrono::steady_clock;
  for (int it = 0; it < o.warmup + o.iters; ++it) {
    for (Config& k : cfgs) {
      world->barrier();
      world->reset_stats();
      const auto t0 = Clock::now();
      const MoEForward f = k.layer->forward(x);
      k.layer->backward(f, dy);
      double t = std::chrono::duration<double>(Clock::now() - t0).count();
      const dist::CommStats st = world->stats();
      double a2a = st.alltoall_s;
      world->allreduce(&t, 1, DType::F64, dist::ReduceOp::Max);
      world->allreduce(&a2a, 1, DType::F64, dist::ReduceOp::Max);
      if (it < o.warmup) continue;
      k.step_s.push_back(t);
      k.a2a_s.push_back(a2a);
      k.bytes_sent = st.alltoall_bytes_sent;
      // The cost model on this step's routing: counts[s · E + e] over all ranks.
      std::vector<int64_t> counts(static_cast<size_t>(R * o.experts), 0);
      for (int64_t e = 0; e < o.experts; ++e) counts[me * o.experts + e] = f.stats.tokens_per_expert[e];
      world->allreduce(counts.data(), static_cast<int64_t>(counts.size()), DType::I64, dist::ReduceOp::Sum);
      // One value per row (routing weights out, their gradients back); a token row is d of them
      // (dispatch and dy rows out, combine and dx rows back); the counts go once per chunk.
      const dist::DispatchBytes one = dist::dispatch_bytes({R, o.experts, 1, 4}, counts);
      const int64_t count_bytes = int64_t{k.chunks} * (R - 1) * (o.experts / R) * 8;
      k.bytes_predicted = (2 * o.d_model + 1) * (one.sent[me] + one.received[me]) + count_bytes;
      double fl = k.layer->expert_flops(f.stats, o.tokens) * 3.0;  // forward + backward (2x)
      world->allreduce(&fl, 1, DType::F64, dist::ReduceOp::Sum);
      k.flops = fl;
    }
  }
  if (me != 0) return kExitOk;
  nlohmann::json rows = nlohmann::json::array();
  for (const Config& k : cfgs) {
    const double t = median(k.step_s), a = median(k.a2a_s);
    rows.push_back({{"chunks", k.chunks},
                    {"step_ms", t * 1e3},
                    {"tokens_per_s", static_cast<double>(o.tokens) * R / t},
                    {"expert_gflops", k.flops / t / 1e9},
                    {"alltoall_ms", a * 1e3},
                    {"bytes_sent_rank0", k.bytes_sent},
                    {"bytes_predicted_rank0", k.bytes_predicted},
                    {"bytes_match", k.bytes_sent == k.bytes_predicted}});
  }
  const double base = median(cfgs.front().step_s);
  if (o.json) {
    std::cout << nlohmann::json({{"ranks", R},
                                 {"tokens_per_rank", o.tokens},
                                 {"d_model", o.d_model},
                                 {"d_ff", o.d_ff},
                                 {"experts", o.experts},
                                 {"top_k", o.top_k},
                                 {"threads", num_threads()},
                                 {"rows", rows}})
                     .dump()
              << "\n";
    return kExitOk;
  }
  std::printf(
      "expert-parallel MoE layer, forward + backward f32: %d ranks x %lld tokens, d %lld, d_ff %lld, %lld "
      "experts top-%d, %d threads per rank\n",
      R, (long long)o.tokens, (long long)o.d_model, (long long)o.d_ff, (long long)o.experts, o.top_k,
      num_threads());
  std::printf("%7s %10s %12s %10s %12s %9s %16s %16s\n", "chunks", "step ms", "tokens/s", "GFLOP/s",
              "all2all ms", "speed-up", "bytes sent r0", "cost model r0");
  for (size_t i = 0; i < cfgs.size(); ++i) {
    const auto& r = rows[i];
    std::printf("%7s %10.2f %12.0f %10.2f %12.2f %8.2fx %16lld %16lld\n",
                cfgs[i].chunks == 0 ? "local" : std::to_string(cfgs[i].chunks).c_str(),
                r["step_ms"].get<double>(), r["tokens_per_s"].get<double>(), r["expert_gflops"].get<double>(),
                r["alltoall_ms"].get<double>(), base / median(cfgs[i].step_s), (long long)cfgs[i].bytes_sent,
                (long long)cfgs[i].bytes_predicted);
  }
  return kExitOk;
}

}  // namespace

void add_bench_ep(CLI::App& bench, Registry& reg) {
  auto o = std::make_shared<BenchEpOptions>();
  CLI::App* c = bench.add_subcommand("ep",
                                     "One expert-parallel MoE layer (forward + backward) under mpirun: step "
                                     "time, overlap chunks, all-to-all bytes against the cost model");
  c->add_option("--tokens", o->tokens, "Tokens per rank")
      ->check(in_range(1, kMaxTokensFlag))
      ->capture_default_str();
  c->add_option("--d-model", o->d_model, "Hidden size")->check(in_range(1, 1 << 16))->capture_default_str();
  c->add_option("--d-ff", o->d_ff, "Expert width (SwiGLU)")
      ->check(in_range(1, 1 << 18))
      ->capture_default_str();
  c->add_option("--experts", o->experts, "Routed experts (a multiple of the ranks)")
      ->check(in_range(1, 1 << 14))
      ->capture_default_str();
  c->add_option("--top-k", o->top_k, "Experts per token")->check(in_range(1, 1 << 14))->capture_default_str();
  c->add_option(
       "--chunks", o->chunks,
       "Token chunks to compare (overlap of exchange and compute); 0 = the single-process layer (one rank)")
      ->check(in_range(0, 1024))
      ->delimiter(',')
      ->capture_default_str();
  c->add_option("--iters", o->iters, "Timed steps; the median is reported")
      ->check(in_range(1, kMaxRepsFlag))
      ->capture_default_str();
  c->add_option("--warmup", o->warmup, "Untimed steps first")
      ->check(in_range(0, kMaxRepsFlag))
      ->capture_default_str();
  add_threads_flag(c, o->threads);
  c->add_option("--timeout", o->timeout, "Seconds a collective may wait for the other ranks")
      ->check(in_range(0, 1e6))
      ->capture_default_str();
  add_json_flag(c, o->json, "Print one JSON object (rank 0)");
  c->callback([&reg, o] { reg.action = [o] { return run(*o); }; });
}

}  // namespace moe::cli
