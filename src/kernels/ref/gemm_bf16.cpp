// Reference bf16-weight grouped GEMM: one dot product per output element over the bf16-rounded
// activations and the bf16 weights, accumulated in double in index order.
#include <cstdint>
#include <vector>

#include "kernels/ref/ref.h"
#include "moe/core/dtype.h"
#include "moe/kernels/ops_bf16.h"

namespace moe::kernels::ref {

void grouped_gemm_bf16w(const GroupedGemmBf16Args& g) {
  std::vector<float> h(g.a_preact ? static_cast<size_t>(g.K) : 0);
  for (int64_t e = 0; e < g.E; ++e) {
    const uint16_t* w = g.W + e * g.N * g.K;  // (N, K), or (K, N) when trans_w
    for (int64_t p = g.offsets[e]; p < g.offsets[e + 1]; ++p) {
      const int64_t row = g.gather ? g.gather[p] : p;
      const float* a = g.A + row * g.lda;  // (K)
      if (g.a_preact) {
        preact_row(g.act, a, g.K, 1.0f, h.data());
        a = h.data();
      }
      for (int64_t n = 0; n < g.N; ++n) {
        double acc = 0;
        for (int64_t k = 0; k < g.K; ++k) {
          const uint16_t wv = g.trans_w ? w[k * g.N + n] : w[n * g.K + k];  // op(W_e)[k, n]
          acc += static_cast<double>(bf16_to_f32(f32_to_bf16(a[k]))) * static_cast<double>(bf16_to_f32(wv));
        }
        if (g.scale || g.out_row) {  // beta == 0 here
          const float s = g.scale ? g.scale[p] : 1.0f;
          g.C[(g.out_row ? g.out_row[p] : p) * g.ldc + n] = s * static_cast<float>(acc);
          continue;
        }
        float& c = g.C[p * g.ldc + n];
        if (g.beta != 0.0f) acc += static_cast<double>(g.beta) * static_cast<double>(c);
        c = static_cast<float>(acc);
      }
    }
  }
}

}  // namespace moe::kernels::ref
