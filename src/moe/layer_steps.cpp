#include "moe/layer_steps.h"

#include <algorithm>

#include "moe/core/error.h"
#include "moe/core/parallel.h"
#include "moe/core/rng.h"
#include "moe/kernels/ops_routing.h"
#include "moe/moe/balance.h"

namespace moe::detail {

template <typename T>
void router_jitter(const RouterJitterArgs<T>& a) {
  const Rng rng = Rng(a.seed).fork(a.step);
  parallel_for(a.n, 4096, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      a.jitter[i] = static_cast<T>(1.0 - a.eps + 2.0 * a.eps * rng.uniform(static_cast<uint64_t>(i)));
      a.x_r[i] = a.x[i] * a.jitter[i];
    }
  });
}

namespace {

// The routing_stats op's outputs: the small buffer a step reads back once.
struct RoutingSums {
  std::vector<int32_t> routed, kept, seq_routed;  // (E), (E), (Q, E)
  std::vector<double> weight, prob, seq_prob;     // (E), (E), (Q, E)
  int32_t not_kept = 0;
  double lse_sq = 0;
};

// Which losses a step computes, and its sequences (balance_losses' rules: none without tokens).
struct LossPlan {
  bool aux = false, seq = false, z = false, entropy = false;
  int64_t L = 0, Q = 0;  // tokens per sequence, sequences
};

LossPlan loss_plan(const BalanceConfig& bc, int64_t T) {
  LossPlan p;
  p.aux = T > 0 && bc.aux_coef != 0;
  p.seq = T > 0 && bc.seq_aux_coef != 0;
  p.z = T > 0 && bc.z_coef != 0;
  p.entropy = T > 0 && bc.entropy_coef != 0;
  if (p.seq) {
    p.L = bc.seq_len > 0 ? bc.seq_len : T;
    MOE_CHECK(T % p.L == 0, "sequence-level aux loss: token count ", T, " is not a multiple of seq_len ",
              p.L);
    p.Q = T / p.L;
  }
  return p;
}

template <typename T>
RoutingSums routing_sums(const MoEStatsArgs& a, const LossPlan& lp) {
  const Routing& r = *a.routing;
  const int64_t E = a.cfg->n_experts, N = r.n_assign, nT = r.n_tokens;
  RoutingSums s;
  s.routed.resize(static_cast<size_t>(E));
  s.kept.resize(static_cast<size_t>(E));
  s.weight.resize(static_cast<size_t>(E));
  if (lp.aux) s.prob.resize(static_cast<size_t>(E));
  if (lp.seq) s.seq_routed.resize(static_cast<size_t>(lp.Q * E));
  if (lp.seq) s.seq_prob.resize(static_cast<size_t>(lp.Q * E));
  const bool scores = lp.aux || lp.seq;
  const bool top_p = r.active.defined();
  kernels::routing_stats<T>(a.exec,
                            {.N = N,
                             .T_ = nT,
                             .E = E,
                             .score = a.cfg->router.score == ScoreFn::Sigmoid ? kernels::RouterScore::Sigmoid
                                                                              : kernels::RouterScore::Softmax,
                             .seq_len = lp.L,
                             .token = N ? r.token.data<int32_t>() : nullptr,
                             .expert = N ? r.expert.data<int32_t>() : nullptr,
                             .kept = N ? r.kept.data<uint8_t>() : nullptr,
                             .active = N && top_p ? r.active.data<uint8_t>() : nullptr,
                             .weight = N ? r.weight.data<T>() : nullptr,
                             .scores = scores && nT ? r.scores.data<T>() : nullptr,
                             .logits = lp.z ? r.logits.data<T>() : nullptr,
                             .routed = s.routed.data(),
                             .kept_count = s.kept.data(),
                             .not_kept = &s.not_kept,
                             .weight_sum = s.weight.data(),
                             .prob_sum = lp.aux ? s.prob.data() : nullptr,
                             .seq_routed = lp.seq ? s.seq_routed.data() : nullptr,
                             .seq_prob_sum = lp.seq ? s.seq_prob.data() : nullptr,
                             .lse_sq_sum = lp.z ? &s.lse_sq : nullptr});
  return s;
}

// The weighted losses from the sums, in the order of balance_losses' arithmetic (the same values).
// k is top_k, or under top-p routing the batch's mean k.
void losses_from(const MoEConfig& cfg, const Routing& r, const LossPlan& lp, const RoutingSums& s,
                 MoEStats& st) {
  const BalanceConfig& bc = cfg.balance;
  const int64_t E = cfg.n_experts, nT = r.n_tokens;
  const double T = static_cast<double>(nT);
  const double k =
      r.active.defined() ? static_cast<double>(r.n_active) / T : static_cast<double>(cfg.router.top_k);
  if (lp.aux) {
    double sum = 0;  // Σ_e c_e · P_e / T
    for (int64_t e = 0; e < E; ++e) sum += static_cast<double>(s.routed[e]) * s.prob[e] / T;
    st.aux_loss = bc.aux_coef * static_cast<double>(E) / (k * T) * sum;
  }
  if (lp.seq) {
    const double L = static_cast<double>(lp.L);
    const double fscale = static_cast<double>(E) / (k * L);
    double total = 0;  // Σ_q Σ_e f_e · P^q_e / L
    for (int64_t i = 0; i < lp.Q * E; ++i)
      total += fscale * static_cast<double>(s.seq_routed[i]) * s.seq_prob[i] / L;
    st.seq_aux_loss = bc.seq_aux_coef * total / static_cast<double>(lp.Q);
  }
  if (lp.z) st.z_loss = bc.z_coef * s.lse_sq / T;
  if (lp.entropy) {
    // coef · mean_t H(p_t) on the host, in the arithmetic of balance_losses
    BalanceConfig only_entropy;
    only_entropy.entropy_coef = bc.entropy_coef;
    MoEConfig c = cfg;
    c.balance = only_entropy;
    st.entropy_loss = balance_losses(c, r, nullptr).entropy;
  }
}

}  // namespace

template <typename T>
MoEStats moe_stats(const MoEStatsArgs& a) {
  const Routing& r = *a.routing;
  const int64_t E = a.cfg->n_experts, N = r.n_assign;
  const LossPlan lp = loss_plan(a.cfg->balance, r.n_tokens);
  const RoutingSums s = routing_sums<T>(a, lp);
  MoEStats st;
  st.routed_per_expert.assign(s.routed.begin(), s.routed.end());
  st.routed_weight_per_expert = s.weight;
  st.tokens_per_expert.assign(s.kept.begin(), s.kept.end());
  st.skipped = a.skipped;
  st.dropped = s.not_kept - a.skipped;
  const int64_t max_c =
      E > 0 ? *std::max_element(st.routed_per_expert.begin(), st.routed_per_expert.end()) : 0;
  const int64_t n_sel = r.active.defined() ? r.n_active : N;
  st.imbalance =
      n_sel > 0 ? static_cast<double>(max_c) * static_cast<double>(E) / static_cast<double>(n_sel) : 0.0;
  st.mean_k = r.n_tokens > 0 ? static_cast<double>(n_sel) / static_cast<double>(r.n_tokens) : 0.0;
  losses_from(*a.cfg, r, lp, s, st);
  return st;
}

template <typename T>
std::vector<TokenChunk> split_routing(const SplitRoutingArgs& a) {
  const Routing& r = *a.routing;
  const int64_t nT = r.n_tokens, n = a.n_chunks;
  if (n <= 1) {
    std::vector<TokenChunk> one(1);
    one[0].t1 = nT;
    one[0].routing = r;
    return one;
  }
  std::vector<TokenChunk> chunks(static_cast<size_t>(n));
  std::vector<int32_t> chunk_of(static_cast<size_t>(nT));  // (T)
  for (int64_t c = 0; c < n; ++c) {
    chunks[c].t0 = c * nT / n;
    chunks[c].t1 = (c + 1) * nT / n;
    for (int64_t t = chunks[c].t0; t < chunks[c].t1; ++t) chunk_of[t] = static_cast<int32_t>(c);
  }
  const int32_t* tok = r.n_assign ? r.token.data<int32_t>() : nullptr;
  for (int64_t i = 0; i < r.n_assign; ++i) chunks[chunk_of[tok[i]]].assign.push_back(static_cast<int32_t>(i));
  const DType dt = dtype_of<T>::value;
  for (TokenChunk& ch : chunks) {
    const int64_t m = static_cast<int64_t>(ch.assign.size());
    Routing& s = ch.routing;
    s.n_tokens = ch.t1 - ch.t0;
    s.n_assign = m;
    s.capacity = r.capacity;
    s.token = Tensor::empty({m}, DType::I32, "token");
    s.expert = Tensor::empty({m}, DType::I32, "expert");
    s.weight = Tensor::empty({m}, dt, "weight");
    s.kept = Tensor::empty({m}, DType::U8, "kept");
    for (int64_t i = 0; i < m; ++i) {
      const int32_t src = ch.assign[i];
      s.token.data<int32_t>()[i] = tok[src] - static_cast<int32_t>(ch.t0);
      s.expert.data<int32_t>()[i] = r.expert.data<int32_t>()[src];
      s.weight.data<T>()[i] = r.weight.data<T>()[src];
      s.kept.data<uint8_t>()[i] = r.kept.data<uint8_t>()[src];
    }
  }
  return chunks;
}

#define MOE_LAYER_STEPS(T)                                    \
  template void router_jitter<T>(const RouterJitterArgs<T>&); \
  template MoEStats moe_stats<T>(const MoEStatsArgs&);        \
  template std::vector<TokenChunk> split_routing<T>(const SplitRoutingArgs&);
MOE_LAYER_STEPS(float)
MOE_LAYER_STEPS(double)
#undef MOE_LAYER_STEPS

}  // namespace moe::detail
