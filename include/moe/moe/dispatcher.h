// The dispatcher moves token rows to the experts that compute them and brings the results back.
// The layer talks only to this interface: the local dispatcher below sorts assignments by expert
// and lets the expert GEMMs read token rows through a gather index (no permuted copy of x); the
// expert-parallel dispatcher (moe/moe/expert_parallel.h) replaces it with an all-to-all that sends
// each row to the rank holding its expert, without touching the layer's expert code.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "moe/kernels/ops.h"
#include "moe/moe/layer.h"

namespace moe {

// What this process's experts compute: rows [offsets[e], offsets[e+1]) belong to local expert e.
// Row p reads x_rows[gather[p]] (or x_rows[p] when gather is empty), each row d long, and its
// weighted output goes to row out_row[p] of an output buffer of out_rows rows.
template <typename T>
struct ExpertBatch {
  int64_t rows = 0;              // M
  std::vector<int32_t> offsets;  // (E_local + 1)
  const T* x_rows = nullptr;     // source rows, row stride d
  std::vector<int32_t> gather;   // (M) or empty
  std::vector<T> weight;         // (M) the routing weight of each row
  std::vector<int32_t> out_row;  // (M) distinct rows of the output buffer
  int64_t out_rows = 0;          // rows of the output buffer
};

// Fills batch's rows from routing r's assignments sorted by expert (perm and batch.offsets from
// kernels::permute): M = batch.offsets.back() rows, row p reading token r.token[perm[p]] of x with the
// weight r.weight[perm[p]], its weighted output going to row perm[p] of a buffer of r.n_assign rows
// (so the combine sums each token's k rows in assignment order). perm is cut to its M rows.
template <typename T>
void fill_assignment_rows(kernels::Backend be, const Routing& r, const T* x, std::vector<int32_t>& perm,
                          ExpertBatch<T>& batch);

// Forward:  dispatch -> the layer computes out[out_row[p]] = weight[p] · FFN_e(row p) -> combine.
// Backward: grad_rows -> the layer computes the expert backward -> return_dweight, dispatch_backward.
// Every method is called once per forward / backward, in this order, also when this process has
// no tokens or no rows (the expert-parallel dispatcher's calls are collectives).
template <typename T>
class Dispatcher {
 public:
  virtual ~Dispatcher() = default;
  // Plans the exchange for routing r and fills `batch` with the rows of x (T, d) this process's
  // experts compute.
  virtual void dispatch(const Routing& r, const T* x, int64_t d, ExpertBatch<T>& batch) = 0;
  // y (T, d) = Σ over the kept assignments a of token t, in assignment order, of the weighted
  // output of a's row; out is the (batch.out_rows, d) output buffer. Overwrites y.
  virtual void combine(const T* out, T* y) = 0;
  // The upstream gradient of each row's output, to be read as rows[gather[p]] like x_rows (dy is
  // (T, d)). The pointer stays valid until the dispatcher is destroyed.
  virtual const T* grad_rows(const T* dy) = 0;
  // d_weight (N) of the routing assignments from d_rows_weight (M) (the gradient of each row's
  // weight, batch order); dropped assignments get 0.
  virtual void return_dweight(const T* d_row_weight, T* d_weight) = 0;
  // dx (T, d) = Σ over each token's kept assignments of its row's input gradient d_rows (M, d),
  // batch order. Overwrites dx.
  virtual void dispatch_backward(const T* d_rows, T* dx) = 0;
};

// Each token's assignments in assignment order (a stable counting sort by token), and the combine
// that sums them: the last step of every dispatcher.
template <typename T>
class TokenSum {
 public:
  void build(kernels::Backend backend, int64_t n_tokens, int64_t n_assign, const int32_t* token, int64_t d);
  // y (T, d) = Σ over token t's assignments a with pos[a] >= 0, in assignment order, of rows[pos[a]].
  // Overwrites y.
  void sum(const T* rows, const int32_t* pos, T* y) const;

 private:
  kernels::Backend backend_ = kernels::Backend::Cpu;
  int64_t T_ = 0, d_ = 0;
  std::vector<int32_t> offsets_;  // (T + 1)
  std::vector<int32_t> assign_;   // (N)
};

// Single-process dispatcher: stable counting sort by expert (kernels::permute), gather fused into
// the expert GEMM, combine through kernels::combine in assignment order.
template <typename T>
class LocalDispatcher final : public Dispatcher<T> {
 public:
  LocalDispatcher(int64_t n_experts, kernels::Backend backend) : E_(n_experts), backend_(backend) {}
  void dispatch(const Routing& r, const T* x, int64_t d, ExpertBatch<T>& batch) override;
  void combine(const T* out, T* y) override;
  const T* grad_rows(const T* dy) override { return dy; }
  void return_dweight(const T* d_row_weight, T* d_weight) override;
  void dispatch_backward(const T* d_rows, T* dx) override;

 private:
  int64_t E_;
  kernels::Backend backend_;
  int64_t N_ = 0;
  std::vector<int32_t> pos_;   // (N) sorted row of each assignment, -1 when dropped
  std::vector<int32_t> slot_;  // (N) a when assignment a is kept, -1 when dropped
  std::vector<int32_t> perm_;  // (M) assignment of each sorted row
  TokenSum<T> by_token_;
};

}  // namespace moe
