// The dispatcher moves token rows to the experts that compute them and brings the results back.
// The layer talks only to this interface: the local dispatcher below sorts assignments by expert
// and lets the expert GEMMs read token rows through a gather index (no permuted copy of x); an
// expert-parallel dispatcher replaces it with an all-to-all without touching the layer.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "moe/kernels/ops.h"
#include "moe/moe/layer.h"

namespace moe {

// What the local experts compute: rows [offsets[e], offsets[e+1]) belong to local expert e.
// Row p reads x_rows[gather[p]] (or x_rows[p] when gather is empty), each row d long.
template <typename T>
struct ExpertBatch {
  int64_t rows = 0;                 // M
  std::vector<int32_t> offsets;     // (E_local + 1)
  const T* x_rows = nullptr;        // source rows, row stride d
  std::vector<int32_t> gather;      // (M) or empty
  std::vector<int32_t> assign;      // (M) the routing assignment each row computes
};

template <typename T>
class Dispatcher {
 public:
  virtual ~Dispatcher() = default;
  // Plans the exchange for routing r and fills `batch` with the local experts' rows of x (T, d).
  virtual void dispatch(const Routing& r, const T* x, int64_t d, ExpertBatch<T>& batch) = 0;
  // y (T, d) = Σ_{kept a of t} weight[a] · out[row(a)]   (out is (M, d)).
  virtual void combine(const T* out, const T* weight, T* y) = 0;
  // y (T, d) = Σ_{kept a of t} out_slots[a], in assignment order (out_slots is (N, d): each
  // assignment's already weighted output at its own row; rows of dropped assignments are not read).
  virtual void combine_slots(const T* out_slots, T* y) = 0;
  // Backward of combine: d_out (M, d) and d_weight (N; 0 for dropped assignments).
  virtual void combine_backward(const T* dy, const T* out, const T* weight, T* d_out, T* d_weight) = 0;
  // Backward of dispatch: dx (T, d) = Σ of the rows' input gradients d_rows (M, d) per token.
  virtual void dispatch_backward(const T* d_rows, T* dx) = 0;
};

// Single-process dispatcher: stable counting sort by expert (kernels::permute), gather fused into
// the expert GEMM, combine and its backward through kernels::combine / combine_backward.
template <typename T>
class LocalDispatcher final : public Dispatcher<T> {
 public:
  LocalDispatcher(int64_t n_experts, kernels::Backend backend) : E_(n_experts), backend_(backend) {}
  void dispatch(const Routing& r, const T* x, int64_t d, ExpertBatch<T>& batch) override;
  void combine(const T* out, const T* weight, T* y) override;
  void combine_slots(const T* out_slots, T* y) override;
  void combine_backward(const T* dy, const T* out, const T* weight, T* d_out, T* d_weight) override;
  void dispatch_backward(const T* d_rows, T* dx) override;

  const std::vector<int32_t>& pos() const { return pos_; }

 private:
  int64_t E_;
  kernels::Backend backend_;
  int64_t T_ = 0, N_ = 0, d_ = 0;
  std::vector<int32_t> token_;        // (N) token of each assignment
  std::vector<int32_t> pos_;          // (N) sorted row of each assignment, -1 when dropped
  std::vector<int32_t> slot_;         // (N) a when assignment a is kept, -1 when dropped
  std::vector<int32_t> tok_offsets_;  // (T + 1) assignments grouped by token
  std::vector<int32_t> tok_assign_;   // (N)
};

}  // namespace moe
