// Inline scalar math for CPU loops the compiler vectorises (no libm call for float), shared by the
// kernels (src/kernels/cpu/act_inline.h: activations inside GEMM packing) and by the model layer's
// softmax rows (src/model/nn_math.h).
#pragma once

#include <algorithm>
#include <bit>
#include <cstdint>

// Inlined into the calling loop, so that the loop vectorises.
#define MOE_ACT_INLINE inline __attribute__((always_inline))

namespace moe::kernels {

// exp(x) in float for x <= 0 (arguments of a softmax after the max is subtracted), within 1 ulp
// (measured over [−88, 0]). Written by hand because std::exp on floats is a library call the
// compiler cannot vectorise: Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, the degree-6
// polynomial of Cephes' expf, and 2^n built in the exponent bits. Only integer selects (no float
// compare, no float-to-int conversion), so GCC vectorises a loop over it without
// -fno-trapping-math. Arguments below −88 (and −inf) are clamped to −88 through their bits (for a
// negative float, a larger magnitude has larger bits); where 2^n would be denormal (x below about
// −87.3) the result is 0, which a softmax cannot tell from the true value. NaN stays NaN.
// Not for x > 88 (2^n overflows the exponent field).
MOE_ACT_INLINE float exp_nonpositive(float x_in) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
  constexpr float kRound = 12582912.0f;  // 1.5 · 2^23: t = x log2e + kRound holds round(x log2e)
  const float x =
      std::bit_cast<float>(std::min(std::bit_cast<uint32_t>(x_in), std::bit_cast<uint32_t>(-88.0f)));
  const float t = x * kLog2e + kRound;  // in its low mantissa bits
  const float n = t - kRound;
  const int32_t ni = std::bit_cast<int32_t>(t) - std::bit_cast<int32_t>(kRound);  // n as an integer
  const float r = (x - n * kLn2Hi) - n * kLn2Lo;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * (r * r) + r + 1.0f;
  const float two_n = std::bit_cast<float>(static_cast<uint32_t>(ni + 127) << 23);
  const int32_t keep = -static_cast<int32_t>(ni >= -126);  // all ones, or 0 where 2^n is denormal
  return std::bit_cast<float>(std::bit_cast<int32_t>(y * two_n) & keep);
}

}  // namespace moe::kernels
