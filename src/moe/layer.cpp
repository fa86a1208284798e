#include "moe/moe/layer.h"

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "moe/core/error.h"
#include "moe/core/parallel.h"
#include "moe/core/rng.h"
#include "moe/kernels/ops_bf16.h"
#include "moe/moe/balance.h"
#include "moe/moe/dispatcher.h"
#include "moe/moe/expert_parallel.h"
#include "moe/moe/router.h"
#include "moe/pipeline.h"

namespace moe {

namespace {

using kernels::Activation;
using kernels::Backend;

bool is_swiglu(const MoEConfig& c) { return c.activation == Activation::SwiGLU; }

// C (M, N) = alpha * op(A) · op(B) + beta * C, contiguous row-major operands.
template <typename T>
void mm(Backend be, int64_t M, int64_t N, int64_t K, const T* A, bool ta, const T* B, bool tb, T* C, T beta = 0) {
  kernels::GemmArgs<T> g;
  g.M = M;
  g.N = N;
  g.K = K;
  g.A = A;
  g.lda = ta ? M : K;
  g.trans_a = ta;
  g.B = B;
  g.ldb = tb ? K : N;
  g.trans_b = tb;
  g.C = C;
  g.ldc = N;
  g.beta = beta;
  kernels::gemm(be, g);
}

// dW_e (N, K) = Σ_p dC[crow(p)]^T · A[row(p)], dC rows of stride ldc read through dC_gather. With
// preact, A holds saved pre-activations and row p stands for a_scale[p] * act(A[p]).
template <typename T>
void wgrad_rows(Backend be, const ExpertBatch<T>& b, int64_t N, int64_t K, const T* dC, int64_t ldc,
                const int32_t* dC_gather, const T* A, bool gather, T* dW, T beta = 0,
                const kernels::Activation* preact = nullptr, const T* a_scale = nullptr) {
  kernels::GroupedWgradArgs<T> g;
  g.E = static_cast<int64_t>(b.offsets.size()) - 1;
  g.N = N;
  g.K = K;
  g.offsets = b.offsets.data();
  g.dC = dC;
  g.ldc = ldc;
  g.dC_gather = dC_gather;
  g.A = A;
  g.lda = preact && *preact == Activation::SwiGLU ? 2 * K : K;
  g.gather = gather && !b.gather.empty() ? b.gather.data() : nullptr;
  g.dW = dW;
  g.beta = beta;
  if (preact) {  // A = a_scale * act(saved pre-activations), made while packing
    g.a_preact = true;
    g.act = *preact;
    g.a_scale = a_scale;
  }
  kernels::grouped_gemm_wgrad(be, g);
}

// Pre-activations of the expert FFN: [G | U] (M, 2F) for SwiGLU, U (M, F) otherwise.
template <typename T>
struct PreAct {
  T* G = nullptr;
  T* U = nullptr;
  int64_t ld = 0;
};
template <typename T>
PreAct<T> pre_act(bool swiglu, T* base, int64_t F) {
  return swiglu ? PreAct<T>{base, base + F, 2 * F} : PreAct<T>{nullptr, base, F};
}

// [G | U] (or U) of A's rows through the fused gate/up grouped GEMM, and H (M, F) = act([G | U])
// when H is not null.
template <typename T>
void ffn_up(Backend be, Activation a, const ExpertBatch<T>& b, int64_t F, int64_t K, const T* A, const T* Wg,
            const T* Wu, PreAct<T> pa, T* H) {
  kernels::FfnUpArgs<T> g;
  g.act = a;
  g.E = static_cast<int64_t>(b.offsets.size()) - 1;
  g.F = F;
  g.K = K;
  g.offsets = b.offsets.data();
  g.A = A;
  g.lda = K;
  g.gather = b.gather.empty() ? nullptr : b.gather.data();
  g.W_gate = Wg;
  g.W_up = Wu;
  g.H = H;
  g.ldh = F;
  g.G = pa.G;
  g.ldg = pa.ld;
  g.U = pa.U;
  g.ldu = pa.ld;
  kernels::grouped_ffn_up(be, g);
}

// Backward of out[p] = scale[p] * act(G, U)[p] · W_down_e^T from dY's rows: d pre-activations into
// dpa, Hs = scale * h (for W_down's gradient), dscale (M) = <dY[row(p)] · W_down_e, h>.
template <typename T>
void ffn_down_backward(Backend be, Activation a, const ExpertBatch<T>& b, int64_t F, int64_t D, const T* dY,
                       const T* scale, const T* Wd, PreAct<T> pa, PreAct<T> dpa, T* Hs, T* dscale) {
  kernels::FfnDownBackwardArgs<T> g;
  g.act = a;
  g.E = static_cast<int64_t>(b.offsets.size()) - 1;
  g.F = F;
  g.D = D;
  g.offsets = b.offsets.data();
  g.dY = dY;
  g.ldy = D;
  g.gather = b.gather.empty() ? nullptr : b.gather.data();
  g.scale = scale;
  g.W_down = Wd;
  g.G = pa.G;
  g.ldg = pa.ld;
  g.U = pa.U;
  g.ldu = pa.ld;
  g.dG = dpa.G;
  g.lddg = dpa.ld;
  g.dU = dpa.U;
  g.lddu = dpa.ld;
  g.Hs = Hs;
  g.ldhs = F;
  g.dscale = dscale;
  kernels::grouped_ffn_down_backward(be, g);
}

// C (M, N) = beta * C + [dG | dU] · [W_gate_e; W_up_e] (SwiGLU) or dU · W_up_e: one grouped GEMM
// over K = 2F (or F) per row, weights (E, F, N).
template <typename T>
void ffn_input_grad(Backend be, bool swiglu, const ExpertBatch<T>& b, int64_t N, int64_t F, PreAct<T> dpa,
                    const T* Wg, const T* Wu, T* C, T beta = 0) {
  kernels::GroupedGemmCatArgs<T> g;
  g.E = static_cast<int64_t>(b.offsets.size()) - 1;
  g.N = N;
  g.K1 = F;
  g.K2 = swiglu ? F : 0;
  g.offsets = b.offsets.data();
  g.A = swiglu ? dpa.G : dpa.U;
  g.lda = dpa.ld;
  g.W1 = swiglu ? Wg : Wu;
  g.W2 = swiglu ? Wu : nullptr;
  g.C = C;
  g.ldc = N;
  g.beta = beta;
  kernels::grouped_gemm_cat(be, g);
}

template <typename T>
T* ptr(const Tensor& t) {
  return t.defined() ? t.data<T>() : nullptr;
}

// The routed experts' work on tokens [t0, t1): one part, or under expert parallelism with chunks,
// one per token chunk.
template <typename T>
struct Part {
  int64_t t0 = 0, t1 = 0;
  Routing routing;              // the part's assignments, tokens counted from t0
  std::vector<int32_t> assign;  // (N_part) index of each in the layer's routing; empty: the same
  std::shared_ptr<Dispatcher<T>> disp;
  ExpertBatch<T> batch;
  Tensor GU;                    // (M, 2F) [G | U] for SwiGLU, (M, F) U otherwise: pre-activations
};

// Splits routing r into n token chunks (n = 1: r itself).
template <typename T>
std::vector<Part<T>> make_parts(const Routing& r, int64_t n) {
  const int64_t nT = r.n_tokens;
  if (n <= 1) {
    std::vector<Part<T>> one(1);
    one[0].t1 = nT;
    one[0].routing = r;
    return one;
  }
  std::vector<Part<T>> parts(static_cast<size_t>(n));
  std::vector<int32_t> chunk_of(static_cast<size_t>(nT));
  for (int64_t c = 0; c < n; ++c) {
    parts[c].t0 = c * nT / n;
    parts[c].t1 = (c + 1) * nT / n;
    for (int64_t t = parts[c].t0; t < parts[c].t1; ++t) chunk_of[t] = static_cast<int32_t>(c);
  }
  const int32_t* tok = r.n_assign ? r.token.data<int32_t>() : nullptr;
  for (int64_t a = 0; a < r.n_assign; ++a) parts[chunk_of[tok[a]]].assign.push_back(static_cast<int32_t>(a));
  const DType dt = dtype_of<T>::value;
  for (Part<T>& p : parts) {
    const int64_t m = static_cast<int64_t>(p.assign.size());
    Routing& s = p.routing;
    s.n_tokens = p.t1 - p.t0;
    s.n_assign = m;
    s.capacity = r.capacity;
    s.token = Tensor::empty({m}, DType::I32, "token");
    s.expert = Tensor::empty({m}, DType::I32, "expert");
    s.weight = Tensor::empty({m}, dt, "weight");
    s.kept = Tensor::empty({m}, DType::U8, "kept");
    for (int64_t i = 0; i < m; ++i) {
      const int32_t a = p.assign[i];
      s.token.data<int32_t>()[i] = tok[a] - static_cast<int32_t>(p.t0);
      s.expert.data<int32_t>()[i] = r.expert.data<int32_t>()[a];
      s.weight.data<T>()[i] = r.weight.data<T>()[a];
      s.kept.data<uint8_t>()[i] = r.kept.data<uint8_t>()[a];
    }
  }
  return parts;
}

// Activations kept from forward for backward.
template <typename T>
struct Saved {
  Tensor x;       // (T, d) contiguous input
  Tensor x_r;     // (T, d) router input (jittered x, or x)
  Tensor jitter;  // (T, d) jitter factors, undefined without jitter
  std::vector<Part<T>> parts;
  Tensor GUs, g;             // shared experts: pre-activations (T, 2Fs) or (T, Fs), gate (T, 1)
  ExpertBatch<T> shared;     // the shared FFN as one expert over all T rows
  bool bf16 = false;         // ran on bf16 expert weights: inference only, nothing saved
  // Backward writes the pre-activations' gradients over them (parts[].GU, GUs): one backward per
  // forward.
  mutable bool consumed = false;
};

const uint16_t* bf16_ptr(const Tensor& t) {
  if (!t.defined()) return nullptr;
  t.check_dtype(DType::BF16);
  return static_cast<const uint16_t*>(t.raw());
}

// Expert FFN on bf16 weights (inference): out (M, d) = act(x_rows · W_in^T) · W_d^T per expert, rows
// as in the batch, fp32 activations rounded to bf16 inside the GEMMs. W_in is [gate; up] per expert
// for SwiGLU (one GEMM gives [G | U]), up otherwise; the down projection makes h from the
// pre-activations while packing (no H buffer). With scale or out_row, row p of the result is
// stored scaled by scale[p] at out row out_row[p] (as grouped_gemm_scatter does).
void ffn_bf16(Backend be, const MoEConfig& cfg, const ExpertBatch<float>& b, int64_t F, const Tensor& W_in,
              const Tensor& Wd, float* out, const float* scale = nullptr, const int32_t* out_row = nullptr) {
  const int64_t M = b.rows, d = cfg.d_model;
  const int64_t n_in = is_swiglu(cfg) ? 2 * F : F;
  Tensor GU = Tensor::empty({M, n_in}, DType::F32, "expert pre-activations");
  kernels::GroupedGemmBf16Args g;
  g.E = static_cast<int64_t>(b.offsets.size()) - 1;
  g.N = n_in;
  g.K = d;
  g.offsets = b.offsets.data();
  g.A = b.x_rows;
  g.lda = d;
  g.gather = b.gather.empty() ? nullptr : b.gather.data();
  g.W = bf16_ptr(W_in);
  g.C = GU.data<float>();
  g.ldc = n_in;
  kernels::grouped_gemm_bf16w(be, g);
  kernels::GroupedGemmBf16Args dn;
  dn.E = g.E;
  dn.N = d;
  dn.K = F;
  dn.offsets = b.offsets.data();
  dn.A = GU.data<float>();
  dn.lda = n_in;
  dn.a_preact = true;
  dn.act = cfg.activation;
  dn.W = bf16_ptr(Wd);
  dn.C = out;
  dn.ldc = d;
  dn.scale = scale;
  dn.out_row = out_row;
  kernels::grouped_gemm_bf16w(be, dn);
}

template <typename T>
MoEForward forward_impl(const MoELayer& L, const Tensor& x_in, const ForwardOptions& opt) {
  const MoEConfig& cfg = L.config();
  const MoEParams& P = L.params();
  const Backend be = L.backend();
  const DType dt = dtype_of<T>::value;
  const int64_t d = cfg.d_model, E = cfg.n_experts, F = cfg.d_ff, Fs = cfg.shared_width();
  const int64_t El = L.local_experts();
  const bool swiglu = is_swiglu(cfg);
  const ExpertParallel& ep = L.expert_parallel();

  check_shape(x_in, {-1, d}, "x");
  x_in.check_dtype(dt, "x");
  if (opt.check_finite) check_finite(x_in, "x");
  const int64_t nT = x_in.size(0);

  auto saved = std::make_shared<Saved<T>>();
  Saved<T>& S = *saved;
  S.x = x_in.contiguous();
  S.x_r = S.x;
  const RouterConfig& rc = cfg.router;
  if (opt.training && rc.jitter_eps > 0 && nT > 0) {
    S.jitter = Tensor::empty({nT, d}, dt, "jitter");
    S.x_r = Tensor::empty({nT, d}, dt, "router input");
    const Rng rng = Rng(opt.seed).fork(opt.step);
    T* j = ptr<T>(S.jitter);
    T* xr = ptr<T>(S.x_r);
    const T* x = ptr<T>(S.x);
    parallel_for(nT * d, 4096, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        j[i] = static_cast<T>(1.0 - rc.jitter_eps + 2.0 * rc.jitter_eps * rng.uniform(static_cast<uint64_t>(i)));
        xr[i] = x[i] * j[i];
      }
    });
  }

  // Router: logits (T, E) = x_r · W_r^T, then selection, weights and capacity.
  Tensor logits = Tensor::zeros({nT, E}, dt, "router logits");
  if (nT > 0) mm<T>(be, nT, E, d, ptr<T>(S.x_r), false, P.router_w.data<T>(), true, logits.data<T>());
  MoEForward out;
  out.routing = route(cfg, logits, P.router_bias, opt.token_ids);
  const int64_t skipped = opt.training ? 0 : skip_low_weights(rc, out.routing);
  const Routing& r = out.routing;

  // Statistics and losses.
  MoEStats& st = out.stats;
  st.routed_per_expert = routed_counts(r, E);
  st.routed_weight_per_expert.assign(static_cast<size_t>(E), 0.0);
  st.tokens_per_expert.assign(static_cast<size_t>(E), 0);
  const T* rw = r.weight.data<T>();
  for (int64_t a = 0; a < r.n_assign; ++a) {
    const int32_t e = r.expert.data<int32_t>()[a];
    st.routed_weight_per_expert[e] += static_cast<double>(rw[a]);
    if (r.kept.data<uint8_t>()[a])
      ++st.tokens_per_expert[e];
    else
      ++st.dropped;
  }
  st.skipped = skipped;
  st.dropped -= skipped;
  const int64_t max_c = *std::max_element(st.routed_per_expert.begin(), st.routed_per_expert.end());
  st.imbalance = r.n_assign > 0 ? static_cast<double>(max_c) * static_cast<double>(E) / static_cast<double>(r.n_assign)
                                : 0.0;
  const BalanceLosses bl = balance_losses(cfg, r, nullptr);
  st.aux_loss = bl.aux;
  st.seq_aux_loss = bl.seq_aux;
  st.z_loss = bl.z;

  // Routed experts over the dispatched rows (this process's experts; under expert parallelism the
  // rows of every rank's tokens routed to them), in parts: one, or with chunks, token chunks whose
  // exchanges overlap another chunk's expert compute.
  ExpertExecutor* ex = L.expert_executor();
  MOE_CHECK(ex || !L.external_experts(), "MoE layer: its expert weights are held outside the layer and no expert "
                                          "executor is attached");
  if constexpr (std::is_same_v<T, float>) S.bf16 = L.has_bf16_expert_weights() || ex;
  MOE_CHECK(!(S.bf16 && ep.comm), "MoE layer: expert parallelism runs the training path only (no bf16 or "
                                  "executor-held expert weights)");
  S.parts = make_parts<T>(r, ep.comm ? ep.chunks : 1);
  out.y = Tensor::zeros({nT, d}, dt, "y");
  std::vector<Tensor> Os(S.parts.size());  // per part: weighted expert outputs, rows by batch.out_row
  auto send = [&](size_t c) {
    Part<T>& p = S.parts[c];
    if (ep.comm)
      p.disp = std::make_shared<AllToAllDispatcher<T>>(E, *ep.comm, be);
    else
      p.disp = std::make_shared<LocalDispatcher<T>>(E, be);
    p.disp->dispatch(p.routing, ptr<T>(S.x) + p.t0 * d, d, p.batch);
  };
  auto compute = [&](size_t c) {
    Part<T>& p = S.parts[c];
    const ExpertBatch<T>& b = p.batch;
    const int64_t M = b.rows;
    const std::vector<T>& w_rows = b.weight;  // (M) routing weight of each row
    Tensor& O = Os[c];
    O = Tensor::empty({b.out_rows, d}, dt, "weighted expert out");
    if (S.bf16) {
      if constexpr (std::is_same_v<T, float>) {
        if (!ex) {  // the down projection stores each weighted row at its output row
          const Bf16ExpertWeights& W = L.bf16_expert_weights();
          ffn_bf16(be, cfg, b, F, W.w_in, W.w_down, ptr<float>(O), w_rows.data(), b.out_row.data());
          return;
        }
        // The executor writes sorted rows; they are weighted and moved to their output rows here.
        Tensor Ob = Tensor::empty({M, d}, dt, "expert out");  // (M, d) sorted rows
        ExpertRows rows;
        rows.n_experts = E;
        rows.d_model = d;
        rows.d_ff = F;
        rows.act = cfg.activation;
        rows.offsets = b.offsets.data();
        rows.x = ptr<float>(S.x);
        rows.n_tokens = nT;
        rows.gather = b.gather.empty() ? nullptr : b.gather.data();
        rows.out = Ob.data<float>();
        ex->run(rows);
        const float* ob = Ob.data<float>();
        float* o = ptr<float>(O);
        parallel_for(M, std::max<int64_t>(1, 4096 / d), [&](int64_t lo, int64_t hi) {
          for (int64_t q = lo; q < hi; ++q)
            for (int64_t i = 0; i < d; ++i) o[b.out_row[q] * d + i] = w_rows[q] * ob[q * d + i];
        });
      }
      return;
    }
    // Only the pre-activations stay for backward; the hidden activation H is never stored (the
    // down projection makes it from [G | U] while packing its A panels).
    p.GU = Tensor::empty({M, swiglu ? 2 * F : F}, dt, "expert pre-activations");
    ffn_up<T>(be, cfg.activation, b, F, d, b.x_rows, ptr<T>(P.w_gate), P.w_up.data<T>(),
              pre_act(swiglu, ptr<T>(p.GU), F), nullptr);
    // Down projection; its epilogue scales each row by its routing weight and stores it at its
    // row of the output buffer (the row of its assignment for the local dispatcher, so the combine
    // is a plain per-token sum of k rows in slot order; the row it came in for the all-to-all).
    kernels::GroupedGemmScatterArgs<T> gs;
    gs.E = El;
    gs.N = d;
    gs.K = F;
    gs.offsets = b.offsets.data();
    gs.A = ptr<T>(p.GU);
    gs.lda = swiglu ? 2 * F : F;
    gs.a_preact = true;
    gs.act = cfg.activation;
    gs.W = P.w_down.data<T>();
    gs.scale = w_rows.data();
    gs.out_row = b.out_row.data();
    gs.C = ptr<T>(O);
    gs.ldc = d;
    kernels::grouped_gemm_scatter(be, gs);
  };
  auto finish = [&](size_t c) {
    Part<T>& p = S.parts[c];
    p.disp->combine(ptr<T>(Os[c]), out.y.data<T>() + p.t0 * d);
    Os[c] = Tensor();
  };
  detail::pipeline(S.parts.size(), ep.comm != nullptr, send, compute, finish);

  // Shared experts (one FFN of width Fs, run as a single expert over all rows), optionally gated
  // per token. Only the pre-activations stay for backward.
  if (Fs > 0 && nT > 0) {
    const T* x = ptr<T>(S.x);
    S.shared.rows = nT;
    S.shared.offsets = {0, static_cast<int32_t>(nT)};
    S.shared.x_rows = x;
    Tensor Ys = Tensor::empty({nT, d}, dt, "shared out");
    if (S.bf16 && L.has_bf16_expert_weights()) {
      if constexpr (std::is_same_v<T, float>) {
        const Bf16ExpertWeights& W = L.bf16_expert_weights();
        ffn_bf16(be, cfg, S.shared, Fs, W.shared_w_in, W.shared_w_down, ptr<float>(Ys));
      }
    } else {
      S.GUs = Tensor::empty({nT, swiglu ? 2 * Fs : Fs}, dt, "shared pre-activations");
      ffn_up<T>(be, cfg.activation, S.shared, Fs, d, x, ptr<T>(P.shared_w_gate), P.shared_w_up.data<T>(),
                pre_act(swiglu, ptr<T>(S.GUs), Fs), nullptr);
      kernels::GroupedGemmScatterArgs<T> gs;  // Ys = act(GUs) · W_sd^T, H made while packing
      gs.E = 1;
      gs.N = d;
      gs.K = Fs;
      gs.offsets = S.shared.offsets.data();
      gs.A = ptr<T>(S.GUs);
      gs.lda = swiglu ? 2 * Fs : Fs;
      gs.a_preact = true;
      gs.act = cfg.activation;
      gs.W = P.shared_w_down.data<T>();
      gs.C = ptr<T>(Ys);
      gs.ldc = d;
      kernels::grouped_gemm_scatter(be, gs);
    }
    T* y = out.y.data<T>();
    const T* ys = ptr<T>(Ys);
    if (cfg.shared_gate) {
      S.g = Tensor::empty({nT, 1}, dt, "shared gate");
      T* g = ptr<T>(S.g);
      mm<T>(be, nT, 1, d, x, false, P.shared_gate_w.data<T>(), true, g);
      for (int64_t t = 0; t < nT; ++t) g[t] = static_cast<T>(1.0 / (1.0 + std::exp(-static_cast<double>(g[t]))));
      parallel_for(nT, 16, [&](int64_t b, int64_t e) {
        for (int64_t t = b; t < e; ++t)
          for (int64_t i = 0; i < d; ++i) y[t * d + i] += g[t] * ys[t * d + i];
      });
    } else {
      parallel_for(nT * d, 4096, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) y[i] += ys[i];
      });
    }
  }
  out.saved = saved;
  return out;
}

// A gradient target of backward_into: an existing tensor (checked; the gradient is added to it),
// or a new one (written; zeros when `zero`, for paths that may not write it).
bool grad_target(Tensor& t, const Shape& shape, DType dt, const char* name, bool zero) {
  if (t.defined()) {
    check_shape(t, shape, name);
    t.check_dtype(dt, name);
    MOE_CHECK(t.is_contiguous(), "MoE backward: gradient '", name, "' must be contiguous");
    return true;
  }
  t = zero ? Tensor::zeros(shape, dt, name) : Tensor::empty(shape, dt, name);
  return false;
}

template <typename T>
void backward_impl(const MoELayer& L, const MoEForward& fwd, const Tensor& dy_in, double aux_scale, MoEGrads& g) {
  const MoEConfig& cfg = L.config();
  const MoEParams& P = L.params();
  const Backend be = L.backend();
  const DType dt = dtype_of<T>::value;
  const int64_t d = cfg.d_model, E = cfg.n_experts, F = cfg.d_ff, Fs = cfg.shared_width();
  const int64_t El = L.local_experts();
  const bool swiglu = is_swiglu(cfg);
  MOE_CHECK(fwd.saved, "MoE backward: the forward result holds no saved activations");
  const Saved<T>& S = *static_cast<const Saved<T>*>(fwd.saved.get());
  MOE_CHECK(!S.bf16, "MoE backward: this forward ran on bf16 or executor-held expert weights (an inference path "
                     "that keeps no activations); call set_bf16_expert_weights(false) to train");
  MOE_CHECK(!S.consumed, "MoE backward: this forward's backward has already run (it writes the gradients of the "
                         "saved pre-activations over them); run the forward again");
  const Routing& r = fwd.routing;
  const int64_t nT = r.n_tokens, N = r.n_assign;
  check_shape(dy_in, {nT, d}, "dy");
  dy_in.check_dtype(dt, "dy");
  const Tensor dy_t = dy_in.contiguous();
  const T* dy = dy_t.data<T>();
  const T* x = ptr<T>(S.x);

  // Gradients are written by the GEMMs below with beta 0, or added with beta 1 where the caller
  // passed a tensor to accumulate into (add_*). New ones start as zeros only where a path may skip
  // them (no tokens here: no router or shared-expert pass; no tokens anywhere: no expert pass).
  const bool ep = L.expert_parallel().comm != nullptr;
  const bool skip_experts = nT == 0 && !ep, skip_rest = nT == 0;
  // dx is always overwritten: the combine writes every token's row.
  if (g.dx.defined() && g.dx.shape() != Shape{nT, d}) g.dx = Tensor();  // another batch's: replaced
  if (!g.dx.defined()) grad_target(g.dx, {nT, d}, dt, "dx", true);
  g.dx.check_dtype(dt, "dx");
  MOE_CHECK(g.dx.is_contiguous(), "MoE backward: gradient 'dx' must be contiguous");
  const bool add_router = grad_target(g.router_w, {E, d}, dt, "d router_w", skip_rest);
  const bool add_gate = swiglu && grad_target(g.w_gate, {El, F, d}, dt, "d w_gate", skip_experts);
  const bool add_up = grad_target(g.w_up, {El, F, d}, dt, "d w_up", skip_experts);
  const bool add_down = grad_target(g.w_down, {El, d, F}, dt, "d w_down", skip_experts);
  bool add_sgate = false, add_sup = false, add_sdown = false, add_sg = false;
  if (Fs > 0) {
    add_sgate = swiglu && grad_target(g.shared_w_gate, {Fs, d}, dt, "d shared_w_gate", skip_rest);
    add_sup = grad_target(g.shared_w_up, {Fs, d}, dt, "d shared_w_up", skip_rest);
    add_sdown = grad_target(g.shared_w_down, {d, Fs}, dt, "d shared_w_down", skip_rest);
    if (cfg.shared_gate) add_sg = grad_target(g.shared_gate_w, {1, d}, dt, "d shared_gate_w", skip_rest);
  }
  auto beta_of = [](bool add) { return add ? T(1) : T(0); };
  S.consumed = true;  // from here on the saved pre-activations are overwritten
  // Under expert parallelism a rank without tokens still computes the rows others sent it.
  if (skip_experts) {
    std::fill_n(g.dx.data<T>(), nT * d, T(0));
    return;
  }
  T* dx = g.dx.data<T>();

  // Expert backward, fused: the down projection's backward with the d-activation in its epilogue
  // gives d pre-activations [dG | dU] directly (no dO or dH buffer); the routing weights' gradient
  // comes out of the same pass as <dy_t · W_down_e, h>.
  // In parts as the forward: the exchange of one chunk's dy rows overlaps another's compute; the
  // weight gradients accumulate over the parts.
  Tensor dw = Tensor::zeros({N}, dt, "d weight");
  const size_t n_parts = S.parts.size();
  std::vector<const T*> dYs(n_parts);            // per part: each row's upstream gradient (batch.gather)
  std::vector<std::vector<T>> dw_rows(n_parts);  // per part: (M) gradient of each row's weight
  std::vector<Tensor> d_rows(n_parts);           // per part: (M, d) each row's input gradient
  auto send = [&](size_t c) {
    const Part<T>& p = S.parts[c];
    dYs[c] = p.disp->grad_rows(dy + p.t0 * d);
  };
  auto compute = [&](size_t c) {
    const Part<T>& p = S.parts[c];
    const ExpertBatch<T>& b = p.batch;
    const int64_t M = b.rows;
    auto beta = [&](bool add) { return c == 0 && !add ? T(0) : T(1); };
    const T* dY = dYs[c];
    dw_rows[c].resize(static_cast<size_t>(M));
    // d W_down_e (d, F) = Σ_p (w_p dy_t)^T h_p: dy's token rows read by gather, w_p h_p made from
    // the saved [G | U] while packing (no H buffer). It runs first: the fused backward below writes
    // [dG | dU] over [G | U].
    const int32_t* tok = b.gather.empty() ? nullptr : b.gather.data();
    wgrad_rows<T>(be, b, d, F, dY, d, tok, ptr<T>(p.GU), false, g.w_down.data<T>(), beta(add_down),
                  &cfg.activation, b.weight.data());
    const PreAct<T> pa = pre_act(swiglu, ptr<T>(p.GU), F);
    const PreAct<T> dpa = pa;  // in place
    ffn_down_backward<T>(be, cfg.activation, b, F, d, dY, b.weight.data(), P.w_down.data<T>(), pa, dpa, nullptr,
                         dw_rows[c].data());
    wgrad_rows<T>(be, b, F, d, dpa.U, dpa.ld, nullptr, b.x_rows, true, g.w_up.data<T>(), beta(add_up));
    if (swiglu)
      wgrad_rows<T>(be, b, F, d, dpa.G, dpa.ld, nullptr, b.x_rows, true, g.w_gate.data<T>(), beta(add_gate));
    // Input gradient: one grouped GEMM over K = 2F, then each token sums its rows in fixed order.
    d_rows[c] = Tensor::empty({M, d}, dt, "d expert in");
    ffn_input_grad<T>(be, swiglu, b, d, F, dpa, ptr<T>(P.w_gate), P.w_up.data<T>(), ptr<T>(d_rows[c]));
  };
  auto finish = [&](size_t c) {
    const Part<T>& p = S.parts[c];
    if (p.assign.empty() && n_parts == 1) {
      p.disp->return_dweight(dw_rows[c].data(), dw.data<T>());
    } else {
      std::vector<T> dwp(p.assign.size());
      p.disp->return_dweight(dw_rows[c].data(), dwp.data());
      for (size_t i = 0; i < p.assign.size(); ++i) dw.data<T>()[p.assign[i]] = dwp[i];
    }
    p.disp->dispatch_backward(ptr<T>(d_rows[c]), dx + p.t0 * d);
    d_rows[c] = Tensor();
  };
  detail::pipeline(n_parts, ep, send, compute, finish);
  if (skip_rest) return;

  // Router: d_weight -> d_logits, plus the balancing losses' gradients.
  std::vector<double> dl(static_cast<size_t>(nT * E), 0.0);
  {
    std::vector<double> dwd(static_cast<size_t>(N));
    for (int64_t a = 0; a < N; ++a) dwd[a] = static_cast<double>(dw.data<T>()[a]);
    route_backward(cfg, r, dwd.data(), dl.data());
    if (aux_scale == 1.0) {
      balance_losses(cfg, r, dl.data());
    } else if (aux_scale != 0.0) {
      std::vector<double> dbal(dl.size(), 0.0);  // (T, E)
      balance_losses(cfg, r, dbal.data());
      for (size_t i = 0; i < dl.size(); ++i) dl[i] += aux_scale * dbal[i];
    }
  }
  Tensor dlog = Tensor::from(dl, {nT, E}, dt, "d router logits");
  mm<T>(be, E, d, nT, dlog.data<T>(), true, ptr<T>(S.x_r), false, g.router_w.data<T>(), beta_of(add_router));
  if (S.jitter.defined()) {
    Tensor dxr = Tensor::empty({nT, d}, dt, "d router input");
    mm<T>(be, nT, d, E, dlog.data<T>(), false, P.router_w.data<T>(), false, dxr.data<T>());
    const T* j = ptr<T>(S.jitter);
    const T* a = dxr.data<T>();
    for (int64_t i = 0; i < nT * d; ++i) dx[i] += a[i] * j[i];
  } else {
    mm<T>(be, nT, d, E, dlog.data<T>(), false, P.router_w.data<T>(), false, dx, T(1));
  }

  // Shared experts, fused as the routed ones: with Ys = act(G, U) · W_sd^T and y += gate * Ys,
  // the gate's gradient is <dy, Ys> = <dy · W_sd, h>, the dscale of the fused backward.
  if (Fs > 0) {
    const T* gate = cfg.shared_gate ? ptr<T>(S.g) : nullptr;  // (T) or null
    std::vector<T> dgate(cfg.shared_gate ? static_cast<size_t>(nT) : 0);
    // W_sd's gradient Σ dy^T (gate * h) from the saved pre-activations first, then [dG | dU] over them.
    wgrad_rows<T>(be, S.shared, d, Fs, dy, d, nullptr, ptr<T>(S.GUs), false, g.shared_w_down.data<T>(),
                  beta_of(add_sdown), &cfg.activation, gate);
    const PreAct<T> pa = pre_act(swiglu, ptr<T>(S.GUs), Fs);
    const PreAct<T> dpa = pa;  // in place
    ffn_down_backward<T>(be, cfg.activation, S.shared, Fs, d, dy, gate, P.shared_w_down.data<T>(), pa, dpa, nullptr,
                         cfg.shared_gate ? dgate.data() : nullptr);
    if (cfg.shared_gate) {
      Tensor dgl = Tensor::empty({nT, 1}, dt, "d shared gate logit");
      T* dz = dgl.data<T>();
      for (int64_t t = 0; t < nT; ++t)
        dz[t] = static_cast<T>(static_cast<double>(dgate[t]) * gate[t] * (1.0 - static_cast<double>(gate[t])));
      mm<T>(be, 1, d, nT, dz, true, x, false, g.shared_gate_w.data<T>(), beta_of(add_sg));
      mm<T>(be, nT, d, 1, dz, false, P.shared_gate_w.data<T>(), false, dx, T(1));
    }
    wgrad_rows<T>(be, S.shared, Fs, d, dpa.U, dpa.ld, nullptr, x, false, g.shared_w_up.data<T>(), beta_of(add_sup));
    if (swiglu)
      wgrad_rows<T>(be, S.shared, Fs, d, dpa.G, dpa.ld, nullptr, x, false, g.shared_w_gate.data<T>(),
                    beta_of(add_sgate));
    ffn_input_grad<T>(be, swiglu, S.shared, d, Fs, dpa, ptr<T>(P.shared_w_gate), P.shared_w_up.data<T>(), dx,
                      T(1));
  }
}

}  // namespace

MoELayer::MoELayer(MoEConfig cfg, DType dtype, kernels::Backend backend, bool external_experts, ExpertParallel ep)
    : cfg_(std::move(cfg)), dtype_(dtype), backend_(backend), external_experts_(external_experts), ep_(std::move(ep)) {
  cfg_.validate();
  MOE_CHECK(dtype == DType::F32 || dtype == DType::F64, "MoE layer: dtype must be f32 or f64, got ",
            dtype_name(dtype));
  const int64_t E = cfg_.n_experts, d = cfg_.d_model, F = cfg_.d_ff, Fs = cfg_.shared_width();
  local_experts_ = E;
  if (ep_.comm) {
    const ExpertShard sh = expert_shard(E, *ep_.comm);
    first_expert_ = sh.first;
    local_experts_ = sh.count;
  }
  const int64_t El = local_experts_;
  params_.router_w = Tensor::zeros({E, d}, dtype, "router_w");
  params_.router_bias = Tensor::zeros({E}, dtype, "router_bias");
  if (!external_experts_) {
    if (is_swiglu(cfg_)) params_.w_gate = Tensor::zeros({El, F, d}, dtype, "w_gate");
    params_.w_up = Tensor::zeros({El, F, d}, dtype, "w_up");
    params_.w_down = Tensor::zeros({El, d, F}, dtype, "w_down");
  }
  if (Fs > 0) {
    if (is_swiglu(cfg_)) params_.shared_w_gate = Tensor::zeros({Fs, d}, dtype, "shared_w_gate");
    params_.shared_w_up = Tensor::zeros({Fs, d}, dtype, "shared_w_up");
    params_.shared_w_down = Tensor::zeros({d, Fs}, dtype, "shared_w_down");
    if (cfg_.shared_gate) params_.shared_gate_w = Tensor::zeros({1, d}, dtype, "shared_gate_w");
  }
}

void MoELayer::init_params(uint64_t seed) {
  const Rng rng(seed);
  const double d = static_cast<double>(cfg_.d_model), F = static_cast<double>(cfg_.d_ff);
  const double Fs = static_cast<double>(std::max<int64_t>(cfg_.shared_width(), 1));
  auto init = [&](Tensor& t, uint64_t stream, double fan_in, uint64_t offset = 0) {
    if (t.defined()) rng.fork(stream).fill_normal(t, 0.0, 1.0 / std::sqrt(fan_in), offset);
  };
  // Expert tensors: this rank's slice of the (E, ., .) tensor a single process would draw.
  const uint64_t expert_offset = static_cast<uint64_t>(first_expert_ * cfg_.d_model * cfg_.d_ff);
  init(params_.router_w, 1, d);
  init(params_.w_gate, 2, d, expert_offset);
  init(params_.w_up, 3, d, expert_offset);
  init(params_.w_down, 4, F, expert_offset);
  init(params_.shared_w_gate, 5, d);
  init(params_.shared_w_up, 6, d);
  init(params_.shared_w_down, 7, Fs);
  init(params_.shared_gate_w, 8, d);
  params_.router_bias.fill(0.0);
}

void MoELayer::check_params() const {
  const int64_t E = cfg_.n_experts, El = local_experts_, d = cfg_.d_model, F = cfg_.d_ff, Fs = cfg_.shared_width();
  auto check = [&](const Tensor& t, const Shape& s, const char* name) {
    check_shape(t, s, name);
    t.check_dtype(dtype_, name);
    MOE_CHECK(t.is_contiguous(), "parameter '", name, "' must be contiguous");
  };
  check(params_.router_w, {E, d}, "router_w");
  check(params_.router_bias, {E}, "router_bias");
  if (!external_experts_) {
    if (is_swiglu(cfg_)) check(params_.w_gate, {El, F, d}, "w_gate");
    check(params_.w_up, {El, F, d}, "w_up");
    check(params_.w_down, {El, d, F}, "w_down");
  }
  if (Fs > 0) {
    if (is_swiglu(cfg_)) check(params_.shared_w_gate, {Fs, d}, "shared_w_gate");
    check(params_.shared_w_up, {Fs, d}, "shared_w_up");
    check(params_.shared_w_down, {d, Fs}, "shared_w_down");
    if (cfg_.shared_gate) check(params_.shared_gate_w, {1, d}, "shared_gate_w");
  }
}

MoEForward MoELayer::forward(const Tensor& x, const ForwardOptions& opt) const {
  check_params();
  if (dtype_ == DType::F64) return forward_impl<double>(*this, x, opt);
  return forward_impl<float>(*this, x, opt);
}

MoEGrads MoELayer::backward(const MoEForward& fwd, const Tensor& dy, double aux_scale) const {
  MoEGrads g;
  backward_into(fwd, dy, g, aux_scale);
  return g;
}

void MoELayer::backward_into(const MoEForward& fwd, const Tensor& dy, MoEGrads& acc, double aux_scale) const {
  check_params();
  MOE_CHECK(std::isfinite(aux_scale), "MoELayer::backward: aux_scale must be finite, got ", aux_scale);
  if (dtype_ == DType::F64) return backward_impl<double>(*this, fwd, dy, aux_scale, acc);
  backward_impl<float>(*this, fwd, dy, aux_scale, acc);
}

void MoELayer::set_bf16_expert_weights(bool on) {
  bf16_ = Bf16ExpertWeights();
  if (!on) return;
  MOE_CHECK(dtype_ == DType::F32, "bf16 expert weights need an f32 layer, this one is ", dtype_name(dtype_));
  check_params();
  auto round = [](const Tensor& t) { return t.defined() ? t.to(DType::BF16) : Tensor(); };
  // [gate; up] per expert (n experts of F rows each), or up alone.
  auto round_in = [&](const Tensor& gate, const Tensor& up, int64_t n, int64_t F) {
    if (!up.defined() || !gate.defined()) return round(up);
    const Tensor g = round(gate), u = round(up);
    const int64_t d = cfg_.d_model;
    Tensor w = Tensor::empty(n == 0 ? Shape{2 * F, d} : Shape{n, 2 * F, d}, DType::BF16, "bf16 w_in");
    auto* dst = static_cast<uint16_t*>(w.raw());
    const auto* gs = static_cast<const uint16_t*>(g.raw());
    const auto* us = static_cast<const uint16_t*>(u.raw());
    for (int64_t e = 0; e < std::max<int64_t>(n, 1); ++e) {
      std::copy_n(gs + e * F * d, F * d, dst + e * 2 * F * d);
      std::copy_n(us + e * F * d, F * d, dst + e * 2 * F * d + F * d);
    }
    return w;
  };
  if (params_.w_up.defined()) bf16_.w_in = round_in(params_.w_gate, params_.w_up, local_experts_, cfg_.d_ff);
  bf16_.w_down = round(params_.w_down);
  bf16_.shared_w_in = round_in(params_.shared_w_gate, params_.shared_w_up, 0, cfg_.shared_width());
  bf16_.shared_w_down = round(params_.shared_w_down);
}

void MoELayer::set_expert_executor(std::shared_ptr<ExpertExecutor> ex) {
  MOE_CHECK(!ex || dtype_ == DType::F32, "an expert executor needs an f32 layer, this one is ", dtype_name(dtype_));
  executor_ = std::move(ex);
}

void MoELayer::set_external_experts(bool on) {
  external_experts_ = on;
  if (on) {
    params_.w_gate = Tensor();
    params_.w_up = Tensor();
    params_.w_down = Tensor();
    bf16_.w_in = Tensor();
    bf16_.w_down = Tensor();
  } else {
    const int64_t El = local_experts_, d = cfg_.d_model, F = cfg_.d_ff;
    if (is_swiglu(cfg_)) params_.w_gate = Tensor::zeros({El, F, d}, dtype_, "w_gate");
    params_.w_up = Tensor::zeros({El, F, d}, dtype_, "w_up");
    params_.w_down = Tensor::zeros({El, d, F}, dtype_, "w_down");
  }
}

void MoELayer::update_bias(const MoEStats& stats) {
  MOE_CHECK(static_cast<int64_t>(stats.routed_per_expert.size()) == cfg_.n_experts,
            "update_bias: stats hold ", stats.routed_per_expert.size(), " expert counts, expected ",
            cfg_.n_experts);
  ::moe::update_bias(params_.router_bias, stats.routed_per_expert, cfg_.balance.bias_update_rate);
}

double MoELayer::expert_flops(const MoEStats& stats, int64_t n_tokens) const {
  const double mats = is_swiglu(cfg_) ? 3.0 : 2.0;
  double rows = 0;
  for (int64_t c : stats.tokens_per_expert) rows += static_cast<double>(c);
  const double per_row = 2.0 * static_cast<double>(cfg_.d_model) * mats;
  return rows * per_row * static_cast<double>(cfg_.d_ff) +
         static_cast<double>(n_tokens) * per_row * static_cast<double>(cfg_.shared_width());
}

}  // namespace moe
