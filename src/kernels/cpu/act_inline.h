// Activations evaluated inside GEMM packing loops (vectorisable, no libm call for float): the
// operand transforms that turn saved pre-activations [G | U] into h = silu(G) · U on the fly.
#pragma once

#include <cmath>
#include <cstdint>

#include "moe/kernels/ops.h"

namespace moe::kernels::cpu {

#define MOE_ACT_INLINE inline __attribute__((always_inline))

// exp(x) for float: range reduction by ln 2 (Cody-Waite) and a degree-6 polynomial, about 2 ulp
// over the clamped range [-87, 88]. Double uses std::exp.
MOE_ACT_INLINE float exp_approx(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float n = __builtin_rintf(x * 1.44269504088896341f);
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float q = 1.9875691500e-4f;
  q = q * r + 1.3981999507e-3f;
  q = q * r + 8.3334519073e-3f;
  q = q * r + 4.1665795894e-2f;
  q = q * r + 1.6666665459e-1f;
  q = q * r + 5.0000001201e-1f;
  q = q * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  __builtin_memcpy(&scale, &bits, sizeof scale);
  return q * scale;
}
MOE_ACT_INLINE double exp_approx(double x) { return std::exp(x); }

// dst[c] = s * act(src[c]) for c < n (SwiGLU: s * silu(src[c]) * src[c + xoff]), the formulas of
// the activation ops.
template <typename T>
MOE_ACT_INLINE void act_row(Activation act, const T* __restrict src, int64_t xoff, int64_t n, T s,
                            T* __restrict dst) {
  const T* __restrict src2 = src + xoff;
  switch (act) {
    case Activation::SwiGLU:
      for (int64_t c = 0; c < n; ++c) dst[c] = s * (src[c] / (T(1) + exp_approx(-src[c])) * src2[c]);
      return;
    case Activation::Silu:
      for (int64_t c = 0; c < n; ++c) dst[c] = s * (src[c] / (T(1) + exp_approx(-src[c])));
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
