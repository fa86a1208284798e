// Row helpers shared by the softmax-like loops of nn.cpp and nn_attention.cpp: an exp the compiler
// can vectorise, a row max and a row sum with a fixed summation order.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>

namespace moe::nn::detail {

// exp(x) in float for x <= 0 (arguments of a softmax after the max is subtracted), within 1 ulp
// (measured over [−88, 0]). Written by hand because std::exp on floats is a library call the
// compiler cannot vectorise: Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, the degree-6
// polynomial of Cephes' expf, and 2^n built in the exponent bits. Only integer selects (no float
// compare, no float-to-int conversion), so GCC vectorises a loop over it without
// -fno-trapping-math. Arguments below −88 (and −inf) are clamped to −88 through their bits (for a
// negative float, a larger magnitude has larger bits); where 2^n would be denormal (x below about
// −87.3) the result is 0, which a softmax cannot tell from the true value. NaN stays NaN.
// Not for x > 88 (2^n overflows the exponent field).
inline float exp_nonpositive(float x_in) {
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

// x[j] = exp(x[j] − shift) for j < n, with shift >= every x[j] (so the arguments are <= 0).
inline void exp_shifted(float* x, int64_t n, float shift) {
  for (int64_t j = 0; j < n; ++j) x[j] = exp_nonpositive(x[j] - shift);
}
inline void exp_shifted(double* x, int64_t n, double shift) {
  for (int64_t j = 0; j < n; ++j) x[j] = std::exp(x[j] - shift);
}

// Largest of x[0..n), n >= 1 (exact, so the lane-wise order does not matter).
template <typename T>
T row_max(const T* x, int64_t n) {
  constexpr int kLanes = 16;
  T lane[kLanes];
  for (int u = 0; u < kLanes; ++u) lane[u] = x[0];
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int u = 0; u < kLanes; ++u) lane[u] = std::max(lane[u], x[j + u]);
  T m = lane[0];
  for (int u = 1; u < kLanes; ++u) m = std::max(m, lane[u]);
  for (; j < n; ++j) m = std::max(m, x[j]);
  return m;
}

// Σ x[0..n) in double: 8 lanes over blocks of 8, the lanes added in order, then the tail. The
// order depends on n only.
template <typename T>
double row_sum(const T* x, int64_t n) {
  constexpr int kLanes = 8;
  double lane[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int u = 0; u < kLanes; ++u) lane[u] += static_cast<double>(x[j + u]);
  double s = 0;
  for (int u = 0; u < kLanes; ++u) s += lane[u];
  for (; j < n; ++j) s += static_cast<double>(x[j]);
  return s;
}

}  // namespace moe::nn::detail
