// CPU routing ops (moe/kernels/ops_routing.h) and the top-k selection they share with the moe layer.
//   router_topk:   rows in parallel (moe::parallel_for), each chunk of rows with one scratch block
//                  (no allocation per row); a row is read once, widened to double, and scored,
//                  biased, group-limited, ranked and weighted while it is in cache. Each row performs
//                  the reference's double operations in the reference's order: bit-identical to
//                  the Ref backend, whatever the thread count.
//   routing_stats: the (T, E) passes in parallel: logsumexps and sigmoid row sums per row, the
//                  probability sums per block of experts, each expert's sum over tokens in token
//                  order; the assignment pass (N counts and weight additions) in assignment order.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include "kernels/cpu/cpu.h"
#include "moe/core/parallel.h"

namespace moe::kernels {

namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();
constexpr int64_t kInsertionK = 16;  // up to this k, top-k by insertion into the sorted output

// Rows per chunk for row-wise passes over (T, E): about 16K elements, so small batches run inline.
int64_t row_grain(int64_t E) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(E, 1)); }

double rank_key(const double* v, int64_t i) { return std::isnan(v[i]) ? kNegInf : v[i]; }

// topk_desc with a scratch of n indices for k > kInsertionK (null: allocated here).
void topk_into(const double* v, int64_t n, int64_t k, int32_t* out, int32_t* scratch) {
  const int64_t kk = std::min(k, n);
  if (kk <= 0) return;
  if (kk <= kInsertionK) {
    int64_t len = 0;
    for (int64_t i = 0; i < n; ++i) {
      const double vi = rank_key(v, i);
      // i comes after every entry already taken (higher index): it beats out[j] only with a
      // strictly larger value.
      if (len == kk && !(vi > rank_key(v, out[len - 1]))) continue;
      int64_t j = len < kk ? len++ : kk - 1;
      for (; j > 0 && vi > rank_key(v, out[j - 1]); --j) out[j] = out[j - 1];
      out[j] = static_cast<int32_t>(i);
    }
    return;
  }
  std::vector<int32_t> own;
  if (scratch == nullptr) {
    own.resize(static_cast<size_t>(n));
    scratch = own.data();
  }
  std::iota(scratch, scratch + n, 0);
  auto better = [v](int32_t a, int32_t b) {
    const double va = rank_key(v, a), vb = rank_key(v, b);
    return va > vb || (va == vb && a < b);
  };
  std::partial_sort(scratch, scratch + kk, scratch + n, better);
  std::copy(scratch, scratch + kk, out);
}

}  // namespace

void topk_desc(const double* v, int64_t n, int64_t k, int32_t* out) { topk_into(v, n, k, out, nullptr); }

void topk_weights(RouterOrder order, bool normalize, double scaling, const double* l, const double* s,
                  const int32_t* idx, int64_t k, double* w) {
  if (order == RouterOrder::TopkThenSoftmax) {
    double mx = kNegInf;
    for (int64_t j = 0; j < k; ++j) mx = std::max(mx, l[idx[j]]);
    double z = 0;
    for (int64_t j = 0; j < k; ++j) z += (w[j] = std::exp(l[idx[j]] - mx));
    for (int64_t j = 0; j < k; ++j) w[j] = scaling * w[j] / z;
    return;
  }
  double z = 0;
  for (int64_t j = 0; j < k; ++j) z += s[idx[j]];
  for (int64_t j = 0; j < k; ++j) w[j] = scaling * (normalize ? s[idx[j]] / z : s[idx[j]]);
}

namespace cpu {

namespace {

double sigmoid(double z) { return z >= 0 ? 1.0 / (1.0 + std::exp(-z)) : std::exp(z) / (1.0 + std::exp(z)); }

// One chunk's scratch for router_topk: a row's logits, scores and selection values, the group
// scores and picks, the top-k index scratch and the weights.
struct RowScratch {
  std::vector<double> l, s, v, group_score, w;  // (E), (E), (E), (G), (k)
  std::vector<int32_t> ix, group_pick;          // (E), (topk_groups)
  std::vector<uint8_t> eligible;                // (G)
  template <typename T>
  explicit RowScratch(const RouterTopkArgs<T>& a)
      : l(a.E),
        s(a.E),
        v(a.E),
        group_score(a.n_groups),
        w(a.k),
        ix(a.E),
        group_pick(a.topk_groups),
        eligible(a.n_groups) {}
};

// Softmax or sigmoid of the row l (E) into s (E).
void score_row(RouterScore fn, const double* l, int64_t E, double* s) {
  if (fn == RouterScore::Sigmoid) {
    for (int64_t i = 0; i < E; ++i) s[i] = sigmoid(l[i]);
    return;
  }
  const double mx = *std::max_element(l, l + E);
  double z = 0;
  for (int64_t i = 0; i < E; ++i) z += (s[i] = std::exp(l[i] - mx));
  for (int64_t i = 0; i < E; ++i) s[i] /= z;
}

// Group-limited routing on v (E): the groups outside the topk_groups best get -inf.
template <typename T>
void limit_groups(const RouterTopkArgs<T>& a, double* v, RowScratch& w) {
  const int64_t G = a.n_groups, per = a.E / G;
  for (int64_t g = 0; g < G; ++g) {
    const double* vg = v + g * per;
    if (a.group_score == RouterGroupScore::Max || per == 1) {
      w.group_score[g] = *std::max_element(vg, vg + per);
    } else {
      int32_t top2[2];
      topk_into(vg, per, 2, top2, nullptr);
      w.group_score[g] = vg[top2[0]] + vg[top2[1]];
    }
  }
  topk_into(w.group_score.data(), G, a.topk_groups, w.group_pick.data(), w.ix.data());
  std::fill(w.eligible.begin(), w.eligible.end(), uint8_t{0});
  for (int32_t g : w.group_pick) w.eligible[g] = 1;
  for (int64_t g = 0; g < G; ++g) {
    if (!w.eligible[g]) std::fill(v + g * per, v + (g + 1) * per, kNegInf);
  }
}

// The weights wt (k) of the chosen experts idx (k), from the row's logits l and scores s.
template <typename T>
void weights_of(const RouterTopkArgs<T>& a, const double* l, const double* s, const int32_t* idx,
                double* wt) {
  topk_weights(a.order, a.normalize, a.scaling, l, s, idx, a.k, wt);
}

// Token t: scores, selection, weights.
template <typename T>
void route_row(const RouterTopkArgs<T>& a, int64_t t, RowScratch& w) {
  const int64_t E = a.E, k = a.k;
  double* l = w.l.data();
  double* s = w.s.data();
  for (int64_t e = 0; e < E; ++e) l[e] = static_cast<double>(a.logits[t * E + e]);
  score_row(a.score, l, E, s);
  T* st = a.scores + t * E;
  for (int64_t e = 0; e < E; ++e) st[e] = static_cast<T>(s[e]);
  // The selection values: the scores or logits themselves when there is neither a bias to add nor
  // groups to mask (adding a zero bias would change no comparison).
  const double* base = a.order == RouterOrder::TopkThenSoftmax ? l : s;
  const double* v = base;
  if (a.bias || a.n_groups > 1) {
    double* vm = w.v.data();
    for (int64_t e = 0; e < E; ++e) vm[e] = base[e] + (a.bias ? a.bias[e] : 0.0);
    if (a.n_groups > 1) limit_groups(a, vm, w);
    v = vm;
  }
  int32_t* idx = a.expert + t * k;
  topk_into(v, E, k, idx, w.ix.data());
  double* wt = a.weight_f64 ? a.weight_f64 + t * k : w.w.data();
  weights_of(a, l, s, idx, wt);
  for (int64_t j = 0; j < k; ++j) a.weight[t * k + j] = static_cast<T>(wt[j]);
}

}  // namespace

template <typename T>
void router_topk(const RouterTopkArgs<T>& a) {
  parallel_for(a.T_, row_grain(a.E), [&a](int64_t t0, int64_t t1) {
    RowScratch w(a);
    for (int64_t t = t0; t < t1; ++t) route_row(a, t, w);
  });
}

namespace {

// The assignment pass, in assignment order: counts, assignments not kept, weight sums.
template <typename T>
void assignment_sums(const RoutingStatsArgs<T>& a) {
  const int64_t E = a.E;
  if (a.routed) std::fill(a.routed, a.routed + E, 0);
  if (a.kept_count) std::fill(a.kept_count, a.kept_count + E, 0);
  if (a.weight_sum) std::fill(a.weight_sum, a.weight_sum + E, 0.0);
  if (a.seq_routed) std::fill(a.seq_routed, a.seq_routed + (a.T_ / a.seq_len) * E, 0);
  int32_t not_kept = 0;
  for (int64_t i = 0; i < a.N; ++i) {
    if (a.active != nullptr && a.active[i] == 0) continue;
    const bool kept = a.kept == nullptr || a.kept[i] != 0;
    not_kept += kept ? 0 : 1;
    if (a.expert == nullptr) continue;
    const int32_t e = a.expert[i];
    if (a.routed) ++a.routed[e];
    if (a.kept_count && kept) ++a.kept_count[e];
    if (a.weight_sum) a.weight_sum[e] += static_cast<double>(a.weight[i]);
    if (a.seq_routed) ++a.seq_routed[(a.token[i] / a.seq_len) * E + e];
  }
  if (a.not_kept) *a.not_kept = not_kept;
}

// Σ_t logsumexp(l[t, :])²: the row values in parallel, their sum in token order.
template <typename T>
double lse_sq_sum(const RoutingStatsArgs<T>& a) {
  const int64_t E = a.E;
  std::vector<double> lse(static_cast<size_t>(a.T_));  // (T)
  parallel_for(a.T_, row_grain(E), [&](int64_t t0, int64_t t1) {
    std::vector<double> l(static_cast<size_t>(E));  // (E)
    for (int64_t t = t0; t < t1; ++t) {
      for (int64_t e = 0; e < E; ++e) l[e] = static_cast<double>(a.logits[t * E + e]);
      const double mx = *std::max_element(l.begin(), l.end());
      double z = 0;
      for (int64_t e = 0; e < E; ++e) z += std::exp(l[e] - mx);
      lse[t] = mx + std::log(z);
    }
  });
  double sum = 0;
  for (double v : lse) sum += v * v;
  return sum;
}

// The probability sums: blocks of experts in parallel, each expert's sum over tokens in token
// order (the order of the reference); sigmoid scores divided by their row sums first.
template <typename T>
void prob_sums(const RoutingStatsArgs<T>& a) {
  const int64_t E = a.E, T_ = a.T_;
  std::vector<double> row_sum;  // (T), sigmoid scores only
  if (a.score == RouterScore::Sigmoid) {
    row_sum.resize(static_cast<size_t>(T_));
    parallel_for(T_, row_grain(E), [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        double z = 0;
        for (int64_t e = 0; e < E; ++e) z += static_cast<double>(a.scores[t * E + e]);
        row_sum[t] = z;
      }
    });
  }
  const bool sig = a.score == RouterScore::Sigmoid;
  parallel_for(E, std::max<int64_t>(1, 8192 / std::max<int64_t>(T_, 1)), [&](int64_t e0, int64_t e1) {
    if (a.prob_sum) std::fill(a.prob_sum + e0, a.prob_sum + e1, 0.0);
    for (int64_t t = 0; t < T_; ++t) {
      const T* st = a.scores + t * E;
      double* seq = a.seq_prob_sum ? a.seq_prob_sum + (t / a.seq_len) * E : nullptr;
      if (seq && t % a.seq_len == 0) std::fill(seq + e0, seq + e1, 0.0);
      for (int64_t e = e0; e < e1; ++e) {
        const double p = sig ? static_cast<double>(st[e]) / row_sum[t] : static_cast<double>(st[e]);
        if (a.prob_sum) a.prob_sum[e] += p;
        if (seq) seq[e] += p;
      }
    }
  });
}

}  // namespace

template <typename T>
void routing_stats(const RoutingStatsArgs<T>& a) {
  assignment_sums(a);
  if (a.prob_sum || a.seq_prob_sum) prob_sums(a);
  if (a.lse_sq_sum) *a.lse_sq_sum = lse_sq_sum(a);
}

template void router_topk<float>(const RouterTopkArgs<float>&);
template void router_topk<double>(const RouterTopkArgs<double>&);
template void routing_stats<float>(const RoutingStatsArgs<float>&);
template void routing_stats<double>(const RoutingStatsArgs<double>&);

}  // namespace cpu

}  // namespace moe::kernels
