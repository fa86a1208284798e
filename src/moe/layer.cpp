#include "moe/moe/layer.h"

#include <algorithm>
#include <cmath>

#include "moe/core/error.h"
#include "moe/core/parallel.h"
#include "moe/core/rng.h"
#include "moe/moe/balance.h"
#include "moe/moe/dispatcher.h"
#include "moe/moe/router.h"

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

// Per-expert C[p] = A[row(p)] · op(W_e), over the batch's row ranges.
template <typename T>
void grouped(Backend be, const ExpertBatch<T>& b, int64_t N, int64_t K, const T* A, bool gather, const T* W,
             bool trans_w, T* C, T beta = 0) {
  kernels::GroupedGemmArgs<T> g;
  g.E = static_cast<int64_t>(b.offsets.size()) - 1;
  g.N = N;
  g.K = K;
  g.offsets = b.offsets.data();
  g.A = A;
  g.lda = K;
  g.gather = gather && !b.gather.empty() ? b.gather.data() : nullptr;
  g.W = W;
  g.trans_w = trans_w;
  g.C = C;
  g.ldc = N;
  g.beta = beta;
  kernels::grouped_gemm(be, g);
}

// dW_e (N, K) = Σ_p dC[p]^T · A[row(p)].
template <typename T>
void wgrad(Backend be, const ExpertBatch<T>& b, int64_t N, int64_t K, const T* dC, const T* A, bool gather, T* dW) {
  kernels::GroupedWgradArgs<T> g;
  g.E = static_cast<int64_t>(b.offsets.size()) - 1;
  g.N = N;
  g.K = K;
  g.offsets = b.offsets.data();
  g.dC = dC;
  g.ldc = N;
  g.A = A;
  g.lda = K;
  g.gather = gather && !b.gather.empty() ? b.gather.data() : nullptr;
  g.dW = dW;
  kernels::grouped_gemm_wgrad(be, g);
}

template <typename T>
void act(Backend be, Activation a, int64_t n, const T* gate, const T* up, T* out) {
  kernels::ActivationArgs<T> g;
  g.act = a;
  g.n = n;
  if (a == Activation::SwiGLU) {
    g.a = gate;
    g.b = up;
  } else {
    g.a = up;
  }
  g.out = out;
  kernels::activation(be, g);
}

template <typename T>
void act_backward(Backend be, Activation a, int64_t n, const T* gate, const T* up, const T* dout, T* dgate, T* dup) {
  kernels::ActivationBackwardArgs<T> g;
  g.act = a;
  g.n = n;
  g.dout = dout;
  if (a == Activation::SwiGLU) {
    g.a = gate;
    g.b = up;
    g.da = dgate;
    g.db = dup;
  } else {
    g.a = up;
    g.da = dup;
  }
  kernels::activation_backward(be, g);
}

template <typename T>
T* ptr(const Tensor& t) {
  return t.defined() ? t.data<T>() : nullptr;
}

// Activations kept from forward for backward.
template <typename T>
struct Saved {
  Tensor x;       // (T, d) contiguous input
  Tensor x_r;     // (T, d) router input (jittered x, or x)
  Tensor jitter;  // (T, d) jitter factors, undefined without jitter
  std::shared_ptr<Dispatcher<T>> disp;
  ExpertBatch<T> batch;
  Tensor G, U, H, O;         // (M, F), (M, F), (M, F), (M, d)
  Tensor Gs, Us, Hs, Ys, g;  // shared experts: (T, Fs) x3, (T, d), gate (T, 1)
};

template <typename T>
MoEForward forward_impl(const MoELayer& L, const Tensor& x_in, const ForwardOptions& opt) {
  const MoEConfig& cfg = L.config();
  const MoEParams& P = L.params();
  const Backend be = L.backend();
  const DType dt = dtype_of<T>::value;
  const int64_t d = cfg.d_model, E = cfg.n_experts, F = cfg.d_ff, Fs = cfg.shared_width();
  const bool swiglu = is_swiglu(cfg);

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
  const Routing& r = out.routing;

  // Statistics and losses.
  MoEStats& st = out.stats;
  st.routed_per_expert = routed_counts(r, E);
  st.tokens_per_expert.assign(static_cast<size_t>(E), 0);
  for (int64_t a = 0; a < r.n_assign; ++a) {
    if (r.kept.data<uint8_t>()[a])
      ++st.tokens_per_expert[r.expert.data<int32_t>()[a]];
    else
      ++st.dropped;
  }
  const int64_t max_c = *std::max_element(st.routed_per_expert.begin(), st.routed_per_expert.end());
  st.imbalance = r.n_assign > 0 ? static_cast<double>(max_c) * static_cast<double>(E) / static_cast<double>(r.n_assign)
                                : 0.0;
  const BalanceLosses bl = balance_losses(cfg, r, nullptr);
  st.aux_loss = bl.aux;
  st.seq_aux_loss = bl.seq_aux;
  st.z_loss = bl.z;

  // Routed experts over the dispatched rows.
  S.disp = std::make_shared<LocalDispatcher<T>>(E, be);
  S.disp->dispatch(r, ptr<T>(S.x), d, S.batch);
  const int64_t M = S.batch.rows;
  const T* xrows = S.batch.x_rows;
  S.U = Tensor::empty({M, F}, dt, "expert up");
  S.H = Tensor::empty({M, F}, dt, "expert hidden");
  S.O = Tensor::empty({M, d}, dt, "expert out");
  if (swiglu) {
    S.G = Tensor::empty({M, F}, dt, "expert gate");
    grouped<T>(be, S.batch, F, d, xrows, true, P.w_gate.data<T>(), false, ptr<T>(S.G));
  }
  grouped<T>(be, S.batch, F, d, xrows, true, P.w_up.data<T>(), false, ptr<T>(S.U));
  act<T>(be, cfg.activation, M * F, ptr<T>(S.G), ptr<T>(S.U), ptr<T>(S.H));
  grouped<T>(be, S.batch, d, F, ptr<T>(S.H), false, P.w_down.data<T>(), false, ptr<T>(S.O));

  out.y = Tensor::zeros({nT, d}, dt, "y");
  if (nT > 0) S.disp->combine(ptr<T>(S.O), r.weight.data<T>(), out.y.data<T>());

  // Shared experts (one FFN of width Fs), optionally gated per token.
  if (Fs > 0 && nT > 0) {
    const T* x = ptr<T>(S.x);
    S.Us = Tensor::empty({nT, Fs}, dt, "shared up");
    S.Hs = Tensor::empty({nT, Fs}, dt, "shared hidden");
    S.Ys = Tensor::empty({nT, d}, dt, "shared out");
    if (swiglu) {
      S.Gs = Tensor::empty({nT, Fs}, dt, "shared gate proj");
      mm<T>(be, nT, Fs, d, x, false, P.shared_w_gate.data<T>(), true, ptr<T>(S.Gs));
    }
    mm<T>(be, nT, Fs, d, x, false, P.shared_w_up.data<T>(), true, ptr<T>(S.Us));
    act<T>(be, cfg.activation, nT * Fs, ptr<T>(S.Gs), ptr<T>(S.Us), ptr<T>(S.Hs));
    mm<T>(be, nT, d, Fs, ptr<T>(S.Hs), false, P.shared_w_down.data<T>(), true, ptr<T>(S.Ys));
    T* y = out.y.data<T>();
    const T* ys = ptr<T>(S.Ys);
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

template <typename T>
MoEGrads backward_impl(const MoELayer& L, const MoEForward& fwd, const Tensor& dy_in) {
  const MoEConfig& cfg = L.config();
  const MoEParams& P = L.params();
  const Backend be = L.backend();
  const DType dt = dtype_of<T>::value;
  const int64_t d = cfg.d_model, E = cfg.n_experts, F = cfg.d_ff, Fs = cfg.shared_width();
  const bool swiglu = is_swiglu(cfg);
  MOE_CHECK(fwd.saved, "MoE backward: the forward result holds no saved activations");
  const Saved<T>& S = *static_cast<const Saved<T>*>(fwd.saved.get());
  const Routing& r = fwd.routing;
  const int64_t nT = r.n_tokens, M = S.batch.rows, N = r.n_assign;
  check_shape(dy_in, {nT, d}, "dy");
  dy_in.check_dtype(dt, "dy");
  const Tensor dy_t = dy_in.contiguous();
  const T* dy = dy_t.data<T>();
  const T* x = ptr<T>(S.x);

  MoEGrads g;
  g.dx = Tensor::zeros({nT, d}, dt, "dx");
  g.router_w = Tensor::zeros({E, d}, dt, "d router_w");
  if (swiglu) g.w_gate = Tensor::zeros({E, F, d}, dt, "d w_gate");
  g.w_up = Tensor::zeros({E, F, d}, dt, "d w_up");
  g.w_down = Tensor::zeros({E, d, F}, dt, "d w_down");
  if (Fs > 0) {
    if (swiglu) g.shared_w_gate = Tensor::zeros({Fs, d}, dt, "d shared_w_gate");
    g.shared_w_up = Tensor::zeros({Fs, d}, dt, "d shared_w_up");
    g.shared_w_down = Tensor::zeros({d, Fs}, dt, "d shared_w_down");
    if (cfg.shared_gate) g.shared_gate_w = Tensor::zeros({1, d}, dt, "d shared_gate_w");
  }
  if (nT == 0) return g;
  T* dx = g.dx.data<T>();

  // Combine backward: d_out rows (M, d) and d_weight (N).
  Tensor dO = Tensor::empty({M, d}, dt, "d expert out");
  Tensor dw = Tensor::zeros({N}, dt, "d weight");
  S.disp->combine_backward(dy, ptr<T>(S.O), r.weight.data<T>(), dO.data<T>(), dw.data<T>());

  // Expert backward: down projection, activation, gate/up projections.
  Tensor dH = Tensor::empty({M, F}, dt, "d expert hidden");
  grouped<T>(be, S.batch, F, d, dO.data<T>(), false, P.w_down.data<T>(), true, dH.data<T>());
  wgrad<T>(be, S.batch, d, F, dO.data<T>(), ptr<T>(S.H), false, g.w_down.data<T>());
  Tensor dU = Tensor::empty({M, F}, dt, "d expert up");
  Tensor dG;
  if (swiglu) dG = Tensor::empty({M, F}, dt, "d expert gate");
  act_backward<T>(be, cfg.activation, M * F, ptr<T>(S.G), ptr<T>(S.U), dH.data<T>(), ptr<T>(dG), dU.data<T>());
  const T* xrows = S.batch.x_rows;
  Tensor d_rows = Tensor::empty({M, d}, dt, "d expert in");
  grouped<T>(be, S.batch, d, F, dU.data<T>(), false, P.w_up.data<T>(), true, d_rows.data<T>());
  wgrad<T>(be, S.batch, F, d, dU.data<T>(), xrows, true, g.w_up.data<T>());
  if (swiglu) {
    grouped<T>(be, S.batch, d, F, dG.data<T>(), false, P.w_gate.data<T>(), true, d_rows.data<T>(), T(1));
    wgrad<T>(be, S.batch, F, d, dG.data<T>(), xrows, true, g.w_gate.data<T>());
  }
  S.disp->dispatch_backward(d_rows.data<T>(), dx);

  // Router: d_weight -> d_logits, plus the balancing losses' gradients.
  std::vector<double> dl(static_cast<size_t>(nT * E), 0.0);
  {
    std::vector<double> dwd(static_cast<size_t>(N));
    for (int64_t a = 0; a < N; ++a) dwd[a] = static_cast<double>(dw.data<T>()[a]);
    route_backward(cfg, r, dwd.data(), dl.data());
    balance_losses(cfg, r, dl.data());
  }
  Tensor dlog = Tensor::from(dl, {nT, E}, dt, "d router logits");
  mm<T>(be, E, d, nT, dlog.data<T>(), true, ptr<T>(S.x_r), false, g.router_w.data<T>());
  if (S.jitter.defined()) {
    Tensor dxr = Tensor::empty({nT, d}, dt, "d router input");
    mm<T>(be, nT, d, E, dlog.data<T>(), false, P.router_w.data<T>(), false, dxr.data<T>());
    const T* j = ptr<T>(S.jitter);
    const T* a = dxr.data<T>();
    for (int64_t i = 0; i < nT * d; ++i) dx[i] += a[i] * j[i];
  } else {
    mm<T>(be, nT, d, E, dlog.data<T>(), false, P.router_w.data<T>(), false, dx, T(1));
  }

  // Shared experts.
  if (Fs > 0) {
    Tensor dYs_t = dy_t;
    if (cfg.shared_gate) {
      dYs_t = Tensor::empty({nT, d}, dt, "d shared out");
      T* dYs = dYs_t.data<T>();
      const T* gg = ptr<T>(S.g);
      const T* ys = ptr<T>(S.Ys);
      Tensor dgl = Tensor::empty({nT, 1}, dt, "d shared gate logit");
      T* dz = dgl.data<T>();
      for (int64_t t = 0; t < nT; ++t) {
        double dot = 0;
        for (int64_t i = 0; i < d; ++i) {
          dot += static_cast<double>(dy[t * d + i]) * ys[t * d + i];
          dYs[t * d + i] = gg[t] * dy[t * d + i];
        }
        dz[t] = static_cast<T>(dot * gg[t] * (1.0 - gg[t]));
      }
      mm<T>(be, 1, d, nT, dz, true, x, false, g.shared_gate_w.data<T>());
      mm<T>(be, nT, d, 1, dz, false, P.shared_gate_w.data<T>(), false, dx, T(1));
    }
    const T* dYs = dYs_t.data<T>();
    Tensor dHs = Tensor::empty({nT, Fs}, dt, "d shared hidden");
    mm<T>(be, nT, Fs, d, dYs, false, P.shared_w_down.data<T>(), false, dHs.data<T>());
    mm<T>(be, d, Fs, nT, dYs, true, ptr<T>(S.Hs), false, g.shared_w_down.data<T>());
    Tensor dUs = Tensor::empty({nT, Fs}, dt, "d shared up");
    Tensor dGs;
    if (swiglu) dGs = Tensor::empty({nT, Fs}, dt, "d shared gate proj");
    act_backward<T>(be, cfg.activation, nT * Fs, ptr<T>(S.Gs), ptr<T>(S.Us), dHs.data<T>(), ptr<T>(dGs),
                    dUs.data<T>());
    mm<T>(be, Fs, d, nT, dUs.data<T>(), true, x, false, g.shared_w_up.data<T>());
    mm<T>(be, nT, d, Fs, dUs.data<T>(), false, P.shared_w_up.data<T>(), false, dx, T(1));
    if (swiglu) {
      mm<T>(be, Fs, d, nT, dGs.data<T>(), true, x, false, g.shared_w_gate.data<T>());
      mm<T>(be, nT, d, Fs, dGs.data<T>(), false, P.shared_w_gate.data<T>(), false, dx, T(1));
    }
  }
  return g;
}

}  // namespace

MoELayer::MoELayer(MoEConfig cfg, DType dtype, kernels::Backend backend)
    : cfg_(std::move(cfg)), dtype_(dtype), backend_(backend) {
  cfg_.validate();
  MOE_CHECK(dtype == DType::F32 || dtype == DType::F64, "MoE layer: dtype must be f32 or f64, got ",
            dtype_name(dtype));
  const int64_t E = cfg_.n_experts, d = cfg_.d_model, F = cfg_.d_ff, Fs = cfg_.shared_width();
  params_.router_w = Tensor::zeros({E, d}, dtype, "router_w");
  params_.router_bias = Tensor::zeros({E}, dtype, "router_bias");
  if (is_swiglu(cfg_)) params_.w_gate = Tensor::zeros({E, F, d}, dtype, "w_gate");
  params_.w_up = Tensor::zeros({E, F, d}, dtype, "w_up");
  params_.w_down = Tensor::zeros({E, d, F}, dtype, "w_down");
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
  auto init = [&](Tensor& t, uint64_t stream, double fan_in) {
    if (t.defined()) rng.fork(stream).fill_normal(t, 0.0, 1.0 / std::sqrt(fan_in));
  };
  init(params_.router_w, 1, d);
  init(params_.w_gate, 2, d);
  init(params_.w_up, 3, d);
  init(params_.w_down, 4, F);
  init(params_.shared_w_gate, 5, d);
  init(params_.shared_w_up, 6, d);
  init(params_.shared_w_down, 7, Fs);
  init(params_.shared_gate_w, 8, d);
  params_.router_bias.fill(0.0);
}

void MoELayer::check_params() const {
  const int64_t E = cfg_.n_experts, d = cfg_.d_model, F = cfg_.d_ff, Fs = cfg_.shared_width();
  auto check = [&](const Tensor& t, const Shape& s, const char* name) {
    check_shape(t, s, name);
    t.check_dtype(dtype_, name);
    MOE_CHECK(t.is_contiguous(), "parameter '", name, "' must be contiguous");
  };
  check(params_.router_w, {E, d}, "router_w");
  check(params_.router_bias, {E}, "router_bias");
  if (is_swiglu(cfg_)) check(params_.w_gate, {E, F, d}, "w_gate");
  check(params_.w_up, {E, F, d}, "w_up");
  check(params_.w_down, {E, d, F}, "w_down");
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

MoEGrads MoELayer::backward(const MoEForward& fwd, const Tensor& dy) const {
  check_params();
  if (dtype_ == DType::F64) return backward_impl<double>(*this, fwd, dy);
  return backward_impl<float>(*this, fwd, dy);
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
