// The routing ops: token-choice selection from router logits (router_topk) and the reduction of a
// routing into the sums its statistics and balancing losses are made of (routing_stats). Rows of the
// op table like those of ops.h (run, supports, op_flops, op_bytes), on Ref and Cpu; the cuda backend
// says "not implemented on cuda". Selection and sums run in double whatever the element type T, so
// decisions do not depend on T beyond the rounding of the logits themselves (docs/MOE_LAYER.md
// sections 2, 5 and 7).
#pragma once

#include <cstdint>

#include "moe/kernels/ops.h"

namespace moe::kernels {

// The score of a router logit: softmax over the row, or an independent sigmoid.
enum class RouterScore { Softmax, Sigmoid };
// What top-k selects on: the scores (then weights from the scores), or the logits (then weights
// from a softmax over the k selected logits).
enum class RouterOrder { ScoreThenTopk, TopkThenSoftmax };
// A group's score in group-limited routing: its largest value, or the sum of its two largest.
enum class RouterGroupScore { Max, SumTop2 };

// Indices of the k largest values of v[0..n), best first: ties to the lower index, NaN counts as
// -inf, and -inf is never preferred over a finite value (a strict total order, so the result is
// unique). Writes min(k, n) indices; allocation-free for k <= 16.
void topk_desc(const double* v, int64_t n, int64_t k, int32_t* out);

// The combine weights w (k) of a token's chosen experts idx (k), from its logits l (E) and scores
// s (E): scaling · softmax over the k chosen logits (TopkThenSoftmax), else scaling · s[idx[j]],
// divided by their sum when normalize. The Cpu router_topk and the host routings (hash, balanced)
// use it.
void topk_weights(RouterOrder order, bool normalize, double scaling, const double* l, const double* s,
                  const int32_t* idx, int64_t k, double* w);

// ---------------------------------------------------------------------------------------------
// router_topk: each token's k experts and combine weights from its router logits, row by row, in
// double (l = the row's logits widened to double):
//   s = softmax(l) or sigmoid(l)                                  scores[t, :] = s rounded to T
//   v = s + bias (ScoreThenTopk)  or  v = l + bias (TopkThenSoftmax)       the selection values
//   n_groups = G > 1: experts form G contiguous groups of E / G; a group's score is the max of its v
//     (Max) or the sum of its two largest v (SumTop2; a one-expert group: its value); the topk_groups
//     best groups stay eligible (ties to the lower group), the others' v become -inf
//   expert[t, 0..k) = the k largest v, best first, ranked as topk_desc ranks them
//   weight[t, j] = scaling * s[e_j], or scaling * s[e_j] / Σ_j' s[e_j'] with normalize  (ScoreThenTopk)
//                = scaling * exp(l[e_j]) / Σ_j' exp(l[e_j'])                          (TopkThenSoftmax)
//   The bias only selects: it enters neither the scores nor the weights. bias null: zero.
//   k must be in [1, E] and at most the experts of topk_groups groups. T_ = 0: nothing to do.
template <typename T>
struct RouterTopkArgs {
  int64_t T_ = 0;  // tokens
  int64_t E = 0;   // experts
  int64_t k = 0;   // experts per token
  RouterScore score = RouterScore::Softmax;
  RouterOrder order = RouterOrder::ScoreThenTopk;
  int64_t n_groups = 1, topk_groups = 1;
  RouterGroupScore group_score = RouterGroupScore::SumTop2;
  bool normalize = false;
  double scaling = 1.0;
  const T* logits = nullptr;     // (T, E)
  const double* bias = nullptr;  // (E) or null
  T* scores = nullptr;           // (T, E) out
  int32_t* expert = nullptr;     // (T, k) out
  T* weight = nullptr;           // (T, k) out
  double* weight_f64 = nullptr;  // (T, k) out or null: the weights before rounding to T
};
template <typename T>
void router_topk(Exec e, const RouterTopkArgs<T>& args) {
  run(e, args);
}

// ---------------------------------------------------------------------------------------------
// routing_stats: the sums a routing's statistics and balancing losses are made of, in one call.
// Every sum runs in double in a fixed order (so the result does not depend on the thread count):
//   routed[e]            = #{a : expert[a] = e}                  over all N assignments
//   kept_count[e]        = #{a : expert[a] = e, kept[a] != 0}
//   not_kept[0]          = #{a : kept[a] == 0}
//   weight_sum[e]        = Σ_{a = 0, 1, ... with expert[a] = e} weight[a]
//   prob_sum[e]          = Σ_{t = 0, 1, ...} p[t, e],  p = scores (Softmax) or, per token, the
//                          scores divided by their sum over e (Sigmoid)
//   seq_routed[q, e]     = #{a : expert[a] = e, token[a] / seq_len = q}      q in [0, Q)
//   seq_prob_sum[q, e]   = Σ_{t in [q · seq_len, (q + 1) · seq_len), ascending} p[t, e]
//   lse_sq_sum[0]        = Σ_{t = 0, 1, ...} logsumexp(logits[t, :])²
// Q = T_ / seq_len, and seq_len must divide T_. kept null: all kept. active (top-p routing): an
// assignment with active[a] == 0 was not selected and counts in none of the assignment sums. Every output may
// be null (not wanted); an input only a null output reads may be null too. Counts are exact (N < 2^31).
template <typename T>
struct RoutingStatsArgs {
  int64_t N = 0;   // assignments
  int64_t T_ = 0;  // tokens
  int64_t E = 0;   // experts
  RouterScore score = RouterScore::Softmax;
  int64_t seq_len = 0;              // tokens per sequence (for seq_routed and seq_prob_sum)
  const int32_t* token = nullptr;   // (N): for seq_routed
  const int32_t* expert = nullptr;  // (N)
  const uint8_t* kept = nullptr;    // (N) or null
  const uint8_t* active = nullptr;  // (N) or null: all selected
  const T* weight = nullptr;        // (N): for weight_sum
  const T* scores = nullptr;        // (T, E): for prob_sum and seq_prob_sum
  const T* logits = nullptr;        // (T, E): for lse_sq_sum
  int32_t* routed = nullptr;        // (E) out or null
  int32_t* kept_count = nullptr;    // (E) out or null
  int32_t* not_kept = nullptr;      // (1) out or null
  double* weight_sum = nullptr;     // (E) out or null
  double* prob_sum = nullptr;       // (E) out or null
  int32_t* seq_routed = nullptr;    // (Q, E) out or null
  double* seq_prob_sum = nullptr;   // (Q, E) out or null
  double* lse_sq_sum = nullptr;     // (1) out or null
};
template <typename T>
void routing_stats(Exec e, const RoutingStatsArgs<T>& args) {
  run(e, args);
}

}  // namespace moe::kernels
