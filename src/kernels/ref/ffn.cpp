// Reference fused expert FFN ops: one dot product per element accumulated in double, then the
// activation (or its derivative) evaluated in double on the rounded pre-activations, exactly as
// the unfused ops grouped_gemm + activation (+ activation_backward) would.
#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/ref/ref.h"
#include "moe/core/dtype.h"

namespace moe::kernels::ref {

namespace {

double sigmoid(double a) { return 1.0 / (1.0 + std::exp(-a)); }
constexpr double kInvSqrt2 = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;

// h = act(u) for the plain activations, and its derivative.
double act_value(Activation act, double u) {
  switch (act) {
    case Activation::Gelu:
      return 0.5 * u * (1.0 + std::erf(u * kInvSqrt2));
    case Activation::Relu:
      return u < 0 ? 0.0 : u;
    case Activation::Silu:
    case Activation::SwiGLU:
      return u * sigmoid(u);
  }
  return 0;
}
double act_grad(Activation act, double u) {
  switch (act) {
    case Activation::Gelu:
      return 0.5 * (1.0 + std::erf(u * kInvSqrt2)) + u * kInvSqrt2Pi * std::exp(-0.5 * u * u);
    case Activation::Relu:
      return u > 0 ? 1.0 : 0.0;
    case Activation::Silu:
    case Activation::SwiGLU: {
      const double s = sigmoid(u);
      return s * (1.0 + u * (1.0 - s));
    }
  }
  return 0;
}

// Σ_k a[k] * w[k * stride], in double.
template <typename T>
double dot(const T* a, const T* w, int64_t n, int64_t stride) {
  double acc = 0;
  for (int64_t k = 0; k < n; ++k) acc += static_cast<double>(a[k]) * static_cast<double>(w[k * stride]);
  return acc;
}

}  // namespace

template <typename T>
void grouped_ffn_up(const FfnUpArgs<T>& g) {
  const bool swiglu = g.act == Activation::SwiGLU;
  for (int64_t e = 0; e < g.E; ++e) {
    const T* wg = swiglu ? g.W_gate + e * g.F * g.K : nullptr;  // (F, K)
    const T* wu = g.W_up + e * g.F * g.K;                       // (F, K)
    for (int64_t p = g.offsets[e]; p < g.offsets[e + 1]; ++p) {
      const T* a = g.A + (g.gather ? g.gather[p] : p) * g.lda;  // (K)
      for (int64_t f = 0; f < g.F; ++f) {
        // The pre-activations are rounded to T first, as the unfused ops store them.
        const T u = static_cast<T>(dot(a, wu + f * g.K, g.K, 1));
        double h;
        if (swiglu) {
          const T gv = static_cast<T>(dot(a, wg + f * g.K, g.K, 1));
          if (g.G) g.G[p * g.ldg + f] = gv;
          h = act_value(Activation::Silu, gv) * static_cast<double>(u);
        } else {
          h = act_value(g.act, u);
        }
        if (g.U) g.U[p * g.ldu + f] = u;
        if (g.H) g.H[p * g.ldh + f] = static_cast<T>(h);
      }
    }
  }
}

template <typename T>
void grouped_ffn_down_backward(const FfnDownBackwardArgs<T>& g) {
  const bool swiglu = g.act == Activation::SwiGLU;
  const bool stored = g.W_down_w.data != nullptr;  // weights in a format (float rows only)
  const bool round = stored && is_bf16(g.W_down_w.format);
  std::vector<double> dyr(static_cast<size_t>(stored ? g.D : 0));
  for (int64_t e = 0; e < g.E; ++e) {
    const T* w = stored ? nullptr : g.W_down + e * g.D * g.F;  // (D, F)
    const WeightView we = stored ? g.W_down_w.expert(e) : WeightView();
    for (int64_t p = g.offsets[e]; p < g.offsets[e + 1]; ++p) {
      const T* dy = g.dY + (g.gather ? g.gather[p] : p) * g.ldy;  // (D)
      const double s = g.scale ? static_cast<double>(g.scale[p]) : 1.0;
      double ds = 0;
      for (int64_t d = 0; d < static_cast<int64_t>(dyr.size()); ++d) {
        const float v = static_cast<float>(dy[d]);
        dyr[static_cast<size_t>(d)] = round ? bf16_to_f32(f32_to_bf16(v)) : v;
      }
      for (int64_t f = 0; f < g.F; ++f) {
        double q = 0;  // (dY · W_down_e)[f]
        if (stored) {
          for (int64_t d = 0; d < g.D; ++d) q += dyr[static_cast<size_t>(d)] * weight_at(we, d, f);
        } else {
          q = dot(dy, w + f, g.D, g.F);
        }
        const double u = g.U[p * g.ldu + f];
        double h;
        if (swiglu) {
          const double gv = g.G[p * g.ldg + f];
          const double silu = act_value(Activation::Silu, gv);
          h = silu * u;
          g.dG[p * g.lddg + f] = static_cast<T>(s * q * u * act_grad(Activation::Silu, gv));
          g.dU[p * g.lddu + f] = static_cast<T>(s * q * silu);
        } else {
          h = act_value(g.act, u);
          g.dU[p * g.lddu + f] = static_cast<T>(s * q * act_grad(g.act, u));
        }
        ds += q * h;
        if (g.Hs) g.Hs[p * g.ldhs + f] = static_cast<T>(s * h);
      }
      if (g.dscale) g.dscale[p] = static_cast<T>(ds);
    }
  }
}

template <typename T>
void grouped_gemm_cat(const GroupedGemmCatArgs<T>& g) {
  for (int64_t e = 0; e < g.E; ++e) {
    const T* w1 = g.K1 > 0 ? g.W1 + e * g.K1 * g.N : nullptr;  // (K1, N)
    const T* w2 = g.K2 > 0 ? g.W2 + e * g.K2 * g.N : nullptr;  // (K2, N)
    for (int64_t p = g.offsets[e]; p < g.offsets[e + 1]; ++p) {
      const T* a = g.A + (g.gather ? g.gather[p] : p) * g.lda;  // (K1 + K2)
      for (int64_t n = 0; n < g.N; ++n) {
        double acc = g.K1 > 0 ? dot(a, w1 + n, g.K1, g.N) : 0.0;
        if (g.K2 > 0) acc += dot(a + g.K1, w2 + n, g.K2, g.N);
        T& c = g.C[p * g.ldc + n];
        if (g.beta != T(0)) acc += static_cast<double>(g.beta) * static_cast<double>(c);
        c = static_cast<T>(acc);
      }
    }
  }
}

template <typename T>
void preact_row(Activation act, const T* a, int64_t K, T scale, T* out) {
  for (int64_t k = 0; k < K; ++k) {
    const double h = act == Activation::SwiGLU
                         ? act_value(Activation::Silu, a[k]) * static_cast<double>(a[K + k])
                         : act_value(act, a[k]);
    out[k] = scale * static_cast<T>(h);  // h rounded to T, as an H buffer would hold it
  }
}
template void preact_row<float>(Activation, const float*, int64_t, float, float*);
template void preact_row<double>(Activation, const double*, int64_t, double, double*);

template <typename T>
void grouped_gemm_scatter(const GroupedGemmScatterArgs<T>& g) {
  std::vector<T> h(g.a_preact ? static_cast<size_t>(g.K) : 0);
  for (int64_t e = 0; e < g.E; ++e) {
    const T* w = g.W + e * g.N * g.K;  // (N, K), or (K, N) when trans_w
    for (int64_t p = g.offsets[e]; p < g.offsets[e + 1]; ++p) {
      const T* a = g.A + (g.gather ? g.gather[p] : p) * g.lda;  // (K)
      if (g.a_preact) {
        preact_row(g.act, a, g.K, T(1), h.data());
        a = h.data();
      }
      const double s = g.scale ? static_cast<double>(g.scale[p]) : 1.0;
      T* c = g.C + (g.out_row ? g.out_row[p] : p) * g.ldc;  // (N)
      for (int64_t n = 0; n < g.N; ++n) {
        const double acc = g.trans_w ? dot(a, w + n, g.K, g.N) : dot(a, w + n * g.K, g.K, 1);
        c[n] = static_cast<T>(s * acc);
      }
    }
  }
}

template void grouped_ffn_up<float>(const FfnUpArgs<float>&);
template void grouped_ffn_up<double>(const FfnUpArgs<double>&);
template void grouped_ffn_down_backward<float>(const FfnDownBackwardArgs<float>&);
template void grouped_ffn_down_backward<double>(const FfnDownBackwardArgs<double>&);
template void grouped_gemm_cat<float>(const GroupedGemmCatArgs<float>&);
template void grouped_gemm_cat<double>(const GroupedGemmCatArgs<double>&);
template void grouped_gemm_scatter<float>(const GroupedGemmScatterArgs<float>&);
template void grouped_gemm_scatter<double>(const GroupedGemmScatterArgs<double>&);

}  // namespace moe::kernels::ref
