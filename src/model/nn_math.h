// Row helpers shared by the softmax-like loops of nn.cpp and nn_attention.cpp: an exp the compiler
// can vectorise, a row max and a row sum with a fixed summation order.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>

#include "moe/kernels/math_inline.h"

namespace moe::nn::detail {

using kernels::exp_nonpositive;  // exp(x) in float for x <= 0, vectorisable (moe/kernels/math_inline.h)

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
