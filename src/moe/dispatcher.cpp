#include "moe/moe/dispatcher.h"

#include "moe/core/error.h"

namespace moe {

template <typename T>
void LocalDispatcher<T>::dispatch(const Routing& r, const T* x, int64_t d, ExpertBatch<T>& batch) {
  T_ = r.n_tokens;
  N_ = r.n_assign;
  d_ = d;
  const int32_t* expert = N_ ? r.expert.data<int32_t>() : nullptr;
  const int32_t* token = N_ ? r.token.data<int32_t>() : nullptr;
  const uint8_t* kept = N_ ? r.kept.data<uint8_t>() : nullptr;
  token_.assign(token, token + N_);

  // Sort assignments by expert (stable): offsets, perm, pos.
  batch.offsets.assign(static_cast<size_t>(E_ + 1), 0);
  std::vector<int32_t> perm(static_cast<size_t>(N_));
  pos_.assign(static_cast<size_t>(N_), -1);
  if (N_ > 0) kernels::permute(backend_, {N_, E_, expert, kept, batch.offsets.data(), perm.data(), pos_.data()});
  batch.rows = batch.offsets[E_];
  batch.x_rows = x;
  batch.gather.resize(static_cast<size_t>(batch.rows));
  for (int64_t p = 0; p < batch.rows; ++p) batch.gather[p] = token[perm[p]];
  batch.assign.assign(perm.begin(), perm.begin() + batch.rows);
  slot_.resize(static_cast<size_t>(N_));
  for (int64_t a = 0; a < N_; ++a) slot_[a] = pos_[a] < 0 ? -1 : static_cast<int32_t>(a);

  // Group assignments by token (the same stable counting sort, keyed by token) for the combine.
  tok_offsets_.assign(static_cast<size_t>(T_ + 1), 0);
  tok_assign_.assign(static_cast<size_t>(N_), 0);
  std::vector<int32_t> unused(static_cast<size_t>(N_));
  if (N_ > 0)
    kernels::permute(backend_, {N_, T_, token, nullptr, tok_offsets_.data(), tok_assign_.data(), unused.data()});
}

template <typename T>
void LocalDispatcher<T>::combine(const T* out, const T* weight, T* y) {
  kernels::CombineArgs<T> a;
  a.T_ = T_;
  a.D = d_;
  a.tok_offsets = tok_offsets_.data();
  a.tok_assign = tok_assign_.data();
  a.pos = pos_.data();
  a.weight = weight;
  a.X = out;
  a.Y = y;
  kernels::combine(backend_, a);
}

template <typename T>
void LocalDispatcher<T>::combine_slots(const T* out_slots, T* y) {
  kernels::CombineArgs<T> a;
  a.T_ = T_;
  a.D = d_;
  a.tok_offsets = tok_offsets_.data();
  a.tok_assign = tok_assign_.data();
  a.pos = slot_.data();
  a.X = out_slots;
  a.Y = y;
  kernels::combine(backend_, a);
}

template <typename T>
void LocalDispatcher<T>::combine_backward(const T* dy, const T* out, const T* weight, T* d_out, T* d_weight) {
  kernels::CombineBackwardArgs<T> a;
  a.N = N_;
  a.D = d_;
  a.token = token_.data();
  a.pos = pos_.data();
  a.weight = weight;
  a.dY = dy;
  a.X = out;
  a.dX = d_out;
  a.dweight = d_weight;
  kernels::combine_backward(backend_, a);
}

template <typename T>
void LocalDispatcher<T>::dispatch_backward(const T* d_rows, T* dx) {
  // dx[t] = Σ over t's kept assignments of d_rows[pos[a]]: a combine with unit weights.
  combine(d_rows, nullptr, dx);
}

template class LocalDispatcher<float>;
template class LocalDispatcher<double>;

}  // namespace moe
