#include "moe/layer_steps.h"

#include <algorithm>

#include "moe/core/parallel.h"
#include "moe/core/rng.h"
#include "moe/moe/balance.h"

namespace moe::detail {

template <typename T>
void router_jitter(const RouterJitterArgs<T>& a) {
  const Rng rng = Rng(a.seed).fork(a.step);
  parallel_for(a.n, 4096, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      a.jitter[i] = static_cast<T>(1.0 - a.eps + 2.0 * a.eps * rng.uniform(static_cast<uint64_t>(i)));
      a.x_r[i] = a.x[i] * a.jitter[i];
    }
  });
}

template <typename T>
void expert_counts(const ExpertCountsArgs<T>& a) {
  for (int64_t i = 0; i < a.n_assign; ++i) {
    const int32_t e = a.expert[i];
    a.routed_weight[e] += static_cast<double>(a.weight[i]);
    if (a.kept[i])
      ++a.kept_count[e];
    else
      ++*a.not_kept;
  }
}

template <typename T>
MoEStats routing_stats(const RoutingStatsArgs& a) {
  const Routing& r = *a.routing;
  const int64_t E = a.cfg->n_experts, N = r.n_assign;
  MoEStats st;
  st.routed_per_expert = routed_counts(r, E);
  st.routed_weight_per_expert.assign(static_cast<size_t>(E), 0.0);
  st.tokens_per_expert.assign(static_cast<size_t>(E), 0);
  expert_counts<T>({.n_assign = N,
                    .expert = N ? r.expert.data<int32_t>() : nullptr,
                    .kept = N ? r.kept.data<uint8_t>() : nullptr,
                    .weight = N ? r.weight.data<T>() : nullptr,
                    .routed_weight = st.routed_weight_per_expert.data(),
                    .kept_count = st.tokens_per_expert.data(),
                    .not_kept = &st.dropped});
  st.skipped = a.skipped;
  st.dropped -= a.skipped;
  const int64_t max_c = *std::max_element(st.routed_per_expert.begin(), st.routed_per_expert.end());
  st.imbalance = N > 0 ? static_cast<double>(max_c) * static_cast<double>(E) / static_cast<double>(N) : 0.0;
  const BalanceLosses bl = balance_losses(*a.cfg, r, nullptr);
  st.aux_loss = bl.aux;
  st.seq_aux_loss = bl.seq_aux;
  st.z_loss = bl.z;
  return st;
}

template <typename T>
std::vector<TokenChunk> split_routing(const SplitRoutingArgs& a) {
  const Routing& r = *a.routing;
  const int64_t nT = r.n_tokens, n = a.n_chunks;
  if (n <= 1) {
    std::vector<TokenChunk> one(1);
    one[0].t1 = nT;
    one[0].routing = r;
    return one;
  }
  std::vector<TokenChunk> chunks(static_cast<size_t>(n));
  std::vector<int32_t> chunk_of(static_cast<size_t>(nT));  // (T)
  for (int64_t c = 0; c < n; ++c) {
    chunks[c].t0 = c * nT / n;
    chunks[c].t1 = (c + 1) * nT / n;
    for (int64_t t = chunks[c].t0; t < chunks[c].t1; ++t) chunk_of[t] = static_cast<int32_t>(c);
  }
  const int32_t* tok = r.n_assign ? r.token.data<int32_t>() : nullptr;
  for (int64_t i = 0; i < r.n_assign; ++i) chunks[chunk_of[tok[i]]].assign.push_back(static_cast<int32_t>(i));
  const DType dt = dtype_of<T>::value;
  for (TokenChunk& ch : chunks) {
    const int64_t m = static_cast<int64_t>(ch.assign.size());
    Routing& s = ch.routing;
    s.n_tokens = ch.t1 - ch.t0;
    s.n_assign = m;
    s.capacity = r.capacity;
    s.token = Tensor::empty({m}, DType::I32, "token");
    s.expert = Tensor::empty({m}, DType::I32, "expert");
    s.weight = Tensor::empty({m}, dt, "weight");
    s.kept = Tensor::empty({m}, DType::U8, "kept");
    for (int64_t i = 0; i < m; ++i) {
      const int32_t src = ch.assign[i];
      s.token.data<int32_t>()[i] = tok[src] - static_cast<int32_t>(ch.t0);
      s.expert.data<int32_t>()[i] = r.expert.data<int32_t>()[src];
      s.weight.data<T>()[i] = r.weight.data<T>()[src];
      s.kept.data<uint8_t>()[i] = r.kept.data<uint8_t>()[src];
    }
  }
  return chunks;
}

template <typename T>
void sorted_rows(const SortedRowsArgs<T>& a) {
  for (int64_t p = 0; p < a.rows; ++p) {
    a.gather[p] = a.token[a.perm[p]];
    a.row_weight[p] = a.weight[a.perm[p]];
  }
}

template <typename T>
void scale_scatter_rows(const ScaleScatterArgs<T>& a) {
  const int64_t d = a.d;
  parallel_for(a.rows, std::max<int64_t>(1, 4096 / d), [&](int64_t lo, int64_t hi) {
    for (int64_t q = lo; q < hi; ++q)
      for (int64_t i = 0; i < d; ++i) a.dst[a.out_row[q] * d + i] = a.scale[q] * a.src[q * d + i];
  });
}

template <typename T>
void add_gated_rows(const AddGatedRowsArgs<T>& a) {
  const int64_t d = a.d;
  const T* g = a.gate;
  const T* ys = a.src;
  T* y = a.y;
  if (g) {
    parallel_for(a.rows, 16, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t)
        for (int64_t i = 0; i < d; ++i) y[t * d + i] += g[t] * ys[t * d + i];
    });
  } else {
    parallel_for(a.rows * d, 4096, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) y[i] += ys[i];
    });
  }
}

template <typename T>
void scatter_assign(const ScatterAssignArgs<T>& a) {
  for (int64_t i = 0; i < a.n; ++i) a.dst[a.index[i]] = a.src[i];
}

#define MOE_LAYER_STEPS(T)                                                    \
  template void router_jitter<T>(const RouterJitterArgs<T>&);                 \
  template void expert_counts<T>(const ExpertCountsArgs<T>&);                 \
  template MoEStats routing_stats<T>(const RoutingStatsArgs&);                \
  template std::vector<TokenChunk> split_routing<T>(const SplitRoutingArgs&); \
  template void sorted_rows<T>(const SortedRowsArgs<T>&);                     \
  template void scale_scatter_rows<T>(const ScaleScatterArgs<T>&);            \
  template void add_gated_rows<T>(const AddGatedRowsArgs<T>&);                \
  template void scatter_assign<T>(const ScatterAssignArgs<T>&);
MOE_LAYER_STEPS(float)
MOE_LAYER_STEPS(double)
#undef MOE_LAYER_STEPS

}  // namespace moe::detail
