// Reference GEMM, grouped GEMM and its weight gradient: one dot product per output element,
// accumulated in double in index order.
#include <cstdint>
#include <vector>

#include "kernels/ref/ref.h"

namespace moe::kernels::ref {

template <typename T>
void gemm(const GemmArgs<T>& g) {
  for (int64_t i = 0; i < g.M; ++i) {
    for (int64_t j = 0; j < g.N; ++j) {
      double acc = 0;
      for (int64_t k = 0; k < g.K; ++k) {
        const double a = g.trans_a ? g.A[k * g.lda + i] : g.A[i * g.lda + k];  // op(A)[i, k]
        const double b = g.trans_b ? g.B[j * g.ldb + k] : g.B[k * g.ldb + j];  // op(B)[k, j]
        acc += a * b;
      }
      T& c = g.C[i * g.ldc + j];
      double out = static_cast<double>(g.alpha) * acc;
      if (g.beta != T(0)) out += static_cast<double>(g.beta) * static_cast<double>(c);
      c = static_cast<T>(out);
    }
  }
}

template <typename T>
void grouped_gemm(const GroupedGemmArgs<T>& g) {
  for (int64_t e = 0; e < g.E; ++e) {
    const T* w = g.W + e * g.N * g.K;  // (N, K), or (K, N) when trans_w
    for (int64_t p = g.offsets[e]; p < g.offsets[e + 1]; ++p) {
      const int64_t row = g.gather ? g.gather[p] : p;
      const T* a = g.A + row * g.lda;  // (K)
      for (int64_t n = 0; n < g.N; ++n) {
        double acc = 0;
        for (int64_t k = 0; k < g.K; ++k) {
          const double wv = g.trans_w ? w[k * g.N + n] : w[n * g.K + k];  // op(W_e)[k, n]
          acc += static_cast<double>(a[k]) * wv;
        }
        T& c = g.C[p * g.ldc + n];
        if (g.beta != T(0)) acc += static_cast<double>(g.beta) * static_cast<double>(c);
        c = static_cast<T>(acc);
      }
    }
  }
}

template <typename T>
void grouped_gemm_wgrad(const GroupedWgradArgs<T>& g) {
  for (int64_t e = 0; e < g.E; ++e) {
    T* dw = g.dW + e * g.N * g.K;  // (N, K)
    const int64_t p0 = g.offsets[e], rows = g.offsets[e + 1] - p0;
    // The expert's A rows: stored, or a_scale[p] * h from saved pre-activations.
    std::vector<T> h(g.a_preact ? static_cast<size_t>(rows * g.K) : 0);
    for (int64_t q = 0; q < (g.a_preact ? rows : 0); ++q) {
      const int64_t p = p0 + q;
      preact_row(g.act, g.A + (g.gather ? g.gather[p] : p) * g.lda, g.K, g.a_scale ? g.a_scale[p] : T(1),
                 h.data() + q * g.K);
    }
    for (int64_t n = 0; n < g.N; ++n) {
      for (int64_t k = 0; k < g.K; ++k) {
        double acc = 0;
        for (int64_t p = p0; p < p0 + rows; ++p) {
          const int64_t row = g.gather ? g.gather[p] : p;
          const int64_t crow = g.dC_gather ? g.dC_gather[p] : p;
          const T a = g.a_preact ? h[static_cast<size_t>((p - p0) * g.K + k)] : g.A[row * g.lda + k];
          acc += static_cast<double>(g.dC[crow * g.ldc + n]) * static_cast<double>(a);
        }
        T& out = dw[n * g.K + k];
        if (g.beta != T(0)) acc += static_cast<double>(g.beta) * static_cast<double>(out);
        out = static_cast<T>(acc);
      }
    }
  }
}

template void gemm<float>(const GemmArgs<float>&);
template void gemm<double>(const GemmArgs<double>&);
template void grouped_gemm<float>(const GroupedGemmArgs<float>&);
template void grouped_gemm<double>(const GroupedGemmArgs<double>&);
template void grouped_gemm_wgrad<float>(const GroupedWgradArgs<float>&);
template void grouped_gemm_wgrad<double>(const GroupedWgradArgs<double>&);

}  // namespace moe::kernels::ref
