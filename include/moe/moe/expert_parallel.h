// Expert parallelism: the all-to-all dispatcher that sends each token row to the rank holding its
// expert and brings the weighted expert outputs back (forward), and the gradients likewise
// (backward). The layer's expert kernels run unchanged on the rows a rank receives.
//
// Data path of one forward on rank r of R (E experts, El = E / R per rank):
//   kept assignments, stably sorted by expert (so by destination rank, then local expert)
//   ── exchange of the (R × El) row counts ── all-to-all of the token rows (S, d) and their weights
//   receiver: rows grouped by local expert through a gather index into the receive buffer (no copy)
//   expert FFNs; the down projection's epilogue writes each weighted output at its receive row
//   ── reverse all-to-all ── each token sums its k rows in assignment order (as the local combine).
// Backward: dy rows go out the same way; the fused expert backward gives each row's input
// gradient and weight gradient, which return with the reverse all-to-all.
//
// With dropless routing, rank r's outputs and input gradients are bit-identical to a single
// process running the layer on rank r's tokens (same rows, same kernels, same summation order),
// and an expert's weight gradient sums its rows in (source rank, token) order, the order of a
// single process over all ranks' tokens concatenated.
#pragma once

#include <cstdint>
#include <vector>

#include "moe/dist/comm.h"
#include "moe/moe/dispatcher.h"

namespace moe {

// The experts rank `rank` of `size` holds: [first, first + count). Throws unless size divides E.
struct ExpertShard {
  int64_t first = 0, count = 0;
};
ExpertShard expert_shard(int64_t n_experts, int rank, int size);
ExpertShard expert_shard(int64_t n_experts, const dist::Communicator& comm);

template <typename T>
class AllToAllDispatcher final : public Dispatcher<T> {
 public:
  AllToAllDispatcher(int64_t n_experts, dist::Communicator& comm, kernels::Backend backend);
  void dispatch(const Routing& r, const T* x, int64_t d, ExpertBatch<T>& batch) override;
  void combine(const T* out, T* y) override;
  const T* grad_rows(const T* dy) override;
  void return_dweight(const T* d_row_weight, T* d_weight) override;
  void dispatch_backward(const T* d_rows, T* dx) override;

  // Rows this rank sent to / received from each rank in the last dispatch.
  const std::vector<int64_t>& sent_rows() const { return send_rows_; }
  const std::vector<int64_t>& received_rows() const { return recv_rows_; }

 private:
  // Sends rows (laid out by this rank's send order) and returns the receive buffer, or the reverse.
  void to_experts(const T* send, int64_t width, std::vector<T>& recv);
  void from_experts(const T* send, int64_t width, std::vector<T>& recv);
  // Scatters batch-ordered rows (M, width) into receive order.
  void to_receive_order(const T* rows, int64_t width, std::vector<T>& out) const;

  int64_t E_, El_;
  dist::Communicator& comm_;
  kernels::Backend backend_;
  int64_t T_ = 0, N_ = 0, d_ = 0;
  std::vector<int32_t> perm_;                   // (S) assignment of each sent row (sorted by expert)
  std::vector<int32_t> send_tok_;               // (S) token of each sent row
  std::vector<int32_t> pos_;                    // (N) sent row of each assignment, -1 when dropped
  std::vector<int64_t> send_rows_, recv_rows_;  // (R)
  std::vector<int32_t> recv_index_;             // (M) receive row of each batch row (= batch.gather)
  TokenSum<T> by_token_;
  std::vector<T> x_recv_;   // (M, d) the rows this rank's experts compute
  std::vector<T> dy_recv_;  // (M, d) their upstream gradients (backward)
};

// Expert parallelism at inference (ExpertParallel::replicated_tokens): every rank holds the same
// tokens x (T, d) and routing; this rank's experts compute the rows of every token routed to them,
// the (N, d) buffer of weighted rows (zero where another rank's expert computed) is summed over the
// ranks with one all-reduce, then each token sums its kept rows in assignment order. Forward only:
// the backward methods throw moe::Error.
template <typename T>
class ReplicatedTokensDispatcher final : public Dispatcher<T> {
 public:
  ReplicatedTokensDispatcher(int64_t n_experts, dist::Communicator& comm, kernels::Backend backend);
  void dispatch(const Routing& r, const T* x, int64_t d, ExpertBatch<T>& batch) override;
  void combine(const T* out, T* y) override;
  const T* grad_rows(const T* dy) override;
  void return_dweight(const T* d_row_weight, T* d_weight) override;
  void dispatch_backward(const T* d_rows, T* dx) override;

 private:
  int64_t E_;
  ExpertShard shard_;
  dist::Communicator& comm_;
  kernels::Backend backend_;
  int64_t N_ = 0, d_ = 0;
  std::vector<int32_t> perm_;  // (M) assignment of each local row, sorted by local expert
  std::vector<int32_t> slot_;  // (N) a when assignment a is kept (on any rank), -1 when dropped
  std::vector<T> rows_;        // (N, d) the weighted rows, summed over the ranks
  TokenSum<T> by_token_;
};

}  // namespace moe
