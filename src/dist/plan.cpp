// The cost model of the EP × DP planner (include/moe/dist/plan.h; formulas and their assumptions in
// docs/PLAN.md): placement of the EP group, all-to-all and ring collectives in an α-β model, FLOPs,
// memory per rank, and the Monte Carlo of per-rank routing loads that finds the straggler.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "moe/core/error.h"
#include "moe/core/rng.h"
#include "moe/dist/plan.h"

namespace moe::dist {

namespace {
constexpr double kGB = 1e9;
constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
double d(int64_t v) { return static_cast<double>(v); }
}  // namespace

EpPlacement ep_placement(const ClusterSpec& c, int64_t ep) {
  const int64_t G = c.gpus_per_node, W = c.world();
  MOE_CHECK(ep >= 1 && W % ep == 0, "EP size ", ep, " does not divide the world of ", W, " GPUs");
  MOE_CHECK(G % ep == 0 || ep % G == 0, "EP size ", ep, " neither divides nor is a multiple of ", G,
            " GPUs per node (an EP group would straddle a node boundary unevenly)");
  EpPlacement p;
  p.ep = ep;
  p.ranks_per_node = std::min(ep, G);
  p.nodes = ep / p.ranks_per_node;
  return p;
}

// ---- collectives --------------------------------------------------------------------------------

ExchangeCost exchange_cost(const ClusterSpec& c, const EpPlacement& p, const ExchangeInput& in) {
  const int64_t P = p.ep, g = p.ranks_per_node, N = p.nodes;
  MOE_CHECK(static_cast<int64_t>(in.rank_load.size()) == P, "plan: rank load has ", in.rank_load.size(),
            " entries, expected ep = ", P);
  ExchangeCost out;
  if (P == 1) return out;
  const double rows = d(in.tokens) * d(in.top_k) * in.row_bytes;  // bytes one rank routes
  const double bw_i = c.intra_gbps * kGB, bw_e = c.inter_gbps * kGB;
  const double a_i = c.intra_latency_us * 1e-6, a_e = c.inter_latency_us * 1e-6;
  const std::vector<double>& q = in.rank_load;
  std::vector<double> q_node(static_cast<size_t>(N), 0.0), q_local(static_cast<size_t>(g), 0.0);
  for (int64_t i = 0; i < P; ++i) q_node[i / g] += q[i], q_local[i % g] += q[i];

  if (!in.hierarchical || N == 1) {
    // Flat: every rank sends to every peer directly; NVLink and network carry their parts at once.
    out.latency_s = d(g - 1) * a_i + d(P - g) * a_e;
    double worst = 0;
    for (int64_t i = 0; i < P; ++i) {
      const double intra = std::max(rows * (q_node[i / g] - q[i]), d(g - 1) * rows * q[i]);
      const double inter = std::max(rows * (1.0 - q_node[i / g]), d(P - g) * rows * q[i]);
      const double t = std::max(intra / bw_i, inter / bw_e);
      if (t >= worst) worst = t, out.intra_bytes = intra, out.inter_bytes = inter;
    }
    out.seconds = worst + out.latency_s;
    return out;
  }
  // Two stages: inside the node, rank (n, l) hands rank (n, l') everything bound for local index l'
  // on any node; then ranks of equal local index exchange one aggregated block per node pair.
  out.latency_s = d(g - 1) * a_i + d(N - 1) * a_e;
  double t1 = 0, t2 = 0;
  for (int64_t i = 0; i < P; ++i) {
    const double ql = q_local[i % g];
    const double intra = std::max(rows * (1.0 - ql), d(g - 1) * rows * ql);
    const double inter = std::max(d(g) * rows * (ql - q[i]), d(N - 1) * d(g) * rows * q[i]);
    t1 = std::max(t1, intra / bw_i), out.intra_bytes = std::max(out.intra_bytes, intra);
    t2 = std::max(t2, inter / bw_e), out.inter_bytes = std::max(out.inter_bytes, inter);
  }
  out.seconds = t1 + t2 + out.latency_s;
  return out;
}

namespace {
// Bandwidth (B/s) and per-step latency (s) of a ring over n ranks with per_node on each node.
void ring_links(const ClusterSpec& c, int64_t n, int64_t per_node, double& bw, double& alpha) {
  MOE_CHECK(n >= 1 && per_node >= 1 && per_node <= n, "plan: bad ring of ", n, " ranks, ", per_node,
            " per node");
  if (per_node == n) {
    bw = c.intra_gbps * kGB, alpha = c.intra_latency_us * 1e-6;
  } else {
    bw = std::min(c.intra_gbps, d(per_node) * c.inter_gbps) * kGB, alpha = c.inter_latency_us * 1e-6;
  }
}
}  // namespace

double ring_allreduce_s(const ClusterSpec& c, int64_t n, int64_t per_node, double bytes) {
  return 2.0 * ring_half_s(c, n, per_node, bytes);
}

double ring_half_s(const ClusterSpec& c, int64_t n, int64_t per_node, double bytes) {
  if (n <= 1) return 0.0;
  double bw = 0, alpha = 0;
  ring_links(c, n, per_node, bw, alpha);
  return d(n - 1) / d(n) * bytes / bw + d(n - 1) * alpha;
}

// ---- FLOPs and memory ---------------------------------------------------------------------------

double dense_flops_per_token(const ModelShape& m, int64_t seq_len) {
  const double dd = d(m.hidden_size);
  // Causal attention: a token attends to (S + 1) / 2 keys on average; QKᵀ and PV take 2·qk and 2·v
  // FLOPs per head and key.
  const double scores = d(m.attn_heads) * d(m.attn_qk_dim + m.attn_v_dim) * d(seq_len + 1);
  const double attn = 2.0 * d(m.attn_params) + scores;
  const double moe_rest = 2.0 * d(m.n_experts) * dd + 6.0 * dd * d(m.shared_ffn);  // router, shared FFN
  const double dense_ffn = 6.0 * dd * d(m.dense_ffn);
  return d(m.num_layers) * attn + d(m.num_moe_layers) * moe_rest +
         d(m.num_layers - m.num_moe_layers) * dense_ffn + 2.0 * d(m.vocab_size) * dd;
}

double expert_flops_per_assignment(const ModelShape& m) { return 6.0 * d(m.hidden_size) * d(m.expert_ffn); }

namespace {
// Parameters of the largest layer one rank holds (ZeRO-3 gathers a layer at a time).
double largest_layer_params(const ModelShape& m, int64_t ep) {
  const double dd = d(m.hidden_size);
  const double base = d(m.attn_params) + 2 * dd;
  const double moe = base + d(m.n_experts / ep) * d(m.expert_params()) + d(m.n_experts) * dd +
                     3 * dd * d(m.shared_ffn) + d(m.extra_moe_params);
  const double dense = m.num_moe_layers < m.num_layers ? base + 3 * dd * d(m.dense_ffn) : 0.0;
  return std::max({moe, dense, d(m.vocab_size) * dd});
}

// Activation bytes per token kept for backward: (attention, MoE FFN, dense FFN) of one layer.
struct ActPerToken {
  double attn, moe, dense, head;
};
ActPerToken activation_bytes(const ModelShape& m, const TrainShape& t, double max_load) {
  const double dd = d(m.hidden_size), ab = d(t.act_bytes);
  ActPerToken a;
  a.attn = d(m.attn_act_dim) * ab;
  // norm input and output, fp32 router probabilities, per received row its input and output rows and
  // the gate, up and activation outputs, the shared FFN's three and its output.
  a.moe = 2 * dd * ab + 4.0 * d(m.n_experts) + d(m.top_k) * max_load * (2 * dd + 3 * d(m.expert_ffn)) * ab +
          (m.shared_ffn > 0 ? (3 * d(m.shared_ffn) + dd) * ab : 0.0);
  a.dense = (3 * dd + 3 * d(m.dense_ffn)) * ab;
  a.head = dd * ab + 4.0 * d(m.vocab_size);  // final norm output, fp32 logits
  return a;
}
}  // namespace

MemoryBreakdown memory_per_rank(const ClusterSpec& c, const ModelShape& m, const TrainShape& t, int64_t ep,
                                int zero, double max_load) {
  MOE_CHECK(zero >= 0 && zero <= 3, "--zero must be 0, 1, 2, 3 or auto, got ", zero);
  const int64_t W = c.world(), dp = W / ep;
  const double dense = d(m.dense_params()), expert = d(m.routed_expert_params()) / d(ep);
  // Per parameter group: its count on this rank after sharding over its DP group at `stage`.
  auto held = [&](int stage) {
    return dense / d(zero >= stage ? W : 1) + expert / d(zero >= stage ? dp : 1);
  };
  MemoryBreakdown mem;
  mem.params = held(3) * d(t.param_bytes);
  mem.grads = held(2) * d(t.grad_bytes);
  mem.optimizer = held(1) * d(t.master_bytes + 2 * t.opt_bytes);
  if (zero == 3)
    mem.gather_buffers = 2.0 * largest_layer_params(m, ep) * d(t.param_bytes);  // current + prefetch
  const ActPerToken a = activation_bytes(m, t, max_load);
  const double L_dense = d(m.num_layers - m.num_moe_layers);
  const double per_token =
      t.recompute ? d(m.num_layers) * d(m.hidden_size) * d(t.act_bytes) +      // layer inputs
                        a.attn + std::max(a.moe, L_dense > 0 ? a.dense : 0.0)  // one layer redone
                  : d(m.num_layers) * a.attn + d(m.num_moe_layers) * a.moe + L_dense * a.dense;
  mem.activations = d(t.micro_batch_tokens) * (per_token + a.head);
  mem.reserve = c.reserve_gib * kGiB;
  return mem;
}

// ---- routing Monte Carlo ------------------------------------------------------------------------

namespace {
// Per trial, the fraction of one layer's assignments that each EP rank receives: the expert
// probabilities (shuffled for zipf), summed per rank, with the multinomial noise of n assignments
// (normal approximation per rank, renormalised).
std::vector<std::vector<double>> sample_rank_loads(const std::vector<double>& p, bool shuffle, int64_t ep,
                                                   double n, int trials, const Rng& rng) {
  const int64_t E = static_cast<int64_t>(p.size()), per_rank = E / ep;
  const double total = std::accumulate(p.begin(), p.end(), 0.0);
  std::vector<std::vector<double>> out;
  std::vector<double> pe;
  for (int t = 0; t < trials; ++t) {
    const Rng r = rng.fork(static_cast<uint64_t>(t));
    pe = p;
    if (shuffle) {
      for (int64_t i = E - 1; i > 0; --i)
        std::swap(pe[i], pe[r.below(static_cast<uint64_t>(i), static_cast<uint64_t>(i + 1))]);
    }
    std::vector<double> q(static_cast<size_t>(ep), 0.0);
    for (int64_t e = 0; e < E; ++e) q[e / per_rank] += pe[e] / total;
    double sum = 0;
    for (int64_t i = 0; i < ep; ++i) {
      const double mean = n * q[i], sd = std::sqrt(std::max(0.0, n * q[i] * (1.0 - q[i])));
      q[i] = std::max(0.0, mean + sd * r.normal(static_cast<uint64_t>(E + i)));
      sum += q[i];
    }
    for (double& v : q) v = sum > 0 ? v / sum : 1.0 / d(ep);
    out.push_back(std::move(q));
  }
  return out;
}

struct LayerCost {
  double expert_s = 0, a2a_s = 0, a2a_latency_s = 0, max_load = 0;
};

// Expected cost of all MoE layers for one micro-batch of T tokens per rank.
LayerCost moe_layers_cost(const PlanInput& in, const EpPlacement& pl, int64_t T) {
  const ClusterSpec& c = in.cluster;
  const ModelShape& m = in.model;
  const TrainShape& t = in.train;
  const RoutingSpec& r = in.routing;
  const double passes = t.recompute ? 4.0 : 3.0;
  const double rate = c.peak_tflops * 1e12 * c.mfu;
  const double flops_row = expert_flops_per_assignment(m) * passes;
  const double n_assign = d(pl.ep) * d(T) * d(m.top_k);
  // Exchanges per layer: forward dispatch (dispatch dtype), forward combine, and in backward the
  // gradients of both (activation dtype); recomputation repeats the forward pair.
  const double n_disp = t.recompute ? 2.0 : 1.0, n_act = t.recompute ? 4.0 : 3.0;
  const bool measured = r.kind == LoadKind::Measured;
  const size_t n_dists = measured ? r.measured.size() : 1;
  const std::vector<double> base = measured ? std::vector<double>() : expert_distribution(r, m.n_experts);
  LayerCost total;
  for (size_t l = 0; l < n_dists; ++l) {
    const std::vector<double>& p = measured ? r.measured[l] : base;
    const Rng rng = Rng(r.seed, l).fork(static_cast<uint64_t>(T));
    const auto loads = sample_rank_loads(p, r.kind == LoadKind::Zipf, pl.ep, n_assign, r.trials, rng);
    LayerCost acc;
    for (const std::vector<double>& q : loads) {
      const double qmax = *std::max_element(q.begin(), q.end());
      acc.max_load += qmax * d(pl.ep);
      acc.expert_s += qmax * n_assign * flops_row / rate;
      ExchangeInput x{T, m.top_k, d(m.hidden_size * t.dispatch_bytes), q, in.options.hierarchical};
      const ExchangeCost disp = exchange_cost(c, pl, x);
      x.row_bytes = d(m.hidden_size * t.act_bytes);
      const ExchangeCost act = exchange_cost(c, pl, x);
      acc.a2a_s += n_disp * disp.seconds + n_act * act.seconds;
      acc.a2a_latency_s += n_disp * disp.latency_s + n_act * act.latency_s;
    }
    // Layers that share one distribution each cost the expectation; a measured file may give one per layer.
    const double weight = (measured && n_dists > 1 ? 1.0 : d(m.num_moe_layers)) / d(r.trials);
    total.expert_s += acc.expert_s * weight, total.a2a_s += acc.a2a_s * weight;
    total.a2a_latency_s += acc.a2a_latency_s * weight, total.max_load += acc.max_load * weight;
  }
  total.max_load /= d(m.num_moe_layers);
  return total;
}
}  // namespace

// ---- one layout and the plan --------------------------------------------------------------------

LayoutResult evaluate_layout(const PlanInput& in, int64_t ep, int zero) {
  const ClusterSpec& c = in.cluster;
  const ModelShape& m = in.model;
  const TrainShape& t = in.train;
  c.validate(), m.validate(), t.validate(), in.routing.validate(m);
  MOE_CHECK(m.n_experts % ep == 0, "EP size ", ep, " does not divide the ", m.n_experts, " experts of ",
            m.name);
  const EpPlacement pl = ep_placement(c, ep);
  const int64_t W = c.world();
  MOE_CHECK(t.global_batch_tokens % (W * t.seq_len) == 0, "--global-batch-tokens ", t.global_batch_tokens,
            " does not split into whole sequences of ", t.seq_len, " tokens over ", W, " GPUs");
  const PlanOptions& o = in.options;
  MOE_CHECK(o.a2a_overlap >= 0 && o.a2a_overlap <= 1, "--a2a-overlap must be in [0, 1], got ", o.a2a_overlap);
  MOE_CHECK(o.grad_overlap >= 0 && o.grad_overlap <= 1, "--grad-overlap must be in [0, 1], got ",
            o.grad_overlap);

  LayoutResult r;
  r.ep = ep, r.dp = W / ep, r.experts_per_rank = m.n_experts / ep, r.zero = zero,
  r.spans_nodes = pl.spans_nodes();
  r.tokens_per_rank = t.global_batch_tokens / W;
  r.micro_batch_tokens = std::min(t.micro_batch_tokens, r.tokens_per_rank);
  const int64_t full = r.tokens_per_rank / r.micro_batch_tokens,
                rest = r.tokens_per_rank % r.micro_batch_tokens;
  r.micro_batches = full + (rest > 0 ? 1 : 0);

  // Compute and all-to-all, micro-batch by micro-batch.
  const double rate = c.peak_tflops * 1e12 * c.mfu, passes = t.recompute ? 4.0 : 3.0;
  const double f_dense = dense_flops_per_token(m, t.seq_len);
  const LayerCost cf = moe_layers_cost(in, pl, r.micro_batch_tokens);
  r.t_dense = d(r.tokens_per_rank) * f_dense * passes / rate;
  r.t_expert = d(full) * cf.expert_s, r.t_a2a = d(full) * cf.a2a_s,
  r.t_a2a_latency = d(full) * cf.a2a_latency_s;
  r.max_load = cf.max_load;
  if (rest > 0) {
    const LayerCost cr = moe_layers_cost(in, pl, rest);
    r.t_expert += cr.expert_s, r.t_a2a += cr.a2a_s, r.t_a2a_latency += cr.a2a_latency_s;
  }
  // Mean bytes a rank sends to other ranks: T·k·(1 − 1/ep)·d per exchange, whatever the distribution.
  const double rows = d(r.tokens_per_rank) * d(m.top_k) * d(m.hidden_size) * d(m.num_moe_layers);
  const double n_disp = t.recompute ? 2.0 : 1.0, n_act = t.recompute ? 4.0 : 3.0;
  const double row_bytes = n_disp * d(t.dispatch_bytes) + n_act * d(t.act_bytes);
  r.a2a_bytes = rows * row_bytes * (1.0 - 1.0 / d(ep));
  r.a2a_inter_bytes = rows * row_bytes * (1.0 - d(pl.ranks_per_node) / d(ep));

  // DP reductions once per step (ZeRO-3 also gathers the parameters in every forward and backward).
  const double dense = d(m.dense_params()), expert = d(m.routed_expert_params()) / d(ep);
  const int64_t G = c.gpus_per_node, dp_per_node = ep < G ? G / ep : 1;
  const double dn = d(W), en = d(r.dp);
  if (zero == 0) {
    r.t_grad = ring_allreduce_s(c, W, G, dense * d(t.grad_bytes)) +
               ring_allreduce_s(c, r.dp, dp_per_node, expert * d(t.grad_bytes));
    r.grad_bytes = 2 * (dn - 1) / dn * dense * d(t.grad_bytes) + 2 * (en - 1) / en * expert * d(t.grad_bytes);
  } else {
    const double gathers = 1.0 + (zero == 3 ? 2.0 * d(r.micro_batches) : 0.0);
    r.t_grad = ring_half_s(c, W, G, dense * d(t.grad_bytes)) +
               ring_half_s(c, r.dp, dp_per_node, expert * d(t.grad_bytes)) +
               gathers * (ring_half_s(c, W, G, dense * d(t.param_bytes)) +
                          ring_half_s(c, r.dp, dp_per_node, expert * d(t.param_bytes)));
    r.grad_bytes = (dn - 1) / dn * dense * (d(t.grad_bytes) + gathers * d(t.param_bytes)) +
                   (en - 1) / en * expert * (d(t.grad_bytes) + gathers * d(t.param_bytes));
  }

  const double compute = r.t_dense + r.t_expert;
  const double hide_a2a = o.a2a_overlap * std::min(r.t_a2a, compute);
  const double hide_grad = o.grad_overlap * std::min(r.t_grad, compute - hide_a2a);
  r.t_hidden = hide_a2a + hide_grad;
  r.t_step = compute + r.t_a2a + r.t_grad - r.t_hidden;

  r.memory = memory_per_rank(c, m, t, ep, zero, r.max_load);
  r.fits = r.memory.total() <= c.memory_gib * kGiB;
  r.tokens_per_s = d(t.global_batch_tokens) / r.t_step;
  const double f_experts = d(m.num_moe_layers) * d(m.top_k) * expert_flops_per_assignment(m);
  const double model_flops = 3.0 * d(r.tokens_per_rank) * (f_dense + f_experts);  // no recomputation
  r.mfu = model_flops / (r.t_step * c.peak_tflops * 1e12);
  r.gpu_hours_per_trillion = d(W) * r.t_step / 3600.0 * 1e12 / d(t.global_batch_tokens);
  return r;
}

Plan make_plan(const PlanInput& in) {
  in.cluster.validate(), in.model.validate(), in.train.validate(), in.routing.validate(in.model);
  const PlanOptions& o = in.options;
  MOE_CHECK(o.zero >= -1 && o.zero <= 3, "--zero must be 0, 1, 2, 3 or auto, got ", o.zero);
  const int64_t E = in.model.n_experts, W = in.cluster.world();
  Plan plan;
  std::vector<int64_t> eps = o.ep_sizes;
  if (eps.empty()) {
    for (int64_t ep = 1; ep <= E; ++ep) {
      if (E % ep != 0) continue;
      try {
        ep_placement(in.cluster, ep);
        eps.push_back(ep);
      } catch (const Error& e) {
        plan.skipped.push_back(e.what());
      }
    }
  } else {
    for (int64_t ep : eps) {
      MOE_CHECK(ep >= 1 && E % ep == 0, "EP size ", ep, " does not divide the ", E, " experts of ",
                in.model.name);
      ep_placement(in.cluster, ep);
    }
  }
  MOE_CHECK(!eps.empty(), "no EP size fits ", E, " experts on ", W, " GPUs (", in.cluster.gpus_per_node,
            " per node)");
  for (int64_t ep : eps) {
    if (o.zero >= 0) {
      plan.layouts.push_back(evaluate_layout(in, ep, o.zero));
      continue;
    }
    LayoutResult r;
    for (int z = 0; z <= 3; ++z) {  // stages 1 and 2 cost the same time; each saves memory over the last
      r = evaluate_layout(in, ep, z);
      if (r.fits) break;
    }
    plan.layouts.push_back(r);
  }
  std::stable_sort(plan.layouts.begin(), plan.layouts.end(),
                   [](const LayoutResult& a, const LayoutResult& b) {
                     if (a.fits != b.fits) return a.fits;
                     return a.fits ? a.t_step < b.t_step : a.memory.total() < b.memory.total();
                   });
  if (!plan.layouts.empty() && plan.layouts[0].fits) plan.best = 0;
  return plan;
}

}  // namespace moe::dist
