// Helpers for the transformer-block tests (test_nn*.cpp): random inputs, casts, error measures,
// finite differences and a thread-count guard.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <vector>

#include "moe/core/parallel.h"
#include "moe/core/rng.h"

namespace moe::testing::nn {

// n values N(0, sd²) from a counter-based stream: the same for any thread count.
inline std::vector<double> randn(int64_t n, uint64_t seed, double sd = 1.0) {
  const Rng rng(seed);
  std::vector<double> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = sd * rng.normal(static_cast<uint64_t>(i));
  return v;
}

template <typename T>
std::vector<T> cast(const std::vector<double>& v) {
  return std::vector<T>(v.begin(), v.end());
}

template <typename T>
std::vector<double> to_double(const std::vector<T>& v) {
  return std::vector<double>(v.begin(), v.end());
}

// A buffer of n NaNs: outputs are poisoned before each run so that an unwritten value fails.
template <typename T>
std::vector<T> poisoned(int64_t n) {
  return std::vector<T>(static_cast<size_t>(n), std::numeric_limits<T>::quiet_NaN());
}

// Scale-aware error max|a − b| / max(max|b|, floor); NaN or a size mismatch gives infinity.
template <typename T>
double rel_err(const std::vector<T>& a, const std::vector<double>& b, double floor = 1e-3) {
  if (a.size() != b.size()) return INFINITY;
  double num = 0, den = floor;
  for (size_t i = 0; i < b.size(); ++i) {
    const double x = static_cast<double>(a[i]);
    if (!std::isfinite(x) || !std::isfinite(b[i])) return INFINITY;
    num = std::max(num, std::abs(x - b[i]));
    den = std::max(den, std::abs(b[i]));
  }
  return num / den;
}

inline double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Central differences of f with respect to every entry of x (restored afterwards).
inline std::vector<double> numeric_grad(std::vector<double>& x, const std::function<double()>& f,
                                        double h = 1e-6) {
  std::vector<double> g(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double x0 = x[i];
    x[i] = x0 + h;
    const double fp = f();
    x[i] = x0 - h;
    const double fm = f();
    x[i] = x0;
    g[i] = (fp - fm) / (2 * h);
  }
  return g;
}

// Unit roundoff of float, and the f32 tolerance for a chain of reductions of length up to K:
// rounding errors of random sign grow like sqrt(K)·u per reduction; the factor 16 covers the
// handful of chained stages (products, exp, normalisation) and f32 rounding between them.
constexpr double kU32 = 1.0 / (1 << 24);
inline double f32_tol(int64_t K) {
  return 16.0 * std::sqrt(static_cast<double>(std::max<int64_t>(K, 1))) * kU32;
}

// Sets the library thread count for its lifetime and restores the previous one.
class ThreadCount {
 public:
  explicit ThreadCount(int n) : saved_(num_threads()) { set_num_threads(n); }
  ~ThreadCount() { set_num_threads(saved_); }
  ThreadCount(const ThreadCount&) = delete;
  ThreadCount& operator=(const ThreadCount&) = delete;

 private:
  int saved_;
};

template <typename T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

}  // namespace moe::testing::nn
