// Reference combine (weighted sum of each token's expert outputs) and its backward.
#include <cstdint>
#include <vector>

#include "kernels/ref/ref.h"

namespace moe::kernels::ref {

template <typename T>
void combine(const CombineArgs<T>& g) {
  std::vector<double> acc(static_cast<size_t>(g.D));  // (D) one token's output
  for (int64_t t = 0; t < g.T_; ++t) {
    T* y = g.Y + t * g.D;  // (D)
    for (int64_t d = 0; d < g.D; ++d) acc[d] = g.beta != T(0) ? static_cast<double>(g.beta) * y[d] : 0.0;
    for (int64_t i = g.tok_offsets[t]; i < g.tok_offsets[t + 1]; ++i) {
      const int32_t a = g.tok_assign[i];
      const int64_t row = g.pos[a];
      if (row < 0) continue;  // dropped
      const double w = g.weight ? static_cast<double>(g.weight[a]) : 1.0;
      const T* x = g.X + row * g.D;  // (D)
      for (int64_t d = 0; d < g.D; ++d) acc[d] += w * static_cast<double>(x[d]);
    }
    for (int64_t d = 0; d < g.D; ++d) y[d] = static_cast<T>(acc[d]);
  }
}

template <typename T>
void combine_backward(const CombineBackwardArgs<T>& g) {
  for (int64_t a = 0; a < g.N; ++a) {
    const int64_t row = g.pos[a];
    if (row < 0) {
      if (g.dweight) g.dweight[a] = T(0);
      continue;
    }
    const T* dy = g.dY + static_cast<int64_t>(g.token[a]) * g.D;  // (D)
    const T* x = g.X ? g.X + row * g.D : nullptr;                 // (D)
    T* dx = g.dX + row * g.D;                                     // (D)
    const double w = g.weight ? static_cast<double>(g.weight[a]) : 1.0;
    double dot = 0;
    for (int64_t d = 0; d < g.D; ++d) {
      dx[d] = static_cast<T>(w * static_cast<double>(dy[d]));
      if (g.dweight) dot += static_cast<double>(dy[d]) * static_cast<double>(x[d]);
    }
    if (g.dweight) g.dweight[a] = static_cast<T>(dot);
  }
}

template void combine<float>(const CombineArgs<float>&);
template void combine<double>(const CombineArgs<double>&);
template void combine_backward<float>(const CombineBackwardArgs<float>&);
template void combine_backward<double>(const CombineBackwardArgs<double>&);

}  // namespace moe::kernels::ref
