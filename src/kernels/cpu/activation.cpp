// CPU activations: elementwise, split into contiguous chunks over threads. Formulas as in
// src/kernels/ref/activation.cpp, evaluated in T.
#include <cmath>
#include <cstdint>

#include "kernels/cpu/cpu.h"
#include "moe/core/parallel.h"

namespace moe::kernels::cpu {

namespace {

constexpr int64_t kGrain = 16384;  // elements per chunk at least: below this threads cost more than they save

template <typename T>
inline T sigmoid(T a) {
  return T(1) / (T(1) + std::exp(-a));
}
template <typename T>
inline T gelu_cdf(T a) {  // Phi(a)
  return T(0.5) * (T(1) + std::erf(a * T(0.70710678118654752440)));
}
template <typename T>
inline T gelu_pdf(T a) {  // phi(a)
  return T(0.39894228040143267794) * std::exp(T(-0.5) * a * a);
}

template <typename T>
void forward_range(const ActivationArgs<T>& g, int64_t i0, int64_t i1) {
  const T* a = g.a;
  T* out = g.out;
  switch (g.act) {
    case Activation::SwiGLU:
      for (int64_t i = i0; i < i1; ++i) out[i] = a[i] * sigmoid(a[i]) * g.b[i];
      break;
    case Activation::Silu:
      for (int64_t i = i0; i < i1; ++i) out[i] = a[i] * sigmoid(a[i]);
      break;
    case Activation::Gelu:
      for (int64_t i = i0; i < i1; ++i) out[i] = a[i] * gelu_cdf(a[i]);
      break;
    case Activation::Relu:
      for (int64_t i = i0; i < i1; ++i) out[i] = a[i] < T(0) ? T(0) : a[i];
      break;
  }
}

template <typename T>
void backward_range(const ActivationBackwardArgs<T>& g, int64_t i0, int64_t i1) {
  const T* a = g.a;
  const T* dout = g.dout;
  T* da = g.da;
  switch (g.act) {
    case Activation::SwiGLU:
      for (int64_t i = i0; i < i1; ++i) {
        const T s = sigmoid(a[i]);
        da[i] = dout[i] * g.b[i] * (s * (T(1) + a[i] * (T(1) - s)));
        if (g.db) g.db[i] = dout[i] * (a[i] * s);
      }
      break;
    case Activation::Silu:
      for (int64_t i = i0; i < i1; ++i) {
        const T s = sigmoid(a[i]);
        da[i] = dout[i] * (s * (T(1) + a[i] * (T(1) - s)));
      }
      break;
    case Activation::Gelu:
      for (int64_t i = i0; i < i1; ++i) da[i] = dout[i] * (gelu_cdf(a[i]) + a[i] * gelu_pdf(a[i]));
      break;
    case Activation::Relu:
      for (int64_t i = i0; i < i1; ++i) da[i] = a[i] > T(0) ? dout[i] : T(0);
      break;
  }
}

}  // namespace

template <typename T>
void activation(const ActivationArgs<T>& g) {
  parallel_for(g.n, kGrain, [&](int64_t i0, int64_t i1) { forward_range(g, i0, i1); });
}

template <typename T>
void activation_backward(const ActivationBackwardArgs<T>& g) {
  parallel_for(g.n, kGrain, [&](int64_t i0, int64_t i1) { backward_range(g, i0, i1); });
}

template void activation<float>(const ActivationArgs<float>&);
template void activation<double>(const ActivationArgs<double>&);
template void activation_backward<float>(const ActivationBackwardArgs<float>&);
template void activation_backward<double>(const ActivationBackwardArgs<double>&);

}  // namespace moe::kernels::cpu
