// The row moves of the MoE layer around its expert GEMMs: the rows of a dispatch in expert order,
// expert outputs weighted into their output rows, gated shared-expert rows added to the output, and
// a token chunk's per-assignment values scattered into the whole routing's. Rows of the op table
// like those of ops.h (run, supports, op_flops, op_bytes), on Ref and Cpu; the cuda backend says
// "not implemented on cuda" until the device path needs them. Index arrays are checked against
// their ranges on the host backends.
#pragma once

#include <cstdint>

#include "moe/kernels/ops.h"

namespace moe::kernels {

// dispatch_rows: the M rows of a dispatch in expert order, row p being assignment perm[p]:
//   gather[p] = token[perm[p]]      row_weight[p] = weight[perm[p]]
template <typename T>
struct DispatchRowsArgs {
  int64_t M = 0;                   // rows
  int64_t N = 0;                   // assignments (perm's range)
  int64_t n_tokens = 0;            // token's range
  const int32_t* perm = nullptr;   // (M) in [0, N)
  const int32_t* token = nullptr;  // (N) in [0, n_tokens)
  const T* weight = nullptr;       // (N) combine weight of each assignment
  int32_t* gather = nullptr;       // (M) out: token row of each row
  T* row_weight = nullptr;         // (M) out: combine weight of each row
};
template <typename T>
void dispatch_rows(Exec e, const DispatchRowsArgs<T>& args) {
  run(e, args);
}

// scale_scatter_rows: dst[out_row[p], :] = scale[p] · src[p, :] for the M rows p of d elements;
// out_row must not repeat (each output row has one writer). Rows of dst not named are untouched.
template <typename T>
struct ScaleScatterRowsArgs {
  int64_t M = 0, d = 0;
  int64_t dst_rows = 0;              // out_row's range
  const T* src = nullptr;            // (M, d)
  const T* scale = nullptr;          // (M)
  const int32_t* out_row = nullptr;  // (M) distinct, in [0, dst_rows)
  T* dst = nullptr;                  // (dst_rows, d)
};
template <typename T>
void scale_scatter_rows(Exec e, const ScaleScatterRowsArgs<T>& args) {
  run(e, args);
}

// add_gated_rows: y[t, :] += gate[t] · src[t, :] for the T rows t of d elements (y += src where
// gate is null): the shared experts' output added to the routed experts'.
template <typename T>
struct AddGatedRowsArgs {
  int64_t rows = 0, d = 0;
  const T* gate = nullptr;  // (rows) or null
  const T* src = nullptr;   // (rows, d)
  T* y = nullptr;           // (rows, d)
};
template <typename T>
void add_gated_rows(Exec e, const AddGatedRowsArgs<T>& args) {
  run(e, args);
}

// scatter_values: dst[index[i]] = src[i] for the n entries i; index must not repeat. A token
// chunk's values per assignment into the whole routing's.
template <typename T>
struct ScatterValuesArgs {
  int64_t n = 0;
  int64_t dst_n = 0;               // index's range
  const int32_t* index = nullptr;  // (n) distinct, in [0, dst_n)
  const T* src = nullptr;          // (n)
  T* dst = nullptr;                // (dst_n)
};
template <typename T>
void scatter_values(Exec e, const ScatterValuesArgs<T>& args) {
  run(e, args);
}

}  // namespace moe::kernels
