// The one GEMM over weights in a storage format (grouped_gemm_w); the formats, WeightView and their
// packing are in moe/kernels/weight_view.h.
#pragma once

#include <cstdint>

#include "moe/kernels/ops.h"
#include "moe/kernels/weight_view.h"

namespace moe::kernels {

// W8A8 (int8-packed weights): row p's activations a (K) (after the pre-activation, if any) are
// quantized as  s_p = max_k |a_k| / 127,  q_k = a_k / s_p rounded to nearest even (in [-127, 127]);
// a row with a non-finite value gets s_p = NaN (its outputs are NaN). Then, over the groups g in
// order, with exact integer sums:
//   C[p, n] = s_p · Σ_g scale[n, g] · Σ_{k in g} q_k · w_q[n, k]
// (fp32 on the Cpu backend: each group's term is one FMA into the sum, then one multiply by s_p).
// W4A8 (int4-packed weights): the rows quantized the same way, then over the groups g in order
//   C[p, n] = s_p · Σ_g ( scale[n, g] · Σ_{k in g} q_k · w_q[n, k]  +  min[n, g] · Σ_{k in g} q_k )
// (fp32 on the Cpu backend: each group's two terms are two FMAs into the sum, the scale's first, then
// one multiply by s_p), which is s_p · Σ_k q_k · (scale · w_q + min), the int4 weight.

// grouped_gemm_w: for expert e and each row p in [offsets[e], offsets[e+1]):
//   C[p, :] (N) = beta * C[p, :] + a_p (K) · op(W_e)       a_p = A[row(p), :], row(p) = gather ? gather[p] :
//   p
// (with a_preact, a_p = act of the stored row: SwiGLU silu(G) * U of [G | U], lda >= 2K; with bf16
// weights a_p is then rounded to bf16). beta == 0 overwrites C (NaN in C does not propagate).
// With scale or out_row (beta must be 0), row p is stored as grouped_gemm_scatter stores it:
//   C[out_row[p], :] = scale[p] * (a_p · op(W_e))   (scale null: 1; out_row null: p)
// Experts with no rows read nothing. The Cpu result of a row does not depend on the thread count;
// with int8 / int4 weights it does not depend on the other rows either (a sequence decodes the same
// alone or in a batch).
struct GroupedGemmWArgs {
  int64_t E = 0;
  const int32_t* offsets = nullptr;  // (E + 1)
  const float* A = nullptr;          // rows of length K (2K with a_preact SwiGLU), row stride lda
  int64_t lda = 0;
  const int32_t* gather = nullptr;  // (offsets[E]) or null
  WeightView W;                     // E experts, each op(W_e) (K, N)
  float* C = nullptr;               // (offsets[E], N), or rows out_row[p], row stride ldc
  int64_t ldc = 0;
  float beta = 0;
  const float* scale = nullptr;      // (offsets[E]) or null
  const int32_t* out_row = nullptr;  // (offsets[E]) or null; must not repeat
  bool a_preact = false;
  Activation act = Activation::SwiGLU;
};
inline void grouped_gemm_w(Exec e, const GroupedGemmWArgs& args) { run(e, args); }

}  // namespace moe::kernels
