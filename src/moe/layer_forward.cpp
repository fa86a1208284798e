// MoELayer's forward: router -> dispatch -> experts -> combine, plus the shared experts
// (docs/MOE_LAYER.md sections 1-4). The dispatcher (local or all-to-all) and the experts (fused,
// bf16, offloaded) are strategies picked here once per forward from the layer's state.
#include <cmath>
#include <type_traits>

#include "moe/core/error.h"
#include "moe/layer_internal.h"
#include "moe/moe/expert_parallel.h"
#include "moe/moe/router.h"
#include "moe/pipeline.h"

namespace moe::detail {

namespace {

FfnShape expert_shape(const MoELayer& L, int64_t width, const char* name) {
  return {.backend = L.backend(),
          .act = L.config().activation,
          .d_model = L.config().d_model,
          .d_ff = width,
          .name = name};
}

// The bf16 compute copies when the layer computes in bf16 (its experts then read them), else none.
inline Bf16PackedFfn bf16_copies(const MoELayer& L, const Bf16PackedFfn& p) {
  return L.bf16_compute() ? p : Bf16PackedFfn();
}

// The routed experts' strategy: the executor's when the layer has one (offloaded or quantized
// experts), else the bf16 weights' when set, else the layer's own weights'.
template <typename T>
std::shared_ptr<const Experts<T>> routed_experts(const MoELayer& L, const Tensor& x) {
  const MoEConfig& cfg = L.config();
  const FfnShape shape = expert_shape(L, cfg.d_ff, "expert");
  ExpertExecutor* ex = L.expert_executor();
  MOE_CHECK(ex || !L.external_experts(),
            "MoE layer: its expert weights are held outside the layer and no expert "
            "executor is attached");
  if constexpr (std::is_same_v<T, float>) {
    if (ex)
      return std::make_shared<OffloadedExperts>(OffloadedExperts::Args{.executor = ex,
                                                                       .shape = shape,
                                                                       .n_experts = cfg.n_experts,
                                                                       .first_expert = L.first_expert(),
                                                                       .x = ptr<float>(x),
                                                                       .n_tokens = x.size(0)});
    if (L.has_bf16_expert_weights()) {
      const Bf16ExpertWeights& W = L.bf16_expert_weights();
      return std::make_shared<Bf16Experts>(shape, W.w_in, W.w_down);
    }
  }
  const MoEParams& P = L.params();
  return std::make_shared<FusedExperts<T>>(
      shape,
      FfnWeights{.gate = P.w_gate, .up = P.w_up, .down = P.w_down, .bf16 = bf16_copies(L, L.bf16_routed())});
}

// The shared experts' strategy (null without shared experts): the bf16 weights' when set, else the
// layer's own weights'.
template <typename T>
std::shared_ptr<const Experts<T>> shared_experts(const MoELayer& L) {
  const int64_t Fs = L.config().shared_width();
  if (Fs == 0) return nullptr;
  const FfnShape shape = expert_shape(L, Fs, "shared");
  if constexpr (std::is_same_v<T, float>) {
    if (L.has_bf16_expert_weights()) {
      const Bf16ExpertWeights& W = L.bf16_expert_weights();
      return std::make_shared<Bf16Experts>(shape, W.shared_w_in, W.shared_w_down);
    }
  }
  const MoEParams& P = L.params();
  return std::make_shared<FusedExperts<T>>(shape, FfnWeights{.gate = P.shared_w_gate,
                                                             .up = P.shared_w_up,
                                                             .down = P.shared_w_down,
                                                             .bf16 = bf16_copies(L, L.bf16_shared())});
}

// The dispatcher strategy: under expert parallelism the all-to-all (training) or the all-reduce of
// the rows of replicated tokens (inference), else local.
template <typename T>
std::shared_ptr<Dispatcher<T>> make_dispatcher(const MoELayer& L) {
  const int64_t E = L.config().n_experts;
  if (const ExpertParallel& ep = L.expert_parallel(); ep.comm) {
    if (ep.replicated_tokens)
      return std::make_shared<ReplicatedTokensDispatcher<T>>(E, *ep.comm, L.backend());
    return std::make_shared<AllToAllDispatcher<T>>(E, *ep.comm, L.backend());
  }
  return std::make_shared<LocalDispatcher<T>>(E, L.backend());
}

// The router's input: x, or in training with jitter, x times per-element jitter factors.
template <typename T>
void router_input(const MoELayer& L, const ForwardOptions& opt, Saved<T>& S) {
  const RouterConfig& rc = L.config().router;
  const int64_t nT = S.x.size(0), d = L.config().d_model;
  S.x_r = S.x;
  if (!opt.training || rc.jitter_eps <= 0 || nT == 0) return;
  S.jitter = Tensor::empty({nT, d}, dtype_of<T>::value, "jitter");     // (T, d)
  S.x_r = Tensor::empty({nT, d}, dtype_of<T>::value, "router input");  // (T, d)
  router_jitter<T>({.n = nT * d,
                    .eps = rc.jitter_eps,
                    .seed = opt.seed,
                    .step = opt.step,
                    .x = ptr<T>(S.x),
                    .jitter = ptr<T>(S.jitter),
                    .x_r = ptr<T>(S.x_r)});
}

// Router: logits (T, E) = x_r · W_r^T, then selection and weights (token choice: the router_topk
// op), capacity (and, at inference, skipping); the statistics and balancing losses of the result
// (the routing_stats op). Every op runs on the layer's backend.
template <typename T>
void run_router(const MoELayer& L, const Saved<T>& S, const ForwardOptions& opt, MoEForward& out) {
  const MoEConfig& cfg = L.config();
  const int64_t nT = S.x.size(0), E = cfg.n_experts;
  Tensor logits = Tensor::zeros({nT, E}, dtype_of<T>::value, "router logits");  // (T, E)
  if (nT > 0)
    matmul<T>(L.backend(), {.M = nT,
                            .N = E,
                            .K = cfg.d_model,
                            .A = ptr<T>(S.x_r),
                            .B = L.params().router_w.data<T>(),
                            .trans_b = true,
                            .C = logits.data<T>()});
  out.routing = route(cfg, logits, L.params().router_bias, opt.token_ids, L.backend());
  const int64_t skipped = opt.training ? 0 : skip_low_weights(cfg.router, out.routing);
  out.stats = moe_stats<T>({.exec = L.backend(), .cfg = &cfg, .routing = &out.routing, .skipped = skipped});
}

// The routed experts' work in parts: one, or under expert parallelism with chunks, one per token
// chunk.
template <typename T>
std::vector<Part<T>> make_parts(const Routing& r, int64_t n_chunks) {
  std::vector<TokenChunk> chunks = split_routing<T>({.routing = &r, .n_chunks = n_chunks});
  std::vector<Part<T>> parts(chunks.size());
  for (size_t c = 0; c < chunks.size(); ++c) parts[c].chunk = std::move(chunks[c]);
  return parts;
}

// y (T, d) = Σ over each token's kept assignments of w · FFN_e(x), part by part: dispatch (the rows
// to this process's experts; under expert parallelism every rank's rows routed to them), experts,
// combine. With several parts the exchanges of one overlap the experts of another.
template <typename T>
void dispatch_experts_combine(const MoELayer& L, Saved<T>& S, T* y) {
  const int64_t d = L.config().d_model;
  const T* x = ptr<T>(S.x);
  const Experts<T>& experts = *S.experts;
  std::vector<Tensor> outs(
      S.parts.size());  // per part: (out rows, d) weighted outputs, rows by batch.out_row
  auto dispatch = [&](size_t c) {
    Part<T>& p = S.parts[c];
    p.disp = make_dispatcher<T>(L);
    p.disp->dispatch(p.chunk.routing, x + p.chunk.t0 * d, d, p.batch);
  };
  auto compute = [&](size_t c) {
    Part<T>& p = S.parts[c];
    const ExpertBatch<T>& b = p.batch;
    outs[c] = Tensor::empty({b.out_rows, d}, dtype_of<T>::value, "weighted expert out");
    experts.forward({.batch = &b,
                     .scale = b.weight.data(),
                     .out_row = b.out_row.data(),
                     .out = ptr<T>(outs[c]),
                     .out_rows = b.out_rows,
                     .preact = &p.GU});
  };
  auto combine = [&](size_t c) {
    Part<T>& p = S.parts[c];
    p.disp->combine(ptr<T>(outs[c]), y + p.chunk.t0 * d);
    outs[c] = Tensor();
  };
  const ExpertParallel& ep = L.expert_parallel();
  pipeline(S.parts.size(), ep.comm != nullptr && !ep.replicated_tokens, dispatch, compute, combine);
}

// Shared experts: one FFN of width Fs run as a single expert over all T rows, added to y, gated per
// token by g = sigmoid(x · w_sg^T) with shared_gate.
template <typename T>
void add_shared_experts(const MoELayer& L, Saved<T>& S, T* y) {
  const MoEConfig& cfg = L.config();
  const int64_t nT = S.x.size(0), d = cfg.d_model;
  const T* x = ptr<T>(S.x);
  S.shared.rows = nT;
  S.shared.offsets = {0, static_cast<int32_t>(nT)};
  S.shared.x_rows = x;
  Tensor ys = Tensor::empty({nT, d}, dtype_of<T>::value, "shared out");  // (T, d)
  S.shared_experts->forward({.batch = &S.shared, .out = ptr<T>(ys), .out_rows = nT, .preact = &S.GUs});
  if (cfg.shared_gate) {
    S.g = Tensor::empty({nT, 1}, dtype_of<T>::value, "shared gate");  // (T, 1)
    T* g = ptr<T>(S.g);
    matmul<T>(
        L.backend(),
        {.M = nT, .N = 1, .K = d, .A = x, .B = L.params().shared_gate_w.data<T>(), .trans_b = true, .C = g});
    for (int64_t t = 0; t < nT; ++t)
      g[t] = static_cast<T>(1.0 / (1.0 + std::exp(-static_cast<double>(g[t]))));
  }
  kernels::add_gated_rows<T>(L.backend(),
                             {.rows = nT, .d = d, .gate = ptr<T>(S.g), .src = ptr<T>(ys), .y = y});
}

}  // namespace

template <typename T>
MoEForward layer_forward(const MoELayer& L, const Tensor& x_in, const ForwardOptions& opt) {
  const MoEConfig& cfg = L.config();
  const int64_t d = cfg.d_model;
  check_shape(x_in, {-1, d}, "x");
  x_in.check_dtype(dtype_of<T>::value, "x");
  if (opt.check_finite) check_finite(x_in, "x");
  const int64_t nT = x_in.size(0);

  auto saved = std::make_shared<Saved<T>>();
  Saved<T>& S = *saved;
  S.x = x_in.contiguous();     // (T, d)
  router_input<T>(L, opt, S);  // S.x_r (T, d)

  MoEForward out;
  run_router<T>(L, S, opt, out);  // out.routing: N assignments (token, expert, weight); out.stats

  S.experts = routed_experts<T>(L, S.x);
  S.shared_experts = shared_experts<T>(L);
  const ExpertParallel& ep = L.expert_parallel();
  MOE_CHECK(S.experts->trainable() || !ep.comm || ep.replicated_tokens,
            "MoE layer: the all-to-all expert parallelism runs the training path only (no bf16 or "
            "executor-held expert weights); inference uses replicated tokens");
  S.parts = make_parts<T>(out.routing, ep.comm && !ep.replicated_tokens ? ep.chunks : 1);
  out.y = Tensor::zeros({nT, d}, dtype_of<T>::value, "y");  // (T, d)
  dispatch_experts_combine<T>(L, S, out.y.data<T>());       // y = Σ_a w_a · FFN_e(x_t)
  if (cfg.shared_width() > 0 && nT > 0) add_shared_experts<T>(L, S, out.y.data<T>());  // y += g · FFN_s(x)
  out.saved = saved;
  return out;
}

template MoEForward layer_forward<float>(const MoELayer&, const Tensor&, const ForwardOptions&);
template MoEForward layer_forward<double>(const MoELayer&, const Tensor&, const ForwardOptions&);

}  // namespace moe::detail
