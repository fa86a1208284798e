// Dense linear layers of the transformer, forward and backward, on kernels::gemm on the model's
// backend (a host backend: the bias loops below read the same buffers), with an optional bf16 copy
// of the weight (bf16 compute). Shared by transformer.cpp and mla.cpp.
#pragma once

#include <cstdint>
#include <type_traits>

#include "moe/core/parallel.h"
#include "moe/kernels/ops.h"
#include "moe/kernels/weights.h"

namespace moe::model::detail {

using kernels::Backend;

// A linear layer's weight (out, in), and its bf16-packed copies when the model computes in bf16 (f32
// only, moe/kernels/weights.h): fwd packs op(W) = W^T (in, out) for the forward, bwd op(W) = W
// (out, in) for the input gradient (null in bf16 inference, which has no backward).
// In bf16 inference the forward's copy may be in an integer format instead (fwd_format, fwd_group:
// W8A8 / W4A8, Transformer::set_inference_linear_format).
template <typename T>
struct LinW {
  const T* w = nullptr;
  const void* bf16_fwd = nullptr;
  const void* bf16_bwd = nullptr;
  kernels::WeightFormat fwd_format = kernels::WeightFormat::Bf16Packed;
  int64_t fwd_group = 0;
};

// C (n, N) = beta C + A (n, K) · op(W), with op(W) (K, N) packed (bf16-packed, or an integer format with
// its group; one expert owning every row).
inline void packed_gemm(Backend be, const float* A, int64_t n, int64_t K, const void* W, int64_t N, float* C,
                        float beta, kernels::WeightFormat format = kernels::WeightFormat::Bf16Packed,
                        int64_t group = 0) {
  const int32_t offsets[2] = {0, static_cast<int32_t>(n)};
  kernels::GroupedGemmWArgs g;
  g.E = 1, g.offsets = offsets;
  g.A = A, g.lda = K;
  g.W = {.format = format, .N = N, .K = K, .data = W, .group = group};
  g.C = C, g.ldc = N, g.beta = beta;
  kernels::grouped_gemm_w(be, g);
}

// y (n, out) = x (n, in) · Wᵀ (+ b)
template <typename T>
inline void linear(Backend be, const T* x, int64_t n, int64_t in, LinW<T> lw, int64_t out, const T* b, T* y) {
  const T* W = lw.w;
  if constexpr (std::is_same_v<T, float>) {
    if (lw.bf16_fwd) {
      packed_gemm(be, x, n, in, lw.bf16_fwd, out, y, 0.0f, lw.fwd_format, lw.fwd_group);
      W = nullptr;
    }
  }
  if (W) {
    kernels::GemmArgs<T> g;
    g.M = n, g.N = out, g.K = in;
    g.A = x, g.lda = in;
    g.B = W, g.ldb = in, g.trans_b = true;
    g.C = y, g.ldc = out;
    kernels::gemm(be, g);
  }
  if (b)
    parallel_for(n, 64, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t o = 0; o < out; ++o) y[r * out + o] += b[o];
    });
}

// Backward of linear: dW += dyᵀ x; db += Σ_rows dy; dx (n, in) = dy W (+= when accumulate_dx).
// With a bf16 copy, dx uses it (bf16 compute); the weight gradient is always f32.
template <typename T>
inline void linear_backward(Backend be, const T* x, const T* dy, int64_t n, int64_t in, int64_t out,
                            LinW<T> lw, T* dW, T* db, T* dx, bool accumulate_dx) {
  kernels::GemmArgs<T> gw;
  gw.M = out, gw.N = in, gw.K = n;
  gw.A = dy, gw.lda = out, gw.trans_a = true;
  gw.B = x, gw.ldb = in;
  gw.C = dW, gw.ldc = in, gw.beta = 1;
  kernels::gemm(be, gw);
  if (db)
    parallel_for(out, 16, [&](int64_t o0, int64_t o1) {
      for (int64_t o = o0; o < o1; ++o) {
        T s = 0;
        for (int64_t r = 0; r < n; ++r) s += dy[r * out + o];
        db[o] += s;
      }
    });
  if constexpr (std::is_same_v<T, float>) {
    if (lw.bf16_bwd) {
      packed_gemm(be, dy, n, out, lw.bf16_bwd, in, dx, accumulate_dx ? 1.0f : 0.0f);
      return;
    }
  }
  kernels::GemmArgs<T> gx;
  gx.M = n, gx.N = in, gx.K = out;
  gx.A = dy, gx.lda = out;
  gx.B = lw.w, gx.ldb = in;
  gx.C = dx, gx.ldc = in, gx.beta = accumulate_dx ? 1 : 0;
  kernels::gemm(be, gx);
}

// dst += a · src
template <typename T>
inline void axpy(T* dst, const T* src, int64_t n, T a = T(1)) {
  parallel_for(n, 1 << 14, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) dst[i] += a * src[i];
  });
}

}  // namespace moe::model::detail
