// Threading: OpenMP underneath, a settable thread count, and a static partition so that which
// thread computes what depends only on (n, thread count). Kernels keep results independent of the
// thread count by giving each output element exactly one owner with a fixed reduction order.
#pragma once

#include <cstdint>

#include <omp.h>

namespace moe {

// Sets the number of threads used by library kernels (>= 1). Throws moe::Error on n < 1.
// The most threads the library runs (MOE_NUM_THREADS beyond it is clamped, set_num_threads refuses).
inline constexpr int kMaxThreadCount = 1024;
void set_num_threads(int n);
int num_threads();

// Runs fn(begin, end) over [0, n) split into contiguous chunks of at least `grain` items,
// one chunk per thread. Runs inline when n is small or one thread is set.
template <typename F>
void parallel_for(int64_t n, int64_t grain, F&& fn) {
  if (n <= 0) return;
  const int64_t g = grain < 1 ? 1 : grain;
  int64_t chunks = (n + g - 1) / g;
  const int nt = num_threads();
  if (chunks > nt) chunks = nt;
  if (chunks <= 1 || omp_in_parallel()) {
    fn(int64_t{0}, n);
    return;
  }
#pragma omp parallel for num_threads(static_cast <int>(chunks)) schedule(static, 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t b = n * c / chunks, e = n * (c + 1) / chunks;
    if (b < e) fn(b, e);
  }
}

// Like parallel_for but each item i in [0, n) is one unit of work scheduled dynamically:
// for uneven work (experts with different token counts). fn(i) must own its outputs.
template <typename F>
void parallel_items(int64_t n, F&& fn) {
  if (n <= 0) return;
  const int nt = num_threads();
  if (nt <= 1 || n == 1 || omp_in_parallel()) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
  for (int64_t i = 0; i < n; ++i) fn(i);
}

}  // namespace moe
