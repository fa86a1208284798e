// CPU combine and combine backward.
//   combine: each token's output row has one owner; its assignments are added in list order.
//   backward: each kept assignment owns its dX row (pos is one-to-one) and its dweight entry.
#include <cstdint>

#include "kernels/cpu/cpu.h"
#include "moe/core/parallel.h"

namespace moe::kernels::cpu {

namespace {

// <x, y> over n elements with kLanes partial sums (lane l takes elements l, l + kLanes, ...) added
// pairwise at the end: a fixed order that the compiler can vectorise.
template <typename T>
T dot(const T* x, const T* y, int64_t n) {
  constexpr int kLanes = 16;
  T acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) acc[l] += x[i + l] * y[i + l];
  }
  for (int l = 0; i + l < n; ++l) acc[l] += x[i + l] * y[i + l];
  for (int w = kLanes / 2; w >= 1; w /= 2) {
    for (int l = 0; l < w; ++l) acc[l] += acc[l + w];
  }
  return acc[0];
}

// Rows per chunk so that a chunk holds at least ~16K elements.
int64_t row_grain(int64_t D) { return D >= 16384 ? 1 : 16384 / (D > 0 ? D : 1); }

}  // namespace

template <typename T>
void combine(const CombineArgs<T>& g) {
  const int64_t D = g.D;
  parallel_for(g.T_, row_grain(D), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      T* y = g.Y + t * D;  // (D)
      if (g.beta == T(0)) {
        for (int64_t d = 0; d < D; ++d) y[d] = T(0);
      } else {
        for (int64_t d = 0; d < D; ++d) y[d] *= g.beta;
      }
      for (int64_t i = g.tok_offsets[t]; i < g.tok_offsets[t + 1]; ++i) {
        const int32_t a = g.tok_assign[i];
        const int64_t row = g.pos[a];
        if (row < 0) continue;  // dropped
        const T w = g.weight ? g.weight[a] : T(1);
        const T* x = g.X + row * D;  // (D)
        for (int64_t d = 0; d < D; ++d) y[d] += w * x[d];
      }
    }
  });
}

template <typename T>
void combine_backward(const CombineBackwardArgs<T>& g) {
  const int64_t D = g.D;
  parallel_for(g.N, row_grain(D), [&](int64_t a0, int64_t a1) {
    for (int64_t a = a0; a < a1; ++a) {
      const int64_t row = g.pos[a];
      if (row < 0) {
        if (g.dweight) g.dweight[a] = T(0);
        continue;
      }
      const T* dy = g.dY + static_cast<int64_t>(g.token[a]) * D;  // (D)
      T* dx = g.dX + row * D;                                     // (D)
      const T w = g.weight ? g.weight[a] : T(1);
      for (int64_t d = 0; d < D; ++d) dx[d] = w * dy[d];
      if (g.dweight) g.dweight[a] = dot(dy, g.X + row * D, D);
    }
  });
}

template void combine<float>(const CombineArgs<float>&);
template void combine<double>(const CombineArgs<double>&);
template void combine_backward<float>(const CombineBackwardArgs<float>&);
template void combine_backward<double>(const CombineBackwardArgs<double>&);

}  // namespace moe::kernels::cpu
