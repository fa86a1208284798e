// Bf16Experts: the expert FFNs on bf16 copies of the weights (inference; MoELayer::
// set_bf16_expert_weights), fp32 activations rounded to bf16 inside the GEMMs, fp32 accumulation.
#include "moe/core/error.h"
#include "moe/experts.h"
#include "moe/kernels/ops_bf16.h"

namespace moe::detail {

namespace {

const uint16_t* bf16_ptr(const Tensor& t) {
  if (!t.defined()) return nullptr;
  t.check_dtype(DType::BF16);
  return static_cast<const uint16_t*>(t.raw());
}

}  // namespace

// out (rows, d) = act(x_rows · W_in^T) · W_down^T per expert: one GEMM gives [G | U] (W_in is
// [gate; up] per expert for SwiGLU), then the down projection makes h from the pre-activations
// while packing (no H buffer) and stores row p scaled by scale[p] at out_row[p].
void Bf16Experts::forward(const ExpertsForwardArgs<float>& a) const {
  const ExpertBatch<float>& b = *a.batch;
  const int64_t M = b.rows, d = shape_.d_model, F = shape_.d_ff;
  const int64_t n_in = shape_.preact_width();
  Tensor GU = Tensor::empty({M, n_in}, DType::F32, "expert pre-activations");  // (M, 2F) or (M, F)
  kernels::GroupedGemmBf16Args up;
  up.E = static_cast<int64_t>(b.offsets.size()) - 1;
  up.N = n_in;
  up.K = d;
  up.offsets = b.offsets.data();
  up.A = b.x_rows;
  up.lda = d;
  up.gather = b.gather.empty() ? nullptr : b.gather.data();
  up.W = bf16_ptr(w_in_);
  up.C = GU.data<float>();
  up.ldc = n_in;
  kernels::grouped_gemm_bf16w(shape_.backend, up);
  kernels::GroupedGemmBf16Args dn;
  dn.E = up.E;
  dn.N = d;
  dn.K = F;
  dn.offsets = b.offsets.data();
  dn.A = GU.data<float>();
  dn.lda = n_in;
  dn.a_preact = true;
  dn.act = shape_.act;
  dn.W = bf16_ptr(w_down_);
  dn.C = a.out;
  dn.ldc = d;
  dn.scale = a.scale;
  dn.out_row = a.out_row;
  kernels::grouped_gemm_bf16w(shape_.backend, dn);
}

}  // namespace moe::detail
