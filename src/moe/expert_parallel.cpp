#include "moe/moe/expert_parallel.h"

#include <algorithm>

#include "moe/core/error.h"
#include "moe/core/parallel.h"

namespace moe {

ExpertShard expert_shard(int64_t n_experts, int rank, int size) {
  MOE_CHECK(size >= 1 && rank >= 0 && rank < size, "expert parallelism: rank ", rank, " of ", size,
            " is invalid");
  MOE_CHECK(n_experts % size == 0, "expert parallelism: ", n_experts, " experts cannot be split evenly over ",
            size, " ranks (the expert-parallel size must divide the number of experts)");
  const int64_t El = n_experts / size;
  return {rank * El, El};
}

ExpertShard expert_shard(int64_t n_experts, const dist::Communicator& comm) {
  return expert_shard(n_experts, comm.rank(), comm.size());
}

template <typename T>
AllToAllDispatcher<T>::AllToAllDispatcher(int64_t n_experts, dist::Communicator& comm,
                                          kernels::Backend backend)
    : E_(n_experts), El_(expert_shard(n_experts, comm).count), comm_(comm), backend_(backend) {}

namespace {

// Copies rows src[index[i]] (width each) to dst[i] for i < n.
template <typename T>
void gather_rows(const T* src, const int32_t* index, int64_t n, int64_t width, T* dst) {
  parallel_for(n, std::max<int64_t>(1, 4096 / std::max<int64_t>(width, 1)), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) std::copy_n(src + index[i] * width, width, dst + i * width);
  });
}

std::vector<int64_t> scaled(const std::vector<int64_t>& rows, int64_t width) {
  std::vector<int64_t> c(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) c[i] = rows[i] * width;
  return c;
}

int64_t total(const std::vector<int64_t>& v) {
  int64_t s = 0;
  for (int64_t x : v) s += x;
  return s;
}

}  // namespace

template <typename T>
void AllToAllDispatcher<T>::to_experts(const T* send, int64_t width, std::vector<T>& recv) {
  recv.resize(static_cast<size_t>(total(recv_rows_) * width));
  comm_.alltoallv(send, scaled(send_rows_, width), recv.data(), scaled(recv_rows_, width),
                  dtype_of<T>::value);
}

template <typename T>
void AllToAllDispatcher<T>::from_experts(const T* send, int64_t width, std::vector<T>& recv) {
  recv.resize(static_cast<size_t>(total(send_rows_) * width));
  comm_.alltoallv(send, scaled(recv_rows_, width), recv.data(), scaled(send_rows_, width),
                  dtype_of<T>::value);
}

template <typename T>
void AllToAllDispatcher<T>::to_receive_order(const T* rows, int64_t width, std::vector<T>& out) const {
  const int64_t M = static_cast<int64_t>(recv_index_.size());
  out.resize(static_cast<size_t>(M * width));
  T* o = out.data();
  const int32_t* ri = recv_index_.data();
  parallel_for(M, std::max<int64_t>(1, 4096 / std::max<int64_t>(width, 1)), [&](int64_t b, int64_t e) {
    for (int64_t p = b; p < e; ++p) std::copy_n(rows + p * width, width, o + ri[p] * width);
  });
}

template <typename T>
void AllToAllDispatcher<T>::dispatch(const Routing& r, const T* x, int64_t d, ExpertBatch<T>& batch) {
  const int R = comm_.size();
  T_ = r.n_tokens;
  N_ = r.n_assign;
  d_ = d;
  const int32_t* expert = N_ ? r.expert.data<int32_t>() : nullptr;
  const int32_t* token = N_ ? r.token.data<int32_t>() : nullptr;
  const uint8_t* kept = N_ ? r.kept.data<uint8_t>() : nullptr;
  const T* weight = N_ ? r.weight.data<T>() : nullptr;

  // Kept assignments sorted by expert (stable): experts are laid out rank-major, so this is also
  // the send order by destination rank.
  std::vector<int32_t> offsets(static_cast<size_t>(E_ + 1), 0);
  perm_.assign(static_cast<size_t>(N_), 0);
  pos_.assign(static_cast<size_t>(N_), -1);
  if (N_ > 0) kernels::permute(backend_, {N_, E_, expert, kept, offsets.data(), perm_.data(), pos_.data()});
  const int64_t S = offsets[E_];
  perm_.resize(static_cast<size_t>(S));

  // Row counts per (destination rank, local expert), exchanged first: (R, El) each way.
  std::vector<int64_t> send_counts(static_cast<size_t>(E_)), recv_counts(static_cast<size_t>(E_));
  for (int64_t e = 0; e < E_; ++e) send_counts[e] = offsets[e + 1] - offsets[e];
  comm_.alltoallv(send_counts.data(), std::vector<int64_t>(R, El_), recv_counts.data(),
                  std::vector<int64_t>(R, El_), DType::I64);
  send_rows_.assign(R, 0);
  recv_rows_.assign(R, 0);
  for (int j = 0; j < R; ++j)
    for (int64_t le = 0; le < El_; ++le) {
      send_rows_[j] += send_counts[j * El_ + le];
      recv_rows_[j] += recv_counts[j * El_ + le];
    }
  const int64_t M = total(recv_rows_);

  // The rows and their routing weights, in send order.
  send_tok_.resize(static_cast<size_t>(S));
  std::vector<T> send_w(static_cast<size_t>(S)), w_recv;
  for (int64_t i = 0; i < S; ++i) send_tok_[i] = token[perm_[i]], send_w[i] = weight[perm_[i]];
  {
    std::vector<T> xs(static_cast<size_t>(S * d));
    gather_rows(x, send_tok_.data(), S, d, xs.data());
    to_experts(xs.data(), d, x_recv_);
  }
  to_experts(send_w.data(), 1, w_recv);

  // Group the received rows by local expert: source rank order, then the sender's order, which is
  // the order of a single process over all ranks' tokens.
  batch.offsets.assign(static_cast<size_t>(El_ + 1), 0);
  for (int64_t le = 0; le < El_; ++le) {
    int64_t c = 0;
    for (int i = 0; i < R; ++i) c += recv_counts[i * El_ + le];
    batch.offsets[le + 1] = static_cast<int32_t>(batch.offsets[le] + c);
  }
  MOE_CHECK(batch.offsets[El_] == M, "all-to-all dispatch: inconsistent row counts");
  recv_index_.resize(static_cast<size_t>(M));
  {
    std::vector<int64_t> fill(batch.offsets.begin(), batch.offsets.end() - 1);  // next row per local expert
    int64_t base = 0;
    for (int i = 0; i < R; ++i)
      for (int64_t le = 0; le < El_; ++le)
        for (int64_t q = 0; q < recv_counts[i * El_ + le]; ++q)
          recv_index_[fill[le]++] = static_cast<int32_t>(base++);
  }
  batch.rows = M;
  batch.x_rows = x_recv_.data();
  batch.gather = recv_index_;
  batch.weight.resize(static_cast<size_t>(M));
  for (int64_t p = 0; p < M; ++p) batch.weight[p] = w_recv[recv_index_[p]];
  batch.out_row = recv_index_;  // outputs land in receive order, ready to go back
  batch.out_rows = M;

  by_token_.build(backend_, T_, N_, token, d);
}

template <typename T>
void AllToAllDispatcher<T>::combine(const T* out, T* y) {
  std::vector<T> back;  // (S, d) the weighted outputs of this rank's sent rows
  from_experts(out, d_, back);
  by_token_.sum(back.data(), pos_.data(), y);
}

template <typename T>
const T* AllToAllDispatcher<T>::grad_rows(const T* dy) {
  const int64_t S = static_cast<int64_t>(send_tok_.size());
  std::vector<T> dys(static_cast<size_t>(S * d_));
  gather_rows(dy, send_tok_.data(), S, d_, dys.data());
  to_experts(dys.data(), d_, dy_recv_);
  return dy_recv_.data();
}

template <typename T>
void AllToAllDispatcher<T>::return_dweight(const T* d_row_weight, T* d_weight) {
  std::vector<T> recv_order, back;
  to_receive_order(d_row_weight, 1, recv_order);
  from_experts(recv_order.data(), 1, back);
  for (int64_t a = 0; a < N_; ++a) d_weight[a] = T(0);
  for (size_t i = 0; i < perm_.size(); ++i) d_weight[perm_[i]] = back[i];
}

template <typename T>
void AllToAllDispatcher<T>::dispatch_backward(const T* d_rows, T* dx) {
  std::vector<T> recv_order, back;
  to_receive_order(d_rows, d_, recv_order);
  from_experts(recv_order.data(), d_, back);
  by_token_.sum(back.data(), pos_.data(), dx);
}

template class AllToAllDispatcher<float>;
template class AllToAllDispatcher<double>;

}  // namespace moe
