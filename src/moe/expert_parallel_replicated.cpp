// ReplicatedTokensDispatcher: expert parallelism at inference, where every rank runs the same forward
// on the same tokens (moe/moe/expert_parallel.h). No token row travels: only the weighted expert rows,
// with one all-reduce per layer.
#include <algorithm>
#include <cstring>

#include "moe/core/error.h"
#include "moe/kernels/ops_moves.h"
#include "moe/moe/expert_parallel.h"

namespace moe {

template <typename T>
ReplicatedTokensDispatcher<T>::ReplicatedTokensDispatcher(int64_t n_experts, dist::Communicator& comm,
                                                          kernels::Backend backend)
    : E_(n_experts), shard_(expert_shard(n_experts, comm)), comm_(comm), backend_(backend) {}

template <typename T>
void ReplicatedTokensDispatcher<T>::dispatch(const Routing& r, const T* x, int64_t d, ExpertBatch<T>& batch) {
  N_ = r.n_assign;
  d_ = d;
  const int32_t* expert = N_ ? r.expert.data<int32_t>() : nullptr;
  const int32_t* token = N_ ? r.token.data<int32_t>() : nullptr;
  const uint8_t* kept = N_ ? r.kept.data<uint8_t>() : nullptr;

  // This rank's assignments: kept ones whose expert is in the shard, by local expert id.
  const int64_t El = shard_.count;
  std::vector<int32_t> local(static_cast<size_t>(N_), 0);
  std::vector<uint8_t> mine(static_cast<size_t>(N_), 0);
  slot_.assign(static_cast<size_t>(N_), -1);
  for (int64_t a = 0; a < N_; ++a) {
    const int64_t e = expert[a] - shard_.first;
    MOE_CHECK(expert[a] >= 0 && expert[a] < E_, "expert parallelism: assignment ", a, " names expert ",
              expert[a], " of ", E_);
    if (!kept || kept[a]) slot_[a] = static_cast<int32_t>(a);
    if ((!kept || kept[a]) && e >= 0 && e < El) local[a] = static_cast<int32_t>(e), mine[a] = 1;
  }
  batch.offsets.assign(static_cast<size_t>(El + 1), 0);
  perm_.assign(static_cast<size_t>(N_), 0);
  std::vector<int32_t> pos(static_cast<size_t>(N_), -1);
  if (N_ > 0)
    kernels::permute(backend_, {.N = N_,
                                .E = El,
                                .expert = local.data(),
                                .kept = mine.data(),
                                .offsets = batch.offsets.data(),
                                .perm = perm_.data(),
                                .pos = pos.data()});
  fill_assignment_rows(backend_, r, x, perm_, batch);  // outputs at the rows of their assignments
  by_token_.build(backend_, r.n_tokens, N_, token, d);
}

template <typename T>
void ReplicatedTokensDispatcher<T>::combine(const T* out, T* y) {
  // Rows of other ranks' experts are zero here; adding zeros is exact, so the all-reduce gives every
  // rank each row as the rank that computed it has it.
  rows_.assign(static_cast<size_t>(N_ * d_), T(0));
  for (const int32_t a : perm_) std::memcpy(rows_.data() + a * d_, out + a * d_, sizeof(T) * d_);
  if (comm_.size() > 1) comm_.allreduce(rows_.data(), N_ * d_, dtype_of<T>::value, dist::ReduceOp::Sum);
  by_token_.sum(rows_.data(), slot_.data(), y);
}

namespace {
[[noreturn]] void no_backward() {
  throw Error(
      "expert parallelism with replicated tokens is inference only: the backward runs with the "
      "all-to-all dispatcher (ExpertParallel without replicated_tokens)");
}
}  // namespace

template <typename T>
const T* ReplicatedTokensDispatcher<T>::grad_rows(const T*) {
  no_backward();
}
template <typename T>
void ReplicatedTokensDispatcher<T>::return_dweight(const T*, T*) {
  no_backward();
}
template <typename T>
void ReplicatedTokensDispatcher<T>::dispatch_backward(const T*, T*) {
  no_backward();
}

template class ReplicatedTokensDispatcher<float>;
template class ReplicatedTokensDispatcher<double>;

}  // namespace moe
