// FusedExperts: the expert FFNs on the layer's own f32/f64 weights with the fused grouped kernels
// (docs/MOE_LAYER.md sections 4 and 6). Forward keeps only the pre-activations [G | U] of each row;
// the hidden activation h = act(G, U) is made from them while the down projection (and W_down's
// gradient) pack their GEMM operands. Backward writes [dG | dU] over [G | U] in place.
#include "moe/experts.h"

#include <type_traits>

#include "moe/kernels/weights.h"
#include "moe/layer_steps.h"

namespace moe::detail {

namespace {

using kernels::Activation;

template <typename T>
int64_t n_experts(const ExpertBatch<T>& b) {
  return static_cast<int64_t>(b.offsets.size()) - 1;
}

template <typename T>
const int32_t* gather_of(const ExpertBatch<T>& b) {
  return b.gather.empty() ? nullptr : b.gather.data();
}

// The pre-activations (or their gradients) in an (M, 2F) [G | U] buffer (SwiGLU) or an (M, F) U one.
template <typename T>
struct PreAct {
  T* G = nullptr;  // (M, F), row stride ld; SwiGLU only
  T* U = nullptr;  // (M, F), row stride ld
  int64_t ld = 0;
};

template <typename T>
PreAct<T> pre_act(const FfnShape& s, T* base) {
  const int64_t F = s.d_ff;
  return s.swiglu() ? PreAct<T>{base, base + F, 2 * F} : PreAct<T>{nullptr, base, F};
}

// dW_e (N, K) = beta · dW_e + Σ over expert e's rows p of dC[c(p)]^T · A[a(p)], c(p) = dC_gather[p]
// (p when null), a(p) = gather[p] (p when null). With a_preact, A holds saved pre-activations and
// row p stands for a_scale[p] · act(A[a(p)]).
template <typename T>
struct RowWgradArgs {
  int64_t N = 0, K = 0;
  const T* dC = nullptr;  // rows of length N, row stride ldc
  int64_t ldc = 0;
  const int32_t* dC_gather = nullptr;
  const T* A = nullptr;  // rows of length K (2K or K pre-activations with a_preact), row stride lda
  int64_t lda = 0;
  const int32_t* gather = nullptr;
  bool a_preact = false;
  const T* a_scale = nullptr;  // (M) or null
  T* dW = nullptr;             // (E, N, K)
  T beta = 0;
  bool bf16 = false;  // bf16 operands on the matrix units where the backend has them
};

template <typename T>
void row_wgrad(const FfnShape& s, const ExpertBatch<T>& b, const RowWgradArgs<T>& w) {
  kernels::GroupedWgradArgs<T> g;
  g.E = n_experts(b);
  g.N = w.N;
  g.K = w.K;
  g.offsets = b.offsets.data();
  g.dC = w.dC;
  g.ldc = w.ldc;
  g.dC_gather = w.dC_gather;
  g.A = w.A;
  g.lda = w.lda;
  g.gather = w.gather;
  g.dW = w.dW;
  g.beta = w.beta;
  if (w.a_preact) {  // A = a_scale * act(saved pre-activations), made while packing
    g.a_preact = true;
    g.act = s.act;
    g.a_scale = w.a_scale;
  }
  g.bf16 = w.bf16;
  kernels::grouped_gemm_wgrad(s.backend, g);
}

}  // namespace

template <typename T>
void FusedExperts<T>::forward(const ExpertsForwardArgs<T>& a) const {
  const ExpertBatch<T>& b = *a.batch;
  const int64_t M = b.rows, F = shape_.d_ff, d = shape_.d_model;
  // Only the pre-activations stay for backward; the hidden activation is never stored.
  *a.preact = Tensor::empty({M, shape_.preact_width()}, dtype_of<T>::value,
                            std::string(shape_.name) + " pre-activations");  // (M, 2F) or (M, F)
  T* GU = ptr<T>(*a.preact);
  const PreAct<T> pa = pre_act(shape_, GU);
  if constexpr (std::is_same_v<T, float>) {
    if (w_.bf16.defined()) return packed_forward(shape_, w_.bf16.in_fwd, w_.bf16.down_fwd, a, GU);
  }

  kernels::FfnUpArgs<T> up;  // [G | U] = x_rows · [W_gate_e; W_up_e]^T, one fused grouped GEMM
  up.act = shape_.act;
  up.E = n_experts(b);
  up.F = F;
  up.K = d;
  up.offsets = b.offsets.data();
  up.A = b.x_rows;
  up.lda = d;
  up.gather = gather_of(b);
  up.W_gate = ptr<T>(w_.gate);
  up.W_up = ptr<T>(w_.up);
  up.H = nullptr;
  up.ldh = F;
  up.G = pa.G;
  up.ldg = pa.ld;
  up.U = pa.U;
  up.ldu = pa.ld;
  kernels::grouped_ffn_up(shape_.backend, up);

  // Down projection: h = act(G, U) made while packing; the epilogue scales each row and stores it
  // at its output row (for the local dispatcher the row of its assignment, so the combine is a
  // plain per-token sum in assignment order; for the all-to-all the row it came in on).
  kernels::GroupedGemmScatterArgs<T> dn;
  dn.E = n_experts(b);
  dn.N = d;
  dn.K = F;
  dn.offsets = b.offsets.data();
  dn.A = GU;
  dn.lda = shape_.preact_width();
  dn.a_preact = true;
  dn.act = shape_.act;
  dn.W = ptr<T>(w_.down);
  dn.scale = a.scale;
  dn.out_row = a.out_row;
  dn.C = a.out;
  dn.ldc = d;
  kernels::grouped_gemm_scatter(shape_.backend, dn);
}

template <typename T>
void FusedExperts<T>::backward_down(const ExpertsBackwardArgs<T>& a) const {
  const ExpertBatch<T>& b = *a.batch;
  const int64_t F = shape_.d_ff, d = shape_.d_model;
  // d W_down_e (d, F) = Σ_p (scale_p dy_p)^T h_p, dy's rows read through the gather and
  // scale_p h_p made from the saved [G | U] while packing. It runs first: the fused backward below
  // writes [dG | dU] over [G | U].
  row_wgrad<T>(shape_, b,
               {.N = d,
                .K = F,
                .dC = a.dY,
                .ldc = d,
                .dC_gather = gather_of(b),
                .A = a.preact,
                .lda = shape_.preact_width(),
                .a_preact = true,
                .a_scale = a.scale,
                .dW = a.grads.w_down,
                .beta = a.grads.beta_down,
                .bf16 = w_.bf16.defined()});

  // The down projection's backward with d act in its epilogue: [dG | dU] in place of [G | U] (no dH
  // buffer), and dscale_p = <dy_p · W_down_e, h_p> from the same pass.
  const PreAct<T> pa = pre_act(shape_, a.preact);
  kernels::FfnDownBackwardArgs<T> g;
  g.act = shape_.act;
  g.E = n_experts(b);
  g.F = F;
  g.D = d;
  g.offsets = b.offsets.data();
  g.dY = a.dY;
  g.ldy = d;
  g.gather = gather_of(b);
  g.scale = a.scale;
  g.W_down = ptr<T>(w_.down);
  g.G = pa.G;
  g.ldg = pa.ld;
  g.U = pa.U;
  g.ldu = pa.ld;
  g.dG = pa.G;
  g.lddg = pa.ld;
  g.dU = pa.U;
  g.lddu = pa.ld;
  g.Hs = nullptr;
  g.ldhs = F;
  g.dscale = a.dscale;
  if constexpr (std::is_same_v<T, float>) {
    if (w_.bf16.defined()) g.W_down_w = packed_view(w_.bf16.down_bwd, F, d);  // op(W_down) (d, F)
  }
  kernels::grouped_ffn_down_backward(shape_.backend, g);
}

template <typename T>
void FusedExperts<T>::backward_up(const ExpertsBackwardArgs<T>& a) const {
  const ExpertBatch<T>& b = *a.batch;
  const int64_t M = b.rows, F = shape_.d_ff, d = shape_.d_model;
  const bool swiglu = shape_.swiglu();
  const PreAct<T> dpa = pre_act(shape_, a.preact);  // [dG | dU] after backward_down
  // dW_up_e (F, d) = Σ_p dU_p^T x_p and dW_gate_e likewise, x's rows read through the gather.
  const RowWgradArgs<T> dW_up{.N = F,
                              .K = d,
                              .dC = dpa.U,
                              .ldc = dpa.ld,
                              .A = b.x_rows,
                              .lda = d,
                              .gather = gather_of(b),
                              .dW = a.grads.w_up,
                              .beta = a.grads.beta_up,
                              .bf16 = w_.bf16.defined()};
  row_wgrad<T>(shape_, b, dW_up);
  if (swiglu) {
    RowWgradArgs<T> dW_gate = dW_up;
    dW_gate.dC = dpa.G;
    dW_gate.dW = a.grads.w_gate;
    dW_gate.beta = a.grads.beta_gate;
    row_wgrad<T>(shape_, b, dW_gate);
  }

  // Input gradient (M, d) = [dG | dU] · [W_gate_e; W_up_e] (SwiGLU) or dU · W_up_e: one grouped
  // GEMM over K = 2F (or F) per row.
  const bool add = a.d_in->defined();
  if (!add) *a.d_in = Tensor::empty({M, d}, dtype_of<T>::value, "d expert in");
  if constexpr (std::is_same_v<T, float>) {
    if (w_.bf16.defined()) {  // dx = [dG | dU] · op(W_in), op(W_in) (2F, d) [gate; up]
      kernels::GroupedGemmWArgs g;
      g.E = n_experts(b);
      g.offsets = b.offsets.data();
      g.A = a.preact;
      g.lda = dpa.ld;
      g.W = packed_view(w_.bf16.in_bwd, d, shape_.preact_width());
      g.C = ptr<T>(*a.d_in);
      g.ldc = d;
      g.beta = add ? 1.0f : 0.0f;
      return kernels::grouped_gemm_w(shape_.backend, g);
    }
  }
  kernels::GroupedGemmCatArgs<T> g;
  g.E = n_experts(b);
  g.N = d;
  g.K1 = F;
  g.K2 = swiglu ? F : 0;
  g.offsets = b.offsets.data();
  g.A = swiglu ? dpa.G : dpa.U;
  g.lda = dpa.ld;
  g.W1 = swiglu ? ptr<T>(w_.gate) : ptr<T>(w_.up);
  g.W2 = swiglu ? ptr<T>(w_.up) : nullptr;
  g.C = ptr<T>(*a.d_in);
  g.ldc = d;
  g.beta = add ? T(1) : T(0);
  kernels::grouped_gemm_cat(shape_.backend, g);
}

template class FusedExperts<float>;
template class FusedExperts<double>;

}  // namespace moe::detail
