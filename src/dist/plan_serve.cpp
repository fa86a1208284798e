// The serving cost model of `moe plan --serve` (include/moe/dist/plan_serve.h, docs/PLAN.md).
#include "moe/dist/plan_serve.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "moe/core/error.h"
#include "moe/core/rng.h"

namespace moe::dist {

namespace {
double d(int64_t v) { return static_cast<double>(v); }
bool positive(double v) { return std::isfinite(v) && v > 0; }
}  // namespace

void ServeCluster::validate() const {
  MOE_CHECK(ranks_per_node >= 1, "plan --serve: ranks per node must be >= 1, got ", ranks_per_node);
  MOE_CHECK(positive(mem_gbps), "plan --serve: --mem-gbps (read bandwidth of a node) must be > 0, got ",
            mem_gbps);
  MOE_CHECK(positive(mbu) && mbu <= 1, "plan --serve: --mbu must be in (0, 1], got ", mbu);
  MOE_CHECK(positive(gflops), "plan --serve: --node-gflops must be > 0, got ", gflops);
  MOE_CHECK(positive(shm_gbps) && positive(net_gbps), "plan --serve: bandwidths must be > 0 GB/s");
  MOE_CHECK(std::isfinite(shm_latency_us) && shm_latency_us >= 0 && std::isfinite(net_latency_us) &&
                net_latency_us >= 0,
            "plan --serve: latencies must be >= 0 us");
  MOE_CHECK(std::isfinite(overhead_mib) && overhead_mib >= 0,
            "plan --serve: --overhead-mib must be >= 0, got ", overhead_mib);
  MOE_CHECK(cores >= 0, "plan --serve: --cores must be >= 0, got ", cores);
  MOE_CHECK(std::isfinite(core_gbps) && core_gbps >= 0, "plan --serve: --core-gbps must be >= 0, got ",
            core_gbps);
  MOE_CHECK(std::isfinite(memory_gib) && memory_gib >= 0, "plan --serve: --memory-gib must be >= 0, got ",
            memory_gib);
}

ServeFormat serve_format(const std::string& name) {
  ServeFormat f;
  if (name == "f32") return f;
  if (name == "bf16") {
    f.dense_read = f.expert_read = 2;
    f.dense_held = f.expert_held = 2;  // an inference load packs them and keeps no f32 copy
    return f;
  }
  if (name == "int8" || name == "int4") {
    // w8a8 / w4a8 packing: int8 with an f16 scale per 32, or int4 with an f16 scale and min per 32.
    f.expert_read = f.expert_held = name == "int8" ? 1.0 + 2.0 / 32.0 : 0.5 + 4.0 / 32.0;
    return f;
  }
  throw Error(cat("plan --serve: --format must be f32, bf16, int8 or int4, got '", name, "'"));
}

void ServeShape::validate(const ModelShape& m) const {
  MOE_CHECK(ranks >= 1 && m.n_experts % ranks == 0, "plan --serve: ", ranks, " rank(s) cannot share ",
            m.n_experts, " experts evenly (the ranks must divide the experts)");
  MOE_CHECK(concurrency >= 1, "plan --serve: --concurrency must be >= 1, got ", concurrency);
  MOE_CHECK(context >= 1, "plan --serve: --context must be >= 1, got ", context);
  MOE_CHECK(kv_dim >= 1, "plan --serve: the model's KV width must be >= 1");
}

ServePrediction predict_serve(const ModelShape& m, const ServeCluster& c, const ServeFormat& f,
                              const ServeShape& s, const RoutingSpec& routing) {
  m.validate();
  c.validate();
  s.validate(m);
  routing.validate(m);
  ServePrediction p;
  p.ranks = s.ranks, p.concurrency = s.concurrency;
  p.ranks_per_node = std::min(c.ranks_per_node, s.ranks);
  p.nodes = (s.ranks + p.ranks_per_node - 1) / p.ranks_per_node;
  const double B = d(s.concurrency), dd = d(m.hidden_size);
  // One rank's share of its node while `active` of the node's ranks work at once: the node's
  // bandwidth (bytes/s) and GEMM rate (FLOP/s) split between them, the bandwidth capped by what the
  // rank's own cores draw (a rank that works alone cannot use a whole node from a few cores).
  const double threads = c.cores > 0 ? std::max(1.0, std::floor(d(c.cores) / d(p.ranks_per_node))) : 0;
  auto cost_shared = [&](double bytes, double flops, int64_t active) {
    double bw = c.mem_gbps * 1e9 * c.mbu / d(std::max<int64_t>(active, 1));
    if (c.core_gbps > 0 && threads > 0) bw = std::min(bw, threads * c.core_gbps * 1e9 * c.mbu);
    const double rate = c.gflops * 1e9 / d(std::max<int64_t>(active, 1));
    return std::max(bytes / bw, flops / rate);
  };
  // Replicated work: every rank of the node at once.
  auto cost = [&](double bytes, double flops) { return cost_shared(bytes, flops, p.ranks_per_node); };

  // Every layer on every rank: attention weights and the B sequences' KV cache (scores and values).
  const double kv_read = B * d(s.context) * d(s.kv_dim) * f.kv_bytes;
  // Scores and weighted values: 2·(qk + v) FLOPs per query head and cached position.
  const double attn_flops =
      2.0 * d(m.attn_params) * B + 2.0 * B * d(s.context) * d(m.attn_heads) * d(m.attn_qk_dim + m.attn_v_dim);
  const double attn_s = cost(d(m.attn_params) * f.dense_read + kv_read, attn_flops);
  // MoE layers on every rank: router and shared experts; dense layers: their FFN.
  const double moe_rest = d(m.n_experts) * dd + 3.0 * dd * d(m.shared_ffn) + d(m.extra_moe_params);
  const double moe_rest_s = cost(moe_rest * f.dense_read, 2.0 * moe_rest * B);
  const double ffn = 3.0 * dd * d(m.dense_ffn);
  const double ffn_s = cost(ffn * f.dense_read, 2.0 * ffn * B);
  const int64_t L_moe = m.num_moe_layers, L_dense = m.num_layers - m.num_moe_layers;
  p.dense_s = d(m.num_layers) * attn_s + d(L_moe) * moe_rest_s + d(L_dense) * ffn_s;

  // Routed experts: per MoE layer the slowest rank reads its distinct chosen experts and computes
  // its rows. Monte Carlo over the B tokens' choices (k distinct experts each, drawn by the load).
  const int64_t E = m.n_experts, El = E / s.ranks, k = m.top_k;
  const double ep_bytes = d(m.expert_params()) * f.expert_read, ep_flops = 2.0 * d(m.expert_params());
  const bool measured = routing.kind == LoadKind::Measured;
  const size_t n_dists = measured ? routing.measured.size() : 1;
  const std::vector<double> base = measured ? std::vector<double>() : expert_distribution(routing, E);
  double expert_s = 0, max_experts = 0;
  for (size_t l = 0; l < n_dists; ++l) {
    const std::vector<double>& p0 = measured ? routing.measured[l] : base;
    const Rng rng = Rng(routing.seed, l).fork(static_cast<uint64_t>(s.concurrency));
    double layer_s = 0, layer_max = 0;
    for (int t = 0; t < routing.trials; ++t) {
      const Rng r = rng.fork(static_cast<uint64_t>(t));
      std::vector<double> pe = p0;
      uint64_t draw = 0;
      if (routing.kind == LoadKind::Zipf)  // popularity order shuffled over the experts
        for (int64_t i = E - 1; i > 0; --i)
          std::swap(pe[i], pe[r.below(draw++, static_cast<uint64_t>(i + 1))]);
      std::vector<int64_t> rows(static_cast<size_t>(E), 0);
      for (int64_t tok = 0; tok < s.concurrency; ++tok) {
        std::vector<double> w = pe;  // k distinct experts, each drawn by the remaining weights
        for (int64_t j = 0; j < k; ++j) {
          const double total = std::accumulate(w.begin(), w.end(), 0.0);
          double u = r.uniform(draw++) * total;
          int64_t e = 0;
          while (e < E - 1 && (u >= w[e] || w[e] == 0)) u -= w[e], ++e;
          rows[e] += 1;
          w[e] = 0;
        }
      }
      // Ranks with experts to compute share their node; the others wait in the all-reduce.
      std::vector<double> n_exp(static_cast<size_t>(s.ranks), 0), n_rows(n_exp.size(), 0);
      std::vector<int64_t> busy(static_cast<size_t>(p.nodes), 0);
      for (int64_t rank = 0; rank < s.ranks; ++rank) {
        for (int64_t e = rank * El; e < (rank + 1) * El; ++e)
          if (rows[e] > 0) n_exp[rank] += 1, n_rows[rank] += d(rows[e]);
        if (n_exp[rank] > 0) busy[rank / p.ranks_per_node] += 1;
      }
      double worst = 0, worst_experts = 0;
      for (int64_t rank = 0; rank < s.ranks; ++rank) {
        const double t_rank =
            cost_shared(n_exp[rank] * ep_bytes, n_rows[rank] * ep_flops, busy[rank / p.ranks_per_node]);
        if (t_rank >= worst) worst = t_rank, worst_experts = n_exp[rank];
      }
      layer_s += worst, layer_max += worst_experts;
    }
    const double weight = (measured && n_dists > 1 ? 1.0 : d(L_moe)) / d(routing.trials);
    expert_s += layer_s * weight, max_experts += layer_max * weight;
  }
  p.expert_s = expert_s;
  p.max_experts = max_experts / d(L_moe);

  // The all-reduce of each MoE layer (B·k rows of d), as a ring over the ranks (one message per
  // rank inside a node, the slowest link across nodes); one announcement of the step (a broadcast).
  if (s.ranks > 1) {
    const double n = d(s.ranks), bytes = B * d(k) * dd * f.act_bytes;
    const bool across = p.nodes > 1;
    const double link_bw = (across ? std::min(c.net_gbps, c.shm_gbps) : c.shm_gbps) * 1e9;
    const double alpha = (across ? c.net_latency_us : c.shm_latency_us) * 1e-6;
    p.exchange_s = d(L_moe) * (2.0 * (n - 1.0) / n * bytes / link_bw + 2.0 * (n - 1.0) * alpha);
    p.announce_s = std::ceil(std::log2(n)) * alpha * 2.0;  // header and payload
  }
  // Rank 0 computes the head for the B sequences.
  const double head = d(m.vocab_size) * dd;
  p.head_s = cost_shared(head * f.dense_read, 2.0 * head * B, 1);  // the others wait
  p.step_s = p.dense_s + p.expert_s + p.exchange_s + p.head_s + p.announce_s;
  p.tokens_per_s = B / p.step_s;

  p.dense_bytes = d(m.dense_params()) * f.dense_held;
  p.expert_bytes = d(m.routed_expert_params()) / d(s.ranks) * f.expert_held;
  p.kv_bytes = B * d(s.context) * d(s.kv_dim) * d(m.num_layers) * f.kv_bytes;
  p.overhead_bytes = c.overhead_mib * 1048576.0;
  if (c.memory_gib > 0) p.fits = p.memory_bytes() * d(p.ranks_per_node) <= c.memory_gib * 1073741824.0;
  return p;
}

}  // namespace moe::dist
