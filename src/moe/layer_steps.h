// The MoE layer's host steps around its ops: the router GEMM's call and the input jitter, MoEStats
// from the routing_stats op's sums, and the split of a routing into token chunks. The moves of rows
// between assignment order and expert order are ops (moe/kernels/ops_moves.h).
#pragma once

#include <cstdint>
#include <vector>

#include "moe/kernels/ops.h"
#include "moe/kernels/ops_moves.h"
#include "moe/moe/layer.h"
#include "moe/moe/router.h"

namespace moe::detail {

template <typename T>
T* ptr(const Tensor& t) {
  return t.defined() ? t.data<T>() : nullptr;
}

// C (M, N) = op(A) · op(B) + beta · C, contiguous row-major operands.
template <typename T>
struct MatmulArgs {
  int64_t M = 0, N = 0, K = 0;
  const T* A = nullptr;  // (M, K), or (K, M) when trans_a
  bool trans_a = false;
  const T* B = nullptr;  // (K, N), or (N, K) when trans_b
  bool trans_b = false;
  T* C = nullptr;  // (M, N)
  T beta = 0;
};

template <typename T>
void matmul(kernels::Backend be, const MatmulArgs<T>& a) {
  kernels::GemmArgs<T> g;
  g.M = a.M;
  g.N = a.N;
  g.K = a.K;
  g.A = a.A;
  g.lda = a.trans_a ? a.M : a.K;
  g.trans_a = a.trans_a;
  g.B = a.B;
  g.ldb = a.trans_b ? a.K : a.N;
  g.trans_b = a.trans_b;
  g.C = a.C;
  g.ldc = a.N;
  g.beta = a.beta;
  kernels::gemm(be, g);
}

// Router input jitter (training): jitter[i] = 1 − eps + 2·eps·u(i) and x_r[i] = x[i] · jitter[i],
// u the stream Rng(seed).fork(step), so the same whatever the thread count.
template <typename T>
struct RouterJitterArgs {
  int64_t n = 0;  // T · d
  double eps = 0.0;
  uint64_t seed = 0, step = 0;
  const T* x = nullptr;  // (T, d)
  T* jitter = nullptr;   // (T, d) out
  T* x_r = nullptr;      // (T, d) out
};
template <typename T>
void router_jitter(const RouterJitterArgs<T>& a);

// The statistics and balancing losses of a routing (docs/MOE_LAYER.md sections 5 and 7): one
// routing_stats op (moe/kernels/ops_routing.h) on `exec` reduces the routing into counts and sums,
// which are read once here and turned into MoEStats. `skipped` of its assignments that are not kept
// were skipped for a low weight, the others dropped by capacity. The loss values are those of
// balance_losses (balance.h), which the backward uses for their gradients.
struct MoEStatsArgs {
  kernels::Exec exec = kernels::Backend::Cpu;
  const MoEConfig* cfg = nullptr;
  const Routing* routing = nullptr;  // weights, scores and logits of dtype T
  int64_t skipped = 0;
};
template <typename T>
MoEStats moe_stats(const MoEStatsArgs& a);

// The assignments of tokens [t0, t1) of a routing, their tokens counted from t0.
struct TokenChunk {
  int64_t t0 = 0, t1 = 0;
  Routing routing;              // the chunk's assignments, in the whole routing's order
  std::vector<int32_t> assign;  // (N_chunk) index of each in the whole routing; empty: the same
};

// Splits a routing into n_chunks chunks of contiguous tokens, chunk c holding [c·T/n, (c+1)·T/n).
// One chunk is the routing itself (no copy of its assignments).
struct SplitRoutingArgs {
  const Routing* routing = nullptr;  // weights of dtype T
  int64_t n_chunks = 1;
};
template <typename T>
std::vector<TokenChunk> split_routing(const SplitRoutingArgs& a);

}  // namespace moe::detail
