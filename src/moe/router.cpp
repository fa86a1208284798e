#include "moe/moe/router.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "moe/core/error.h"
#include "moe/core/parallel.h"

namespace moe {

namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// Rows per thread chunk for row-wise loops over (T, E): enough work (~16K elements) per chunk
// that small batches run inline instead of paying for a parallel region.
int64_t row_grain(int64_t E) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(E, 1)); }

double sigmoid(double z) { return z >= 0 ? 1.0 / (1.0 + std::exp(-z)) : std::exp(z) / (1.0 + std::exp(z)); }

// Softmax or sigmoid of one row of logits lt (E) into st (E), in double.
void score_row(ScoreFn fn, const double* lt, int64_t E, double* st) {
  if (fn == ScoreFn::Sigmoid) {
    for (int64_t i = 0; i < E; ++i) st[i] = sigmoid(lt[i]);
  } else {
    const double mx = *std::max_element(lt, lt + E);
    double z = 0;
    for (int64_t i = 0; i < E; ++i) z += (st[i] = std::exp(lt[i] - mx));
    for (int64_t i = 0; i < E; ++i) st[i] /= z;
  }
}

// Row-wise softmax or sigmoid of logits (T, E) into scores (T, E).
void score_rows(ScoreFn fn, const std::vector<double>& l, int64_t T, int64_t E, std::vector<double>& s) {
  s.resize(l.size());
  parallel_for(T, row_grain(E), [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) score_row(fn, &l[t * E], E, &s[t * E]);
  });
}

double logsumexp(const double* v, int64_t n, int64_t stride = 1) {
  double mx = kNegInf;
  for (int64_t i = 0; i < n; ++i) mx = std::max(mx, v[i * stride]);
  if (mx == kNegInf) return kNegInf;
  double z = 0;
  for (int64_t i = 0; i < n; ++i) z += std::exp(v[i * stride] - mx);
  return mx + std::log(z);
}

// Log-domain Sinkhorn balancing of the logits; returns the balanced log-plan (T, E).
std::vector<double> sinkhorn(const std::vector<double>& l, int64_t T, int64_t E, int64_t k, int iters) {
  std::vector<double> L = l;
  const double log_row = std::log(static_cast<double>(k));
  const double log_col = std::log(static_cast<double>(T * k) / static_cast<double>(E));
  for (int it = 0; it < iters; ++it) {
    for (int64_t t = 0; t < T; ++t) {
      const double c = logsumexp(&L[t * E], E) - log_row;
      for (int64_t e = 0; e < E; ++e) L[t * E + e] -= c;
    }
    for (int64_t e = 0; e < E; ++e) {
      const double c = logsumexp(&L[e], T, E) - log_col;
      for (int64_t t = 0; t < T; ++t) L[t * E + e] -= c;
    }
  }
  return L;
}

// Token-choice style weights for a token's chosen experts idx[0..k).
void token_weights(const RouterConfig& rc, const double* l, const double* s, const int32_t* idx, int64_t k,
                   double* w) {
  const kernels::RouterOrder order = rc.order == TopkOrder::TopkThenSoftmax
                                         ? kernels::RouterOrder::TopkThenSoftmax
                                         : kernels::RouterOrder::ScoreThenTopk;
  kernels::topk_weights(order, rc.normalize, rc.scaling, l, s, idx, k, w);
}

// Capacity dropping for token-major assignments a = t * k + j.
void apply_capacity(const RouterConfig& rc, int64_t T, int64_t k, int64_t E, int64_t C,
                    const std::vector<int32_t>& expert, const std::vector<double>& weight,
                    const std::vector<uint8_t>& active, std::vector<uint8_t>& kept) {
  const int64_t N = T * k;
  if (active.empty())
    kept.assign(static_cast<size_t>(N), 1);
  else
    kept = active;  // a slot top-p did not select is never kept and takes no capacity
  if (C <= 0) return;
  // Priority order: slot-major (j, t); for `probs`, stable-sorted by weight descending.
  std::vector<int32_t> order(static_cast<size_t>(N));
  int64_t p = 0;
  for (int64_t j = 0; j < k; ++j)
    for (int64_t t = 0; t < T; ++t) order[p++] = static_cast<int32_t>(t * k + j);
  if (rc.drop_policy == DropPolicy::Probs)
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return weight[a] > weight[b]; });
  std::vector<int64_t> load(static_cast<size_t>(E), 0);
  for (int32_t a : order) {
    if (!kept[a]) continue;
    if (load[expert[a]] < C) {
      ++load[expert[a]];
    } else {
      kept[a] = 0;
    }
  }
}

}  // namespace

uint64_t splitmix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

int64_t token_capacity(const RouterConfig& rc, int64_t T, int64_t E) {
  if (rc.capacity_factor <= 0) return 0;
  return static_cast<int64_t>(
      std::ceil(rc.capacity_factor * static_cast<double>(T * rc.top_k) / static_cast<double>(E)));
}

int64_t expert_choice_capacity(const RouterConfig& rc, int64_t T, int64_t E) {
  const double cf = rc.capacity_factor > 0 ? rc.capacity_factor : 1.0;
  const int64_t C =
      static_cast<int64_t>(std::ceil(cf * static_cast<double>(T * rc.top_k) / static_cast<double>(E)));
  return std::min(C, T);
}

namespace {

// The assignments of one routing before they become tensors, weights in double.
struct Selection {
  int64_t capacity = 0;
  std::vector<int32_t> token, expert;  // (N) each
  std::vector<double> weight;          // (N)
  std::vector<uint8_t> kept;           // (N)
  std::vector<uint8_t> active;         // (N) top-p routing only: the selected slots
  Tensor weight_t;                     // (N) in the logits' dtype, when the router_topk op made it
};

// What the selection policies read. The host policies (all but token choice) need l and s; token
// choice runs the router_topk op on the logits tensor, which writes the scores itself.
struct SelectArgs {
  const RouterConfig* rc = nullptr;
  int64_t T = 0, E = 0;
  kernels::Exec* exec = nullptr;           // where the router_topk op runs
  const Tensor* logits = nullptr;          // (T, E) contiguous, f32 or f64
  const std::vector<double>* l = nullptr;  // (T, E) logits in double, host policies only
  const std::vector<double>* s = nullptr;  // (T, E) scores in double, host policies only
  const double* bias = nullptr;            // (E) selection bias or null, token choice only
  const Tensor* token_ids = nullptr;       // (T) i32, hash routing only
  Tensor* scores = nullptr;                // (T, E) out, token choice only
};

// Expert choice: each expert takes the C tokens with the largest scores; a = e * C + c.
Selection select_expert_choice(const SelectArgs& a) {
  const RouterConfig& rc = *a.rc;
  const int64_t T = a.T, E = a.E;
  const std::vector<double>& s = *a.s;
  Selection sel;
  const int64_t C = T == 0 ? 0 : expert_choice_capacity(rc, T, E);
  sel.capacity = C;
  const int64_t N = E * C;
  sel.token.resize(N);
  sel.expert.resize(N);
  sel.weight.resize(N);
  sel.kept.assign(N, 1);
  parallel_for(E, 1, [&](int64_t e0, int64_t e1) {
    std::vector<double> col(static_cast<size_t>(T));
    std::vector<int32_t> top(static_cast<size_t>(C));
    for (int64_t e = e0; e < e1; ++e) {
      for (int64_t t = 0; t < T; ++t) col[t] = s[t * E + e];
      topk_desc(col.data(), T, C, top.data());
      for (int64_t c = 0; c < C; ++c) {
        const int64_t i = e * C + c;
        sel.token[i] = top[c];
        sel.expert[i] = static_cast<int32_t>(e);
        sel.weight[i] = rc.scaling * s[top[c] * E + e];
      }
    }
  });
  return sel;
}

// Hash routing's token ids (T), checked.
std::vector<int32_t> hash_ids(const Tensor* token_ids, int64_t T) {
  MOE_CHECK(token_ids && token_ids->defined(), "hash routing needs token ids (ForwardOptions::token_ids)");
  check_shape(*token_ids, {T}, "token_ids");
  token_ids->check_dtype(DType::I32, "token_ids");
  const Tensor tc = token_ids->contiguous();
  std::vector<int32_t> ids(tc.data<int32_t>(), tc.data<int32_t>() + T);
  for (int64_t t = 0; t < T; ++t)
    MOE_CHECK(ids[t] >= 0, "token_ids: negative id ", ids[t], " at position ", t);
  return ids;
}

// Hash and balanced routing: token t's k experts and weights from l and s.
void select_rows_host(const SelectArgs& a, const std::vector<int32_t>& ids, const std::vector<double>& plan,
                      Selection& sel) {
  const RouterConfig& rc = *a.rc;
  const int64_t E = a.E, k = rc.top_k;
  const std::vector<double>& l = *a.l;
  const std::vector<double>& s = *a.s;
  parallel_for(a.T, row_grain(E), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      int32_t* idx = &sel.expert[t * k];
      if (rc.routing == RouterType::Hash) {
        const uint64_t h0 = splitmix64(rc.hash_seed ^ static_cast<uint64_t>(ids[t]));
        for (int64_t j = 0; j < k; ++j) {
          int64_t e =
              static_cast<int64_t>(splitmix64(h0 + static_cast<uint64_t>(j)) % static_cast<uint64_t>(E));
          while (std::find(idx, idx + j, static_cast<int32_t>(e)) != idx + j) e = (e + 1) % E;
          idx[j] = static_cast<int32_t>(e);
        }
      } else {  // balanced
        topk_desc(&plan[t * E], E, k, idx);
      }
      token_weights(rc, &l[t * E], &s[t * E], idx, k, &sel.weight[t * k]);
      for (int64_t j = 0; j < k; ++j) sel.token[t * k + j] = static_cast<int32_t>(t);
    }
  });
}

// Token choice as one router_topk op: scores (into the Routing's tensor), experts, and the weights
// both in the logits' dtype (the Routing's) and in double (for capacity by probability).
template <typename T>
void token_choice(const SelectArgs& a, Selection& sel) {
  const RouterConfig& rc = *a.rc;
  const int64_t N = a.T * rc.top_k;
  sel.weight_t = Tensor::empty({N}, dtype_of<T>::value, "weight");  // (N)
  kernels::router_topk<T>(
      *a.exec,
      {.T_ = a.T,
       .E = a.E,
       .k = rc.top_k,
       .score = rc.score == ScoreFn::Sigmoid ? kernels::RouterScore::Sigmoid : kernels::RouterScore::Softmax,
       .order = rc.order == TopkOrder::TopkThenSoftmax ? kernels::RouterOrder::TopkThenSoftmax
                                                       : kernels::RouterOrder::ScoreThenTopk,
       .n_groups = rc.n_groups,
       .topk_groups = rc.topk_groups,
       .group_score = rc.group_score == GroupScore::Max ? kernels::RouterGroupScore::Max
                                                        : kernels::RouterGroupScore::SumTop2,
       .normalize = rc.normalize,
       .scaling = rc.scaling,
       .logits = a.T > 0 ? a.logits->data<T>() : nullptr,
       .bias = a.bias,
       .scores = a.T > 0 ? a.scores->data<T>() : nullptr,
       .expert = sel.expert.data(),
       .weight = a.T > 0 ? sel.weight_t.data<T>() : nullptr,
       .weight_f64 = sel.weight.data()});
}

// Top-p routing: token t selects its candidates j = 0, 1, ... (best first) while the probability
// mass of those already selected is below top_p, at least min_k and at most k. The weights of the
// others become 0; with normalize (or topk_then_softmax, whose weights are the same renormalised
// softmax) the selected weights are c · s_j / Σ_selected s.
template <typename T>
void apply_top_p(const RouterConfig& rc, int64_t nT, int64_t E, const Tensor& scores, Selection& sel) {
  const int64_t k = rc.top_k;
  sel.active.assign(static_cast<size_t>(nT * k), 0);
  if (nT == 0) return;
  const T* s = scores.data<T>();
  T* wt = sel.weight_t.data<T>();
  const bool renorm = rc.normalize || rc.order == TopkOrder::TopkThenSoftmax;
  parallel_for(nT, row_grain(E), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t a0 = t * k;
      double mass = 0;
      int64_t n = 0;
      while (n < k && (n < rc.min_k || mass < rc.top_p)) {
        mass += static_cast<double>(s[t * E + sel.expert[a0 + n]]);
        ++n;
      }
      for (int64_t j = 0; j < k; ++j) {
        const int64_t a = a0 + j;
        sel.active[a] = j < n ? 1 : 0;
        double w = 0;
        if (j < n)
          w = renorm ? rc.scaling * static_cast<double>(s[t * E + sel.expert[a]]) / mass : sel.weight[a];
        sel.weight[a] = w;
        wt[a] = static_cast<T>(w);
      }
    }
  });
}

// Token choice, hash and balanced routing: k experts per token, a = t * k + j, then capacity.
Selection select_token_major(const SelectArgs& a) {
  const RouterConfig& rc = *a.rc;
  const int64_t T = a.T, E = a.E, k = rc.top_k;
  const bool fused = rc.routing == RouterType::TokenChoice;
  Selection sel;
  const int64_t N = T * k;
  sel.token.resize(N);
  sel.expert.resize(N);
  sel.weight.resize(N);
  std::vector<int32_t> ids;  // (T)
  if (rc.routing == RouterType::Hash) ids = hash_ids(a.token_ids, T);
  std::vector<double> plan;  // (T, E)
  if (rc.routing == RouterType::Balanced && T > 0) plan = sinkhorn(*a.l, T, E, k, rc.sinkhorn_iters);

  if (fused) {
    if (a.logits->dtype() == DType::F64)
      token_choice<double>(a, sel);
    else
      token_choice<float>(a, sel);
    for (int64_t i = 0; i < N; ++i) sel.token[i] = static_cast<int32_t>(i / k);
    if (rc.top_p > 0) {
      if (a.logits->dtype() == DType::F64)
        apply_top_p<double>(rc, T, E, *a.scores, sel);
      else
        apply_top_p<float>(rc, T, E, *a.scores, sel);
    }
  }
  if (!fused) select_rows_host(a, ids, plan, sel);
  sel.capacity = T == 0 ? 0 : token_capacity(rc, T, E);
  apply_capacity(rc, T, k, E, sel.capacity, sel.expert, sel.weight, sel.active, sel.kept);
  return sel;
}

}  // namespace

Routing route(const MoEConfig& cfg, const Tensor& logits_t, const Tensor& bias_t, const Tensor* token_ids,
              kernels::Exec exec) {
  const RouterConfig& rc = cfg.router;
  const int64_t E = cfg.n_experts;
  check_shape(logits_t, {-1, E}, "router logits");
  const int64_t T = logits_t.size(0);
  const DType dt = logits_t.dtype();
  MOE_CHECK(dt == DType::F32 || dt == DType::F64, "router logits: dtype must be f32 or f64, got ",
            dtype_name(dt));

  // Token choice is the router_topk op; the other policies need all of l and s on the host.
  const bool fused = rc.routing == RouterType::TokenChoice;
  const Tensor logits_c = logits_t.contiguous();
  std::vector<double> l, s;  // (T, E) each, unfused policies only
  if (!fused) {
    l = logits_c.to(DType::F64).to_vector();
    score_rows(rc.score, l, T, E, s);
  }
  std::vector<double> b;  // (E) selection bias, empty without one
  if (rc.use_bias && bias_t.defined()) {
    check_shape(bias_t, {E}, "router_bias");
    b = bias_t.to_vector();
  }

  Routing r;
  r.n_tokens = T;
  if (fused) r.scores = Tensor::empty({T, E}, dt, "scores");
  const SelectArgs args{.rc = &rc,
                        .T = T,
                        .E = E,
                        .exec = &exec,
                        .logits = &logits_c,
                        .l = &l,
                        .s = &s,
                        .bias = b.empty() ? nullptr : b.data(),
                        .token_ids = token_ids,
                        .scores = &r.scores};
  const Selection sel =
      rc.routing == RouterType::ExpertChoice ? select_expert_choice(args) : select_token_major(args);

  const int64_t N = static_cast<int64_t>(sel.token.size());
  r.capacity = sel.capacity;
  r.n_assign = N;
  r.token = Tensor::empty({N}, DType::I32, "token");
  r.expert = Tensor::empty({N}, DType::I32, "expert");
  r.kept = Tensor::empty({N}, DType::U8, "kept");
  std::copy(sel.token.begin(), sel.token.end(), r.token.data<int32_t>());
  std::copy(sel.expert.begin(), sel.expert.end(), r.expert.data<int32_t>());
  std::copy(sel.kept.begin(), sel.kept.end(), r.kept.data<uint8_t>());
  r.n_active = N;
  if (!sel.active.empty()) {
    r.active = Tensor::empty({N}, DType::U8, "active");
    std::copy(sel.active.begin(), sel.active.end(), r.active.data<uint8_t>());
    r.n_active = std::count(sel.active.begin(), sel.active.end(), uint8_t{1});
  }
  r.weight = sel.weight_t.defined() ? sel.weight_t : Tensor::from(sel.weight, {N}, dt, "weight");
  r.logits = logits_c;
  if (!fused) r.scores = Tensor::from(s, {T, E}, dt, "scores");
  return r;
}

int64_t skip_low_weights(const RouterConfig& rc, Routing& r) {
  if (rc.skip_threshold <= 0 || r.n_assign == 0) return 0;
  const std::vector<double> w = r.weight.to(DType::F64).to_vector();  // (N)
  uint8_t* kept = r.kept.data<uint8_t>();
  int64_t n = 0;
  for (int64_t a = 0; a < r.n_assign; ++a) {
    if (kept[a] && w[a] < rc.skip_threshold) kept[a] = 0, ++n;
  }
  return n;
}

void route_backward(const MoEConfig& cfg, const Routing& r, const double* dw, double* dl) {
  const RouterConfig& rc = cfg.router;
  const int64_t E = cfg.n_experts, T = r.n_tokens, N = r.n_assign;
  if (T == 0) return;
  const std::vector<double> l = r.logits.to(DType::F64).to_vector();
  const std::vector<double> s = r.scores.to(DType::F64).to_vector();
  const int32_t* token = r.token.data<int32_t>();
  const int32_t* expert = r.expert.data<int32_t>();

  std::vector<double> ds(static_cast<size_t>(T * E), 0.0);  // d loss / d scores
  if (rc.routing == RouterType::ExpertChoice) {
    for (int64_t a = 0; a < N; ++a) ds[token[a] * E + expert[a]] += rc.scaling * dw[a];
  } else {
    const int64_t K = rc.top_k;
    const uint8_t* active = r.active.defined() ? r.active.data<uint8_t>() : nullptr;
    parallel_for(T, row_grain(E), [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int32_t* idx = &expert[t * K];
        const double* dwt = &dw[t * K];
        // The selected slots are a prefix (all K without top-p); the others have weight 0 and no gradient.
        int64_t k = K;
        if (active != nullptr)
          while (k > 0 && active[t * K + k - 1] == 0) --k;
        if (rc.order == TopkOrder::TopkThenSoftmax) {
          // w_j = c * q_j, q = softmax(l[idx]): dl_{idx_j} = c * q_j * (dw_j - Σ q dw)
          double mx = kNegInf;
          for (int64_t j = 0; j < k; ++j) mx = std::max(mx, l[t * E + idx[j]]);
          std::vector<double> q(static_cast<size_t>(k));
          double z = 0;
          for (int64_t j = 0; j < k; ++j) z += (q[j] = std::exp(l[t * E + idx[j]] - mx));
          double dot = 0;
          for (int64_t j = 0; j < k; ++j) dot += (q[j] /= z) * dwt[j];
          for (int64_t j = 0; j < k; ++j) dl[t * E + idx[j]] += rc.scaling * q[j] * (dwt[j] - dot);
          continue;
        }
        double z = 1.0, dot = 0.0;
        if (rc.normalize) {
          z = 0;
          for (int64_t j = 0; j < k; ++j) z += s[t * E + idx[j]];
          for (int64_t j = 0; j < k; ++j) dot += dwt[j] * s[t * E + idx[j]];
          dot /= z;
        }
        // w_j = c * s_j / Z  =>  ds_j = (c / Z) * (dw_j - Σ_j' dw_j' s_j' / Z)
        for (int64_t j = 0; j < k; ++j) ds[t * E + idx[j]] += rc.scaling / z * (dwt[j] - dot);
      }
    });
    if (rc.order == TopkOrder::TopkThenSoftmax) return;
  }
  // Scores back to logits.
  parallel_for(T, row_grain(E), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const double* st = &s[t * E];
      const double* dst = &ds[t * E];
      double* dlt = &dl[t * E];
      if (rc.score == ScoreFn::Sigmoid) {
        for (int64_t e = 0; e < E; ++e) dlt[e] += dst[e] * st[e] * (1.0 - st[e]);
      } else {
        double dot = 0;
        for (int64_t e = 0; e < E; ++e) dot += st[e] * dst[e];
        for (int64_t e = 0; e < E; ++e) dlt[e] += st[e] * (dst[e] - dot);
      }
    }
  });
}

}  // namespace moe
