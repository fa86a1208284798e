// Bf16Experts: the expert FFNs on bf16 copies of the weights packed once (inference; MoELayer::
// set_bf16_expert_weights), fp32 activations rounded to bf16 inside the GEMMs, fp32 accumulation.
#include "moe/core/error.h"
#include "moe/experts.h"
#include "moe/kernels/context.h"
#include "moe/kernels/weights.h"

namespace moe::detail {

// The bf16-packed view of t (BF16 (E, packed bytes / 2)): E experts of op(W) (K, N).
kernels::WeightView packed_view(const Tensor& t, int64_t N, int64_t K) {
  MOE_CHECK(t.defined(), "bf16 experts: weights not set");
  t.check_dtype(DType::BF16);
  MOE_CHECK(t.dim() == 2 && t.size(1) * 2 == kernels::packed_bf16_bytes(N, K), "bf16 experts: tensor '",
            t.name(), "' does not hold packed (", K, ", ", N, ") experts");
  return {.format = kernels::WeightFormat::Bf16Packed, .N = N, .K = K, .data = t.raw()};
}

// [G | U] (rows, n_in) = x_rows · op(W_in), then out = scale · act(G, U) · op(W_down): the down
// projection makes h from the pre-activations while packing (no H buffer) and stores row p scaled
// by scale[p] at out_row[p].
void packed_forward(const FfnShape& s, const Tensor& w_in, const Tensor& w_down,
                    const ExpertsForwardArgs<float>& a, float* GU) {
  const ExpertBatch<float>& b = *a.batch;
  const int64_t d = s.d_model, n_in = s.preact_width();
  kernels::GroupedGemmWArgs up;
  up.E = static_cast<int64_t>(b.offsets.size()) - 1;
  up.offsets = b.offsets.data();
  up.A = b.x_rows;
  up.lda = d;
  up.gather = b.gather.empty() ? nullptr : b.gather.data();
  up.W = packed_view(w_in, n_in, d);
  up.C = GU;
  up.ldc = n_in;
  kernels::grouped_gemm_w(s.backend, up);
  kernels::GroupedGemmWArgs dn;
  dn.E = up.E;
  dn.offsets = b.offsets.data();
  dn.A = GU;
  dn.lda = n_in;
  dn.a_preact = true;
  dn.act = s.act;
  dn.W = packed_view(w_down, d, s.d_ff);
  dn.C = a.out;
  dn.ldc = d;
  dn.scale = a.scale;
  dn.out_row = a.out_row;
  kernels::grouped_gemm_w(s.backend, dn);
}

// The pre-activations (M, 2F) or (M, F) live in the calling thread's workspace: a prefill's buffer is
// large (4096 rows x 7168 floats for a Mixtral-like layer), and a fresh one per call spends a fifth of
// the tile time faulting its pages in.
void Bf16Experts::forward(const ExpertsForwardArgs<float>& a) const {
  const size_t bytes = static_cast<size_t>(a.batch->rows * shape_.preact_width()) * sizeof(float);
  auto* GU = static_cast<float*>(kernels::default_context(shape_.backend).workspace().reserve(bytes));
  packed_forward(shape_, w_in_, w_down_, a, GU);
}

}  // namespace moe::detail
