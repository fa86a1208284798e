// Op table rows (see op_table.h): router_topk, routing_stats (moe/kernels/ops_routing.h). Ref and
// Cpu only: the cuda column is empty, so supports(Cuda, ...) says "not implemented on cuda".
#pragma once

#include "kernels/rows_core.h"
#include "moe/kernels/ops_routing.h"

namespace moe::kernels {

namespace rows {

// Every id[i] of n entries in [0, bound), named op: name[i] = v is outside [0, what = bound).
inline void check_ids(const char* op, const char* name, const int32_t* id, int64_t n, const char* what,
                      int64_t bound) {
  for (int64_t i = 0; i < n; ++i) {
    MOE_CHECK(id[i] >= 0 && id[i] < bound, op, ": ", name, "[", i, "] = ", id[i], " is outside [0, ", what,
              " = ", bound, ")");
  }
}

}  // namespace rows

// ---------------------------------------------------------------------------------------------
template <typename T>
struct OpRow<RouterTopkArgs<T>> {
  using Args = RouterTopkArgs<T>;
  static constexpr const char* name = "router_topk";
  static HostFn<Args> ref() { return &ref::router_topk<T>; }
  static HostFn<Args> cpu() { return &cpu::router_topk<T>; }
  static DeviceFn<Args> cuda() { return nullptr; }
  static Support limits(Backend, const Args&) { return Support::yes(); }
  static bool validate(Backend, const Args& g) {
    using namespace validate;
    check_size(name, "T", g.T_);
    MOE_CHECK(g.E >= 1 && g.E <= rows::kMaxIndex, name, ": E must be in [1, 2^31), got ", g.E);
    MOE_CHECK(g.k >= 1 && g.k <= g.E, name, ": k must be in [1, E = ", g.E, "], got ", g.k);
    MOE_CHECK(g.n_groups >= 1 && g.E % g.n_groups == 0, name, ": n_groups = ", g.n_groups,
              " must be >= 1 and divide E = ", g.E);
    MOE_CHECK(g.topk_groups >= 1 && g.topk_groups <= g.n_groups, name,
              ": topk_groups must be in [1, n_groups = ", g.n_groups, "], got ", g.topk_groups);
    const int64_t eligible = g.topk_groups * (g.E / g.n_groups);
    MOE_CHECK(g.k <= eligible, name, ": k = ", g.k, " exceeds the ", eligible,
              " experts of topk_groups = ", g.topk_groups, " groups");
    if (g.T_ == 0) return false;
    check_ptr(name, "logits", g.logits);
    check_ptr(name, "scores", g.scores);
    check_ptr(name, "expert", g.expert);
    check_ptr(name, "weight", g.weight);
    return true;
  }
  // Per logit: the score (an exp and a few operations), the bias; per choice: its weight.
  static double flops(const Args& g) { return static_cast<double>(g.T_) * (6.0 * g.E + 4.0 * g.k); }
  static double bytes(const Args& g) {
    return static_cast<double>(g.T_) * (2.0 * sizeof(T) * g.E + (4.0 + sizeof(T)) * g.k) +
           (g.bias ? 8.0 * g.E : 0.0);
  }
};

// ---------------------------------------------------------------------------------------------
template <typename T>
struct OpRow<RoutingStatsArgs<T>> {
  using Args = RoutingStatsArgs<T>;
  static constexpr const char* name = "routing_stats";
  static HostFn<Args> ref() { return &ref::routing_stats<T>; }
  static HostFn<Args> cpu() { return &cpu::routing_stats<T>; }
  static DeviceFn<Args> cuda() { return nullptr; }
  static Support limits(Backend, const Args&) { return Support::yes(); }
  static bool any_output(const Args& g) {
    return g.routed || g.kept_count || g.not_kept || g.weight_sum || g.prob_sum || g.seq_routed ||
           g.seq_prob_sum || g.lse_sq_sum;
  }
  static bool validate(Backend b, const Args& g) {
    using namespace validate;
    check_size(name, "N", g.N);
    check_size(name, "T", g.T_);
    MOE_CHECK(g.N <= rows::kMaxIndex, name, ": N = ", g.N, " does not fit the int32 counts");
    MOE_CHECK(g.E >= 1 && g.E <= rows::kMaxIndex, name, ": E must be in [1, 2^31), got ", g.E);
    if (!any_output(g)) return false;
    const bool per_seq = g.seq_routed || g.seq_prob_sum;
    if (per_seq) {
      MOE_CHECK(g.seq_len >= 1, name, ": seq_len must be >= 1 for the per-sequence sums, got ", g.seq_len);
      MOE_CHECK(g.T_ % g.seq_len == 0, name, ": token count ", g.T_, " is not a multiple of seq_len ",
                g.seq_len);
    }
    if (g.N > 0) {
      if (g.routed || g.kept_count || g.weight_sum || g.seq_routed) check_ptr(name, "expert", g.expert);
      if (g.weight_sum) check_ptr(name, "weight", g.weight);
      if (g.seq_routed) check_ptr(name, "token", g.token);
      if (rows::on_host(b) && g.expert) rows::check_ids(name, "expert", g.expert, g.N, "E", g.E);
      if (rows::on_host(b) && g.seq_routed) rows::check_ids(name, "token", g.token, g.N, "T", g.T_);
    }
    if (g.T_ > 0) {
      if (g.prob_sum || g.seq_prob_sum) check_ptr(name, "scores", g.scores);
      if (g.lse_sq_sum) check_ptr(name, "logits", g.logits);
    }
    return true;
  }
  static double flops(const Args& g) {
    const double TE = static_cast<double>(g.T_) * g.E;
    return static_cast<double>(g.N) + (g.prob_sum || g.seq_prob_sum ? 2 * TE : 0) +
           (g.lse_sq_sum ? 4 * TE : 0);
  }
  static double bytes(const Args& g) {
    const double TE = static_cast<double>(g.T_) * g.E;
    return static_cast<double>(g.N) * (9 + sizeof(T)) + (g.prob_sum || g.seq_prob_sum ? sizeof(T) * TE : 0) +
           (g.lse_sq_sum ? sizeof(T) * TE : 0);
  }
};

}  // namespace moe::kernels
