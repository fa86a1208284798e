// CPU row moves (moe/kernels/ops_moves.h): the reference's loops over row blocks in parallel. Every
// output element has one writer and is computed as in the reference's order, so results do not
// depend on the thread count.
#include <algorithm>

#include "kernels/cpu/cpu.h"
#include "moe/core/parallel.h"

namespace moe::kernels::cpu {

template <typename T>
void dispatch_rows(const DispatchRowsArgs<T>& a) {
  parallel_for(a.M, 16384, [&](int64_t lo, int64_t hi) {
    for (int64_t p = lo; p < hi; ++p) {
      a.gather[p] = a.token[a.perm[p]];
      a.row_weight[p] = a.weight[a.perm[p]];
    }
  });
}

template <typename T>
void scale_scatter_rows(const ScaleScatterRowsArgs<T>& a) {
  const int64_t d = a.d;
  parallel_for(a.M, std::max<int64_t>(1, 4096 / d), [&](int64_t lo, int64_t hi) {
    for (int64_t q = lo; q < hi; ++q) {
      const T s = a.scale[q];
      const T* src = a.src + q * d;
      T* dst = a.dst + a.out_row[q] * d;
      for (int64_t i = 0; i < d; ++i) dst[i] = s * src[i];
    }
  });
}

template <typename T>
void add_gated_rows(const AddGatedRowsArgs<T>& a) {
  const int64_t d = a.d;
  const T* g = a.gate;
  const T* src = a.src;
  T* y = a.y;
  if (g) {
    parallel_for(a.rows, std::max<int64_t>(1, 4096 / d), [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t)
        for (int64_t i = 0; i < d; ++i) y[t * d + i] += g[t] * src[t * d + i];
    });
  } else {
    parallel_for(a.rows * d, 4096, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) y[i] += src[i];
    });
  }
}

template <typename T>
void scatter_values(const ScatterValuesArgs<T>& a) {
  parallel_for(a.n, 16384, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) a.dst[a.index[i]] = a.src[i];
  });
}

#define MOE_CPU_MOVES(T)                                               \
  template void dispatch_rows<T>(const DispatchRowsArgs<T>&);          \
  template void scale_scatter_rows<T>(const ScaleScatterRowsArgs<T>&); \
  template void add_gated_rows<T>(const AddGatedRowsArgs<T>&);         \
  template void scatter_values<T>(const ScatterValuesArgs<T>&);
MOE_CPU_MOVES(float)
MOE_CPU_MOVES(double)
#undef MOE_CPU_MOVES

}  // namespace moe::kernels::cpu
