// bf16-weight GEMMs: weights stored as bf16 (uint16_t bit patterns, see moe/core/dtype.h), activations
// and outputs fp32, accumulation fp32 (double in the reference).
//
// The activations are rounded to bf16 (round to nearest even, as moe::f32_to_bf16) as they are read,
// so every product a·w is a product of two bf16 values, which is exact in fp32. The only rounding is
// in the accumulation: a result is within (K + 4) · 2^-24 · (Σ_k |a_k·w_k| + |beta·c|) of the exact sum
// over the rounded values (what the Ref backend computes, in double).
//
// The Cpu backend uses the AVX-512 BF16 dot-product instruction (vdpbf16ps) where the CPU has it, and
// otherwise converts bf16 to fp32 and uses FMA (AVX-512F, AVX2) or portable code. vdpbf16ps treats
// subnormal inputs and results as zero, so on that path values below 2^-126 in magnitude are flushed.
// Results are bit-identical for any thread count (each output element is summed in a fixed K order).
#pragma once

#include <cstdint>
#include <string>

#include "moe/kernels/ops.h"

namespace moe::kernels {

// grouped_gemm_bf16w: grouped_gemm (ops.h) with bf16 weights; grouped_gemm_w (weights.h) with a bf16
// WeightView, which it calls.
//   For expert e and each row p in [offsets[e], offsets[e+1]):
//     C[p, :] (N) = beta * C[p, :] + bf16(A[row(p), :]) (K) · op(W_e)      row(p) = gather ? gather[p] : p
//   W_e = W + e * N * K; op(W_e) = W_e^T when W_e is stored (N, K) (trans_w == false, the layout of
//   nn.Linear weights), or W_e when stored (K, N) (trans_w == true).
//   beta == 0 overwrites C (NaN in C does not propagate).
//   With scale or out_row (beta must be 0), row p is stored as grouped_gemm_scatter stores it:
//     C[out_row[p], :] = scale[p] * (bf16(A[row(p), :]) · op(W_e))   (scale null: 1; out_row null: p)
//   the down projection writing each assignment's weighted output at its row, without a copy.
struct GroupedGemmBf16Args {
  int64_t E = 0, N = 0, K = 0;
  const int32_t* offsets = nullptr;  // (E + 1)
  const float* A = nullptr;          // rows of length K, row stride lda
  int64_t lda = 0;
  const int32_t* gather = nullptr;  // (offsets[E]) or null
  const uint16_t* W = nullptr;      // bf16 (E, N, K), or (E, K, N) when trans_w
  bool trans_w = false;
  float* C = nullptr;  // (offsets[E], N), or rows out_row[p], row stride ldc
  int64_t ldc = 0;
  float beta = 0;
  const float* scale = nullptr;      // (offsets[E]) or null
  const int32_t* out_row = nullptr;  // (offsets[E]) or null; must not repeat
  // A as saved pre-activations (see a_preact in moe/kernels/ops.h): row p of A is act of the
  // stored row (SwiGLU: silu(G) * U of [G | U], lda >= 2K), made while packing, then rounded to bf16.
  bool a_preact = false;
  Activation act = Activation::SwiGLU;
};
inline void grouped_gemm_bf16w(Exec e, const GroupedGemmBf16Args& args) { run(e, args); }

// gemm_bf16w: the dense case, C (M, N) = beta * C + bf16(A) (M, K) · op(W); one expert, no gather.
struct GemmBf16Args {
  int64_t M = 0, N = 0, K = 0;
  const float* A = nullptr;  // (M, K), row stride lda
  int64_t lda = 0;
  const uint16_t* W = nullptr;  // bf16 (N, K), or (K, N) when trans_w
  bool trans_w = false;
  float* C = nullptr;  // (M, N), row stride ldc
  int64_t ldc = 0;
  float beta = 0;
};
inline void gemm_bf16w(Exec e, const GemmBf16Args& args) { run(e, args); }

// Instruction set of the Cpu bf16-weight micro-kernel: "generic", "avx2", "avx512" (bf16 -> fp32 and
// FMA) or "avx512bf16" (vdpbf16ps). The best one the machine supports is picked at start-up;
// set_gemm_bf16_isa (for tests and benchmarks) throws moe::Error on a name that is unknown or not
// supported here.
const char* gemm_bf16_isa();
void set_gemm_bf16_isa(const std::string& name);
bool gemm_bf16_isa_supported(const std::string& name);

}  // namespace moe::kernels
