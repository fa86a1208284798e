// MoELayer's backward, the forward in reverse (docs/MOE_LAYER.md section 6): combine -> experts ->
// dispatch for the routed experts, then the router (with the balancing losses) and the shared
// experts. The strategies are the ones the forward picked (Saved).
#include <algorithm>
#include <cmath>

#include "moe/core/error.h"
#include "moe/layer_internal.h"
#include "moe/moe/balance.h"
#include "moe/moe/router.h"
#include "moe/pipeline.h"

namespace moe::detail {

namespace {

template <typename T>
T beta_of(bool add) {
  return add ? T(1) : T(0);
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

// Which passes backward runs, and for each parameter gradient whether it is added to (the caller's
// tensor: GEMMs with beta 1) or written (a new one: beta 0).
struct GradPlan {
  bool skip_experts = false;  // no tokens anywhere: no expert pass
  bool skip_rest = false;     // no tokens here: no router or shared-expert pass
  bool router = false, gate = false, up = false, down = false;
  bool shared_gate = false, shared_up = false, shared_down = false, shared_gate_w = false;
};

// Checks or allocates every gradient of g. New ones start as zeros only where a path may skip them
// (no tokens here: no router or shared-expert pass; no tokens anywhere: no expert pass). dx is
// always overwritten: the combine writes every token's row.
template <typename T>
GradPlan grad_targets(const MoELayer& L, int64_t nT, MoEGrads& g) {
  const MoEConfig& cfg = L.config();
  const DType dt = dtype_of<T>::value;
  const int64_t d = cfg.d_model, E = cfg.n_experts, El = L.local_experts(), F = cfg.d_ff,
                Fs = cfg.shared_width();
  const bool swiglu = cfg.activation == kernels::Activation::SwiGLU;
  GradPlan p;
  // Under expert parallelism a rank without tokens still computes the rows others sent it.
  p.skip_experts = nT == 0 && !L.expert_parallel().comm;
  p.skip_rest = nT == 0;
  if (g.dx.defined() && g.dx.shape() != Shape{nT, d}) g.dx = Tensor();  // another batch's: replaced
  if (!g.dx.defined()) grad_target(g.dx, {nT, d}, dt, "dx", true);
  g.dx.check_dtype(dt, "dx");
  MOE_CHECK(g.dx.is_contiguous(), "MoE backward: gradient 'dx' must be contiguous");
  p.router = grad_target(g.router_w, {E, d}, dt, "d router_w", p.skip_rest);
  p.gate = swiglu && grad_target(g.w_gate, {El, F, d}, dt, "d w_gate", p.skip_experts);
  p.up = grad_target(g.w_up, {El, F, d}, dt, "d w_up", p.skip_experts);
  p.down = grad_target(g.w_down, {El, d, F}, dt, "d w_down", p.skip_experts);
  if (Fs > 0) {
    p.shared_gate = swiglu && grad_target(g.shared_w_gate, {Fs, d}, dt, "d shared_w_gate", p.skip_rest);
    p.shared_up = grad_target(g.shared_w_up, {Fs, d}, dt, "d shared_w_up", p.skip_rest);
    p.shared_down = grad_target(g.shared_w_down, {d, Fs}, dt, "d shared_w_down", p.skip_rest);
    if (cfg.shared_gate)
      p.shared_gate_w = grad_target(g.shared_gate_w, {1, d}, dt, "d shared_gate_w", p.skip_rest);
  }
  return p;
}

template <typename T>
ExpertsGrads<T> routed_grads(const MoEGrads& g, const GradPlan& p) {
  return {.w_gate = ptr<T>(g.w_gate),
          .w_up = ptr<T>(g.w_up),
          .w_down = ptr<T>(g.w_down),
          .beta_gate = beta_of<T>(p.gate),
          .beta_up = beta_of<T>(p.up),
          .beta_down = beta_of<T>(p.down)};
}

template <typename T>
ExpertsGrads<T> shared_grads(const MoEGrads& g, const GradPlan& p) {
  return {.w_gate = ptr<T>(g.shared_w_gate),
          .w_up = ptr<T>(g.shared_w_up),
          .w_down = ptr<T>(g.shared_w_down),
          .beta_gate = beta_of<T>(p.shared_gate),
          .beta_up = beta_of<T>(p.shared_up),
          .beta_down = beta_of<T>(p.shared_down)};
}

template <typename T>
const Saved<T>& saved_of(const MoEForward& fwd) {
  MOE_CHECK(fwd.saved, "MoE backward: the forward result holds no saved activations");
  const Saved<T>& S = *static_cast<const Saved<T>*>(fwd.saved.get());
  MOE_CHECK(S.experts->trainable(),
            "MoE backward: this forward ran on bf16 or executor-held expert weights (an "
            "inference path that keeps no activations); call "
            "set_bf16_expert_weights(false) to train");
  MOE_CHECK(!S.consumed,
            "MoE backward: this forward's backward has already run (it writes the gradients of the "
            "saved pre-activations over them); run the forward again");
  return S;
}

template <typename T>
struct RoutedBackwardArgs {
  const Saved<T>* saved = nullptr;
  kernels::Backend backend = kernels::Backend::Cpu;
  int64_t d = 0;
  int64_t n_assign = 0;   // N
  bool overlap = false;   // expert parallelism: the parts' exchanges run on a thread
  const T* dy = nullptr;  // (T, d)
  T* dx = nullptr;        // (T, d) out, overwritten
  ExpertsGrads<T> grads;  // the routed experts' weight gradients, betas of the first part
};

// Routed experts, part by part as the forward: the dy rows to the experts (the combine's
// backward), the experts' backward (fused: d act in the down projection's epilogue gives
// [dG | dU] directly, and the weight gradients <dy_t · W_down_e, h> from the same pass), then each
// row's input gradient back to its token (the dispatch's backward). The exchange of one chunk's
// rows overlaps another's compute; the weight gradients accumulate over the parts. Returns the
// gradient of the combine weights, (N).
template <typename T>
Tensor routed_backward(const RoutedBackwardArgs<T>& a) {
  const Saved<T>& S = *a.saved;
  const int64_t d = a.d;
  Tensor dw = Tensor::zeros({a.n_assign}, dtype_of<T>::value, "d weight");  // (N)
  const size_t n_parts = S.parts.size();
  std::vector<const T*> dYs(n_parts);            // per part: each row's upstream gradient (batch.gather)
  std::vector<std::vector<T>> dw_rows(n_parts);  // per part: (M) gradient of each row's weight
  std::vector<Tensor> d_rows(n_parts);           // per part: (M, d) each row's input gradient
  auto combine_back = [&](size_t c) {
    const Part<T>& p = S.parts[c];
    dYs[c] = p.disp->grad_rows(a.dy + p.chunk.t0 * d);
  };
  auto experts_back = [&](size_t c) {
    const Part<T>& p = S.parts[c];
    dw_rows[c].resize(static_cast<size_t>(p.batch.rows));
    ExpertsGrads<T> grads = a.grads;
    if (c > 0) grads.beta_gate = grads.beta_up = grads.beta_down = T(1);  // the first part wrote them
    const ExpertsBackwardArgs<T> eb{.batch = &p.batch,
                                    .dY = dYs[c],
                                    .scale = p.batch.weight.data(),
                                    .preact = ptr<T>(p.GU),
                                    .dscale = dw_rows[c].data(),
                                    .grads = grads,
                                    .d_in = &d_rows[c]};
    S.experts->backward_down(eb);
    S.experts->backward_up(eb);
  };
  auto dispatch_back = [&](size_t c) {
    const Part<T>& p = S.parts[c];
    const std::vector<int32_t>& assign = p.chunk.assign;
    if (assign.empty() && n_parts == 1) {
      p.disp->return_dweight(dw_rows[c].data(), dw.data<T>());
    } else {
      std::vector<T> dw_chunk(assign.size());  // (N_chunk)
      p.disp->return_dweight(dw_rows[c].data(), dw_chunk.data());
      kernels::scatter_values<T>(a.backend, {.n = static_cast<int64_t>(assign.size()),
                                             .dst_n = dw.numel(),
                                             .index = assign.data(),
                                             .src = dw_chunk.data(),
                                             .dst = dw.data<T>()});
    }
    p.disp->dispatch_backward(ptr<T>(d_rows[c]), a.dx + p.chunk.t0 * d);
    d_rows[c] = Tensor();
  };
  pipeline(n_parts, a.overlap, combine_back, experts_back, dispatch_back);
  return dw;
}

// d logits (T, E) from the combine weights' gradient d_weight (N), plus aux_scale times the
// balancing losses' gradient.
template <typename T>
std::vector<double> d_router_logits(const MoEConfig& cfg, const Routing& r, const T* d_weight,
                                    double aux_scale) {
  std::vector<double> dl(static_cast<size_t>(r.n_tokens * cfg.n_experts), 0.0);  // (T, E)
  std::vector<double> dwd(static_cast<size_t>(r.n_assign));                      // (N)
  for (int64_t a = 0; a < r.n_assign; ++a) dwd[a] = static_cast<double>(d_weight[a]);
  route_backward(cfg, r, dwd.data(), dl.data());
  if (aux_scale == 1.0) {
    balance_losses(cfg, r, dl.data());
  } else if (aux_scale != 0.0) {
    std::vector<double> dbal(dl.size(), 0.0);  // (T, E)
    balance_losses(cfg, r, dbal.data());
    for (size_t i = 0; i < dl.size(); ++i) dl[i] += aux_scale * dbal[i];
  }
  return dl;
}

// Router: d logits -> dW_r (E, d) = dlogits^T · x_r, and dx += dlogits · W_r (times the jitter
// factors when the router input was jittered).
template <typename T>
void router_backward(const MoELayer& L, const Saved<T>& S, const std::vector<double>& dl, MoEGrads& g,
                     bool add) {
  const int64_t nT = S.x.size(0), d = L.config().d_model, E = L.config().n_experts;
  const DType dt = dtype_of<T>::value;
  const kernels::Backend be = L.backend();
  const T* W_r = L.params().router_w.data<T>();                    // (E, d)
  T* dx = g.dx.data<T>();                                          // (T, d)
  Tensor dlog = Tensor::from(dl, {nT, E}, dt, "d router logits");  // (T, E)
  matmul<T>(be, {.M = E,
                 .N = d,
                 .K = nT,
                 .A = dlog.data<T>(),
                 .trans_a = true,
                 .B = ptr<T>(S.x_r),
                 .C = g.router_w.data<T>(),
                 .beta = beta_of<T>(add)});
  if (S.jitter.defined()) {
    Tensor dxr = Tensor::empty({nT, d}, dt, "d router input");  // (T, d)
    matmul<T>(be, {.M = nT, .N = d, .K = E, .A = dlog.data<T>(), .B = W_r, .C = dxr.data<T>()});
    const T* j = ptr<T>(S.jitter);
    const T* a = dxr.data<T>();
    for (int64_t i = 0; i < nT * d; ++i) dx[i] += a[i] * j[i];
  } else {
    matmul<T>(be, {.M = nT, .N = d, .K = E, .A = dlog.data<T>(), .B = W_r, .C = dx, .beta = T(1)});
  }
}

// The shared gate g = sigmoid(z), z = x · w_sg^T: dz = dgate · g · (1 − g), then dw_sg = dz^T · x
// and dx += dz · w_sg.
template <typename T>
void shared_gate_backward(const MoELayer& L, const Saved<T>& S, const std::vector<T>& dgate, MoEGrads& g,
                          bool add) {
  const int64_t nT = S.x.size(0), d = L.config().d_model;
  const T* gate = ptr<T>(S.g);                                                     // (T)
  Tensor dgl = Tensor::empty({nT, 1}, dtype_of<T>::value, "d shared gate logit");  // (T, 1)
  T* dz = dgl.data<T>();
  for (int64_t t = 0; t < nT; ++t)
    dz[t] = static_cast<T>(static_cast<double>(dgate[t]) * gate[t] * (1.0 - static_cast<double>(gate[t])));
  matmul<T>(L.backend(), {.M = 1,
                          .N = d,
                          .K = nT,
                          .A = dz,
                          .trans_a = true,
                          .B = ptr<T>(S.x),
                          .C = g.shared_gate_w.data<T>(),
                          .beta = beta_of<T>(add)});
  matmul<T>(L.backend(), {.M = nT,
                          .N = d,
                          .K = 1,
                          .A = dz,
                          .B = L.params().shared_gate_w.data<T>(),
                          .C = g.dx.data<T>(),
                          .beta = T(1)});
}

// Shared experts, fused as the routed ones. With Ys = act(G, U) · W_sd^T and y += gate · Ys, the
// gate's gradient <dy, Ys> = <dy · W_sd, h> is the dscale of the down projection's backward; it goes
// back through the gate before the up projections add their input gradient to dx.
template <typename T>
void shared_backward(const MoELayer& L, const Saved<T>& S, const T* dy, const GradPlan& plan, MoEGrads& g) {
  const bool gated = L.config().shared_gate;
  std::vector<T> dgate(gated ? static_cast<size_t>(S.x.size(0)) : 0);  // (T)
  const ExpertsBackwardArgs<T> eb{.batch = &S.shared,
                                  .dY = dy,
                                  .scale = gated ? ptr<T>(S.g) : nullptr,
                                  .preact = ptr<T>(S.GUs),
                                  .dscale = gated ? dgate.data() : nullptr,
                                  .grads = shared_grads<T>(g, plan),
                                  .d_in = &g.dx};
  S.shared_experts->backward_down(eb);
  if (gated) shared_gate_backward<T>(L, S, dgate, g, plan.shared_gate_w);
  S.shared_experts->backward_up(eb);
}

}  // namespace

template <typename T>
void layer_backward(const MoELayer& L, const MoEForward& fwd, const Tensor& dy_in, double aux_scale,
                    MoEGrads& g) {
  const Saved<T>& S = saved_of<T>(fwd);
  const Routing& r = fwd.routing;
  const int64_t nT = r.n_tokens, d = L.config().d_model;
  check_shape(dy_in, {nT, d}, "dy");
  dy_in.check_dtype(dtype_of<T>::value, "dy");
  const Tensor dy_t = dy_in.contiguous();  // (T, d)
  const T* dy = dy_t.data<T>();
  const GradPlan plan = grad_targets<T>(L, nT, g);
  S.consumed = true;  // from here on the saved pre-activations are overwritten
  if (plan.skip_experts) {
    std::fill_n(g.dx.data<T>(), nT * d, T(0));
    return;
  }
  // The forward in reverse: combine -> experts -> dispatch, router, shared experts.
  const Tensor dw = routed_backward<T>({.saved = &S,
                                        .backend = L.backend(),
                                        .d = d,
                                        .n_assign = r.n_assign,
                                        .overlap = L.expert_parallel().comm != nullptr,
                                        .dy = dy,
                                        .dx = g.dx.data<T>(),
                                        .grads = routed_grads<T>(g, plan)});  // (N) d combine weights
  if (plan.skip_rest) return;
  const std::vector<double> dl = d_router_logits<T>(L.config(), r, dw.data<T>(), aux_scale);  // (T, E)
  router_backward<T>(L, S, dl, g, plan.router);                 // dx += d router input
  if (S.shared_experts) shared_backward<T>(L, S, dy, plan, g);  // dx += d shared input
}

template void layer_backward<float>(const MoELayer&, const MoEForward&, const Tensor&, double, MoEGrads&);
template void layer_backward<double>(const MoELayer&, const MoEForward&, const Tensor&, double, MoEGrads&);

}  // namespace moe::detail
