// Activations evaluated inside GEMM packing loops (vectorisable, no libm call for float): the
// operand transforms that turn saved pre-activations [G | U] into h = silu(G) · U on the fly.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>

#include "moe/kernels/math_inline.h"  // exp_nonpositive, MOE_ACT_INLINE
#include "moe/kernels/ops.h"

namespace moe::kernels::cpu {

// sigmoid(x) = 1 / (1 + exp(-x)) through exp of -|x| <= 0: e / (1 + e) for x < 0. Double uses std::exp.
MOE_ACT_INLINE float sigmoid_fast(float x) {
  const float e = exp_nonpositive(-std::fabs(x));
  return (std::bit_cast<int32_t>(x) < 0 ? e : 1.0f) / (1.0f + e);  // an integer select (vectorises)
}
MOE_ACT_INLINE double sigmoid_fast(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// dst[c] = s * act(src[c]) for c < n (SwiGLU: s * silu(src[c]) * src[c + xoff]), the formulas of
// the activation ops.
template <typename T>
MOE_ACT_INLINE void act_row(Activation act, const T* __restrict src, int64_t xoff, int64_t n, T s,
                            T* __restrict dst) {
  const T* __restrict src2 = src + xoff;
  switch (act) {
    case Activation::SwiGLU:
      for (int64_t c = 0; c < n; ++c) dst[c] = s * (src[c] * sigmoid_fast(src[c]) * src2[c]);
      return;
    case Activation::Silu:
      for (int64_t c = 0; c < n; ++c) dst[c] = s * (src[c] * sigmoid_fast(src[c]));
      return;
    case Activation::Relu:
      for (int64_t c = 0; c < n; ++c) dst[c] = s * (src[c] < T(0) ? T(0) : src[c]);
      return;
    case Activation::Gelu:
      for (int64_t c = 0; c < n; ++c)
        dst[c] = s * (src[c] * (T(0.5) * (T(1) + std::erf(src[c] * T(0.70710678118654752440)))));
      return;
  }
}

}  // namespace moe::kernels::cpu
