// Reference row moves (moe/kernels/ops_moves.h): plain loops, as the formulas read.
#include "kernels/ref/ref.h"

namespace moe::kernels::ref {

template <typename T>
void dispatch_rows(const DispatchRowsArgs<T>& a) {
  for (int64_t p = 0; p < a.M; ++p) {
    a.gather[p] = a.token[a.perm[p]];
    a.row_weight[p] = a.weight[a.perm[p]];
  }
}

template <typename T>
void scale_scatter_rows(const ScaleScatterRowsArgs<T>& a) {
  for (int64_t p = 0; p < a.M; ++p)
    for (int64_t i = 0; i < a.d; ++i) a.dst[a.out_row[p] * a.d + i] = a.scale[p] * a.src[p * a.d + i];
}

template <typename T>
void add_gated_rows(const AddGatedRowsArgs<T>& a) {
  for (int64_t t = 0; t < a.rows; ++t) {
    const double g = a.gate ? static_cast<double>(a.gate[t]) : 1.0;
    for (int64_t i = 0; i < a.d; ++i) {
      T& y = a.y[t * a.d + i];
      y = static_cast<T>(static_cast<double>(y) + g * static_cast<double>(a.src[t * a.d + i]));
    }
  }
}

template <typename T>
void scatter_values(const ScatterValuesArgs<T>& a) {
  for (int64_t i = 0; i < a.n; ++i) a.dst[a.index[i]] = a.src[i];
}

#define MOE_REF_MOVES(T)                                               \
  template void dispatch_rows<T>(const DispatchRowsArgs<T>&);          \
  template void scale_scatter_rows<T>(const ScaleScatterRowsArgs<T>&); \
  template void add_gated_rows<T>(const AddGatedRowsArgs<T>&);         \
  template void scatter_values<T>(const ScatterValuesArgs<T>&);
MOE_REF_MOVES(float)
MOE_REF_MOVES(double)
#undef MOE_REF_MOVES

}  // namespace moe::kernels::ref
