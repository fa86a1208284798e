#include "moe/moe/dispatcher.h"

#include "moe/core/error.h"
#include "moe/layer_steps.h"

namespace moe {

template <typename T>
void TokenSum<T>::build(kernels::Backend backend, int64_t n_tokens, int64_t n_assign, const int32_t* token,
                        int64_t d) {
  backend_ = backend;
  T_ = n_tokens;
  d_ = d;
  offsets_.assign(static_cast<size_t>(T_ + 1), 0);
  assign_.assign(static_cast<size_t>(n_assign), 0);
  std::vector<int32_t> unused(static_cast<size_t>(n_assign));
  if (n_assign > 0)
    kernels::permute(backend_, {.N = n_assign,
                                .E = T_,
                                .expert = token,
                                .offsets = offsets_.data(),
                                .perm = assign_.data(),
                                .pos = unused.data()});
}

template <typename T>
void TokenSum<T>::sum(const T* rows, const int32_t* pos, T* y) const {
  if (T_ == 0) return;
  kernels::CombineArgs<T> a;
  a.T_ = T_;
  a.D = d_;
  a.tok_offsets = offsets_.data();
  a.tok_assign = assign_.data();
  a.pos = pos;
  a.X = rows;
  a.Y = y;
  kernels::combine(backend_, a);
}

template <typename T>
void fill_assignment_rows(kernels::Backend be, const Routing& r, const T* x, std::vector<int32_t>& perm,
                          ExpertBatch<T>& batch) {
  const int64_t N = r.n_assign, M = batch.offsets.back();
  perm.resize(static_cast<size_t>(M));
  batch.rows = M;
  batch.x_rows = x;
  batch.gather.resize(static_cast<size_t>(M));
  batch.weight.resize(static_cast<size_t>(M));
  kernels::dispatch_rows<T>(be, {.M = M,
                                 .N = N,
                                 .n_tokens = r.n_tokens,
                                 .perm = perm.data(),
                                 .token = N ? r.token.data<int32_t>() : nullptr,
                                 .weight = N ? r.weight.data<T>() : nullptr,
                                 .gather = batch.gather.data(),
                                 .row_weight = batch.weight.data()});
  batch.out_row = perm;
  batch.out_rows = N;
}

template <typename T>
void LocalDispatcher<T>::dispatch(const Routing& r, const T* x, int64_t d, ExpertBatch<T>& batch) {
  N_ = r.n_assign;
  const int32_t* expert = N_ ? r.expert.data<int32_t>() : nullptr;
  const int32_t* token = N_ ? r.token.data<int32_t>() : nullptr;
  const uint8_t* kept = N_ ? r.kept.data<uint8_t>() : nullptr;

  // Sort assignments by expert (stable): offsets, perm, pos.
  batch.offsets.assign(static_cast<size_t>(E_ + 1), 0);
  perm_.assign(static_cast<size_t>(N_), 0);
  pos_.assign(static_cast<size_t>(N_), -1);
  if (N_ > 0)
    kernels::permute(backend_, {.N = N_,
                                .E = E_,
                                .expert = expert,
                                .kept = kept,
                                .offsets = batch.offsets.data(),
                                .perm = perm_.data(),
                                .pos = pos_.data()});
  fill_assignment_rows(backend_, r, x, perm_, batch);
  slot_.resize(static_cast<size_t>(N_));
  for (int64_t a = 0; a < N_; ++a) slot_[a] = pos_[a] < 0 ? -1 : static_cast<int32_t>(a);

  by_token_.build(backend_, r.n_tokens, N_, token, d);
}

template <typename T>
void LocalDispatcher<T>::combine(const T* out, T* y) {
  by_token_.sum(out, slot_.data(), y);
}

template <typename T>
void LocalDispatcher<T>::return_dweight(const T* d_row_weight, T* d_weight) {
  for (int64_t a = 0; a < N_; ++a) d_weight[a] = T(0);
  for (size_t p = 0; p < perm_.size(); ++p) d_weight[perm_[p]] = d_row_weight[p];
}

template <typename T>
void LocalDispatcher<T>::dispatch_backward(const T* d_rows, T* dx) {
  // dx[t] = Σ over t's kept assignments of d_rows[pos[a]]: a combine with unit weights.
  by_token_.sum(d_rows, pos_.data(), dx);
}

template void fill_assignment_rows<float>(kernels::Backend, const Routing&, const float*,
                                          std::vector<int32_t>&, ExpertBatch<float>&);
template void fill_assignment_rows<double>(kernels::Backend, const Routing&, const double*,
                                           std::vector<int32_t>&, ExpertBatch<double>&);
template class TokenSum<float>;
template class TokenSum<double>;
template class LocalDispatcher<float>;
template class LocalDispatcher<double>;

}  // namespace moe
