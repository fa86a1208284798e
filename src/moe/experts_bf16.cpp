// Bf16Experts: the expert FFNs on bf16 copies of the weights packed once (inference; MoELayer::
// set_bf16_expert_weights), fp32 activations rounded to bf16 inside the GEMMs, fp32 accumulation.
#include "moe/core/error.h"
#include "moe/experts.h"
#include "moe/kernels/weights.h"

namespace moe::detail {

namespace {

// The bf16-packed view of t (BF16 (E, packed bytes / 2)): op(W_e) (K, N).
kernels::WeightView packed_view(const Tensor& t, int64_t N, int64_t K) {
  MOE_CHECK(t.defined(), "bf16 experts: weights not set");
  t.check_dtype(DType::BF16);
  MOE_CHECK(t.dim() == 2 && t.size(1) * 2 == kernels::packed_bf16_bytes(N, K), "bf16 experts: tensor '",
            t.name(), "' does not hold packed (", K, ", ", N, ") experts");
  return {.format = kernels::WeightFormat::Bf16Packed, .N = N, .K = K, .data = t.raw()};
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
  kernels::GroupedGemmWArgs up;
  up.E = static_cast<int64_t>(b.offsets.size()) - 1;
  up.offsets = b.offsets.data();
  up.A = b.x_rows;
  up.lda = d;
  up.gather = b.gather.empty() ? nullptr : b.gather.data();
  up.W = packed_view(w_in_, n_in, d);
  up.C = GU.data<float>();
  up.ldc = n_in;
  kernels::grouped_gemm_w(shape_.backend, up);
  kernels::GroupedGemmWArgs dn;
  dn.E = up.E;
  dn.offsets = b.offsets.data();
  dn.A = GU.data<float>();
  dn.lda = n_in;
  dn.a_preact = true;
  dn.act = shape_.act;
  dn.W = packed_view(w_down_, d, F);
  dn.C = a.out;
  dn.ldc = d;
  dn.scale = a.scale;
  dn.out_row = a.out_row;
  kernels::grouped_gemm_w(shape_.backend, dn);
}

}  // namespace moe::detail
