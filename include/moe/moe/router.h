// Routing: from router logits to a list of (token, expert, weight) assignments, with capacity.
// Selection math runs in double whatever the layer dtype. docs/MOE_LAYER.md sections 1-3.
#pragma once

#include <cstdint>
#include <vector>

#include "moe/core/tensor.h"
#include "moe/kernels/ops_routing.h"
#include "moe/moe/config.h"

namespace moe {

// The routing decision: a list of N assignments (token, expert, weight). For token choice, hash and
// balanced routing N = T * k and assignment a = t * k + j is token t's j-th choice (best first);
// for expert choice N = E * C and a = e * C + c is expert e's c-th token (best first).
struct Routing {
  int64_t n_tokens = 0;
  int64_t n_assign = 0;
  int64_t capacity = 0;  // per expert; 0 in dropless mode
  Tensor token;          // (N) i32
  Tensor expert;         // (N) i32
  Tensor weight;  // (N) layer dtype: the combine weight, before dropping (a dropped one is simply not used)
  Tensor kept;    // (N) u8: 0 when dropped by capacity (or not selected by top-p)
  // Top-p routing (RouterConfig::top_p > 0): (N) u8, 0 for a candidate slot the token did not select
  // (its weight is 0 and it counts nowhere: loads, balancing losses, capacity). The selected slots
  // of a token are a prefix of its k. Undefined when every slot is selected.
  Tensor active;
  int64_t n_active = 0;  // selected assignments (N without top-p): mean k = n_active / n_tokens
  Tensor logits;         // (T, E) router logits (after jitter of the input, if any)
  Tensor scores;         // (T, E) softmax or sigmoid of the logits
};

// logits: (T, E) of dtype F32 or F64. bias: (E) or undefined. token_ids: (T) i32, needed for hash.
// Fills every field of Routing (weights in the logits' dtype). Token choice runs as the router_topk
// op (moe/kernels/ops_routing.h) on `exec`; expert choice, hash, balanced routing and capacity are
// host code here.
Routing route(const MoEConfig& cfg, const Tensor& logits, const Tensor& bias, const Tensor* token_ids,
              kernels::Exec exec = kernels::Backend::Cpu);

// Whether assignment a is selected (always true without top-p routing).
inline bool assignment_active(const Routing& r, int64_t a) {
  return !r.active.defined() || r.active.data<uint8_t>()[a] != 0;
}

// Dynamic expert skipping (inference): marks every kept assignment whose combine weight is below
// rc.skip_threshold as not kept, leaving the other weights as they are. Returns how many it
// marked; 0 (and no change) when the threshold is 0.
int64_t skip_low_weights(const RouterConfig& rc, Routing& r);

// Gradient of the combine weights back to the logits: d_weight (N) -> d_logits (T, E), added to
// d_logits (which must be zero-initialised or hold other contributions). Dropped assignments must
// carry d_weight = 0.
void route_backward(const MoEConfig& cfg, const Routing& r, const double* d_weight, double* d_logits);

// Capacity per expert for T tokens (0 in dropless mode); token choice, hash and balanced routing.
int64_t token_capacity(const RouterConfig& rc, int64_t n_tokens, int64_t n_experts);
// Capacity per expert for expert-choice routing (never 0; at most T).
int64_t expert_choice_capacity(const RouterConfig& rc, int64_t n_tokens, int64_t n_experts);

// Indices of the k largest values of v[0..n), best first, ties to the lower index; -inf entries
// are never preferred over finite ones (the kernels' ranking, moe/kernels/ops_routing.h).
using kernels::topk_desc;

uint64_t splitmix64(uint64_t z);

}  // namespace moe
