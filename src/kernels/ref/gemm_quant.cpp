// Reference quantized-weight GEMM: each output element is one dot product of the activation row with
// the dequantised weight row (quant_format.h), accumulated in double in index order.
#include <cstdint>
#include <vector>

#include "kernels/quant_format.h"
#include "moe/core/dtype.h"
#include "moe/kernels/ops_quant.h"

namespace moe::kernels::ref {

void gemm_qw(const GemmQuantArgs& g) {
  const QuantWeight& W = g.W;
  const int64_t ng = W.K / W.group;
  std::vector<float> w(static_cast<size_t>(W.K));  // one dequantised row of W
  for (int64_t n = 0; n < W.N; ++n) {
    for (int64_t k = 0; k < W.K; ++k) {
      const int64_t s = n * ng + k / W.group;
      const float scale = f16_to_f32(W.scales[s]);
      w[static_cast<size_t>(k)] =
          W.bits == 8 ? quant::dequant8(static_cast<int8_t>(W.q[n * W.K + k]), scale)
                      : quant::dequant4(quant::int4_at(W.q + n * (W.K / 2), k), scale, f16_to_f32(W.mins[s]));
    }
    for (int64_t m = 0; m < g.M; ++m) {
      const float* a = g.A + (g.gather ? g.gather[m] : m) * g.lda;  // (K)
      double acc = 0;
      for (int64_t k = 0; k < W.K; ++k)
        acc += static_cast<double>(a[k]) * static_cast<double>(w[static_cast<size_t>(k)]);
      float& c = g.C[m * g.ldc + n];
      if (g.beta != 0.0f) acc += static_cast<double>(g.beta) * static_cast<double>(c);
      c = static_cast<float>(acc);
    }
  }
}

}  // namespace moe::kernels::ref
