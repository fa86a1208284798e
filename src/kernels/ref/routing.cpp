// Reference routing ops (moe/kernels/ops_routing.h): router_topk and routing_stats, one row at a
// time in double, written as the formulas. The ranking is a stable sort of every index (value
// descending, NaN as -inf), which is the rank order topk_desc defines. The Cpu path performs the
// same double operations in the same order, so the two agree bit for bit.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include "kernels/ref/ref.h"

namespace moe::kernels::ref {

namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

double sigmoid(double z) { return z >= 0 ? 1.0 / (1.0 + std::exp(-z)) : std::exp(z) / (1.0 + std::exp(z)); }

// The scores of one row of logits l (E): softmax or sigmoid.
std::vector<double> scores_of(RouterScore fn, const std::vector<double>& l) {
  std::vector<double> s(l.size());
  if (fn == RouterScore::Sigmoid) {
    for (size_t i = 0; i < l.size(); ++i) s[i] = sigmoid(l[i]);
    return s;
  }
  const double mx = *std::max_element(l.begin(), l.end());
  double z = 0;
  for (size_t i = 0; i < l.size(); ++i) {
    s[i] = std::exp(l[i] - mx);
    z += s[i];
  }
  for (double& si : s) si /= z;
  return s;
}

// The first k indices of v in rank order: value descending, NaN as -inf, ties to the lower index.
std::vector<int32_t> ranked(const std::vector<double>& v, int64_t k) {
  std::vector<int32_t> ix(v.size());
  std::iota(ix.begin(), ix.end(), 0);
  auto key = [&v](int32_t i) { return std::isnan(v[i]) ? kNegInf : v[i]; };
  std::stable_sort(ix.begin(), ix.end(), [&](int32_t a, int32_t b) { return key(a) > key(b); });
  ix.resize(std::min(ix.size(), static_cast<size_t>(k)));
  return ix;
}

// Group-limited routing: the v of every group outside the topk_groups best becomes -inf.
template <typename T>
void limit_groups(const RouterTopkArgs<T>& a, std::vector<double>& v) {
  const int64_t G = a.n_groups, per = a.E / G;
  std::vector<double> group_score(static_cast<size_t>(G));
  for (int64_t g = 0; g < G; ++g) {
    const std::vector<double> vg(v.begin() + g * per, v.begin() + (g + 1) * per);  // (per)
    if (a.group_score == RouterGroupScore::Max || per == 1) {
      group_score[g] = *std::max_element(vg.begin(), vg.end());
    } else {
      const std::vector<int32_t> top2 = ranked(vg, 2);
      group_score[g] = vg[top2[0]] + vg[top2[1]];
    }
  }
  std::vector<bool> eligible(static_cast<size_t>(G), false);
  for (int32_t g : ranked(group_score, a.topk_groups)) eligible[g] = true;
  for (int64_t g = 0; g < G; ++g) {
    if (eligible[g]) continue;
    for (int64_t i = 0; i < per; ++i) v[g * per + i] = kNegInf;
  }
}

// The combine weights (k) of the chosen experts idx, from the row's logits l and scores s.
template <typename T>
std::vector<double> weights_of(const RouterTopkArgs<T>& a, const std::vector<double>& l,
                               const std::vector<double>& s, const std::vector<int32_t>& idx) {
  const size_t k = idx.size();
  std::vector<double> w(k);
  if (a.order == RouterOrder::TopkThenSoftmax) {
    double mx = kNegInf;
    for (int32_t e : idx) mx = std::max(mx, l[e]);
    double z = 0;
    for (size_t j = 0; j < k; ++j) {
      w[j] = std::exp(l[idx[j]] - mx);
      z += w[j];
    }
    for (size_t j = 0; j < k; ++j) w[j] = a.scaling * w[j] / z;
    return w;
  }
  double z = 0;
  for (int32_t e : idx) z += s[e];
  for (size_t j = 0; j < k; ++j) w[j] = a.scaling * (a.normalize ? s[idx[j]] / z : s[idx[j]]);
  return w;
}

}  // namespace

template <typename T>
void router_topk(const RouterTopkArgs<T>& a) {
  const int64_t E = a.E, k = a.k;
  for (int64_t t = 0; t < a.T_; ++t) {
    std::vector<double> l(static_cast<size_t>(E));  // (E)
    for (int64_t e = 0; e < E; ++e) l[e] = static_cast<double>(a.logits[t * E + e]);
    const std::vector<double> s = scores_of(a.score, l);  // (E)
    for (int64_t e = 0; e < E; ++e) a.scores[t * E + e] = static_cast<T>(s[e]);
    std::vector<double> v = a.order == RouterOrder::TopkThenSoftmax ? l : s;  // (E) selection values
    for (int64_t e = 0; e < E; ++e) v[e] += a.bias ? a.bias[e] : 0.0;
    if (a.n_groups > 1) limit_groups(a, v);
    const std::vector<int32_t> idx = ranked(v, k);           // (k)
    const std::vector<double> w = weights_of(a, l, s, idx);  // (k)
    for (int64_t j = 0; j < k; ++j) {
      a.expert[t * k + j] = idx[j];
      a.weight[t * k + j] = static_cast<T>(w[j]);
      if (a.weight_f64) a.weight_f64[t * k + j] = w[j];
    }
  }
}

namespace {

// The assignment sums: counts per expert (and per sequence), assignments not kept, weight sums.
template <typename T>
void assignment_sums(const RoutingStatsArgs<T>& a) {
  const int64_t E = a.E;
  if (a.routed) std::fill(a.routed, a.routed + E, 0);
  if (a.kept_count) std::fill(a.kept_count, a.kept_count + E, 0);
  if (a.not_kept) *a.not_kept = 0;
  if (a.weight_sum) std::fill(a.weight_sum, a.weight_sum + E, 0.0);
  if (a.seq_routed) std::fill(a.seq_routed, a.seq_routed + (a.T_ / a.seq_len) * E, 0);
  for (int64_t i = 0; i < a.N; ++i) {
    if (a.active != nullptr && a.active[i] == 0) continue;
    const bool kept = a.kept == nullptr || a.kept[i] != 0;
    if (a.routed) ++a.routed[a.expert[i]];
    if (a.kept_count && kept) ++a.kept_count[a.expert[i]];
    if (a.not_kept && !kept) ++*a.not_kept;
    if (a.weight_sum) a.weight_sum[a.expert[i]] += static_cast<double>(a.weight[i]);
    if (a.seq_routed) ++a.seq_routed[(a.token[i] / a.seq_len) * E + a.expert[i]];
  }
}

// The token sums: the probabilities p per expert (and per sequence), and the squared logsumexps.
template <typename T>
void token_sums(const RoutingStatsArgs<T>& a) {
  const int64_t E = a.E;
  if (a.prob_sum) std::fill(a.prob_sum, a.prob_sum + E, 0.0);
  if (a.seq_prob_sum) std::fill(a.seq_prob_sum, a.seq_prob_sum + (a.T_ / a.seq_len) * E, 0.0);
  if (a.lse_sq_sum) *a.lse_sq_sum = 0.0;
  for (int64_t t = 0; t < a.T_; ++t) {
    if (a.prob_sum || a.seq_prob_sum) {
      std::vector<double> p(static_cast<size_t>(E));  // (E)
      for (int64_t e = 0; e < E; ++e) p[e] = static_cast<double>(a.scores[t * E + e]);
      if (a.score == RouterScore::Sigmoid) {
        double z = 0;
        for (double pe : p) z += pe;
        for (double& pe : p) pe /= z;
      }
      for (int64_t e = 0; e < E; ++e) {
        if (a.prob_sum) a.prob_sum[e] += p[e];
        if (a.seq_prob_sum) a.seq_prob_sum[(t / a.seq_len) * E + e] += p[e];
      }
    }
    if (a.lse_sq_sum) {
      std::vector<double> l(static_cast<size_t>(E));  // (E)
      for (int64_t e = 0; e < E; ++e) l[e] = static_cast<double>(a.logits[t * E + e]);
      const double mx = *std::max_element(l.begin(), l.end());
      double z = 0;
      for (double le : l) z += std::exp(le - mx);
      const double lse = mx + std::log(z);
      *a.lse_sq_sum += lse * lse;
    }
  }
}

}  // namespace

template <typename T>
void routing_stats(const RoutingStatsArgs<T>& a) {
  assignment_sums(a);
  token_sums(a);
}

template void router_topk<float>(const RouterTopkArgs<float>&);
template void router_topk<double>(const RouterTopkArgs<double>&);
template void routing_stats<float>(const RoutingStatsArgs<float>&);
template void routing_stats<double>(const RoutingStatsArgs<double>&);

}  // namespace moe::kernels::ref
