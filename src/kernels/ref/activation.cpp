// Reference activations and their derivatives, evaluated in double.
//   silu(a) = a * sigmoid(a)                 silu'(a) = sigmoid(a) * (1 + a * (1 - sigmoid(a)))
//   gelu(a) = a * Phi(a) (exact, erf form)   gelu'(a) = Phi(a) + a * phi(a)
//   relu(a) = max(a, 0)                      da = a > 0 ? dout : 0 (no NaN from 0 * dout)
//   swiglu(a, b) = silu(a) * b               d/da = b * silu'(a), d/db = silu(a)
#include <cmath>
#include <cstdint>

#include "kernels/ref/ref.h"

namespace moe::kernels::ref {

namespace {

double sigmoid(double a) { return 1.0 / (1.0 + std::exp(-a)); }
double silu(double a) { return a * sigmoid(a); }
double silu_grad(double a) {
  const double s = sigmoid(a);
  return s * (1.0 + a * (1.0 - s));
}
constexpr double kInvSqrt2 = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;
double gelu(double a) { return 0.5 * a * (1.0 + std::erf(a * kInvSqrt2)); }
double gelu_grad(double a) {
  return 0.5 * (1.0 + std::erf(a * kInvSqrt2)) + a * kInvSqrt2Pi * std::exp(-0.5 * a * a);
}
// `a < 0 ? 0 : a` keeps NaN as NaN.
double relu(double a) { return a < 0 ? 0.0 : a; }

}  // namespace

template <typename T>
void activation(const ActivationArgs<T>& g) {
  for (int64_t i = 0; i < g.n; ++i) {
    const double a = g.a[i];
    double out = 0;
    switch (g.act) {
      case Activation::SwiGLU:
        out = silu(a) * static_cast<double>(g.b[i]);
        break;
      case Activation::Gelu:
        out = gelu(a);
        break;
      case Activation::Relu:
        out = relu(a);
        break;
      case Activation::Silu:
        out = silu(a);
        break;
    }
    g.out[i] = static_cast<T>(out);
  }
}

template <typename T>
void activation_backward(const ActivationBackwardArgs<T>& g) {
  for (int64_t i = 0; i < g.n; ++i) {
    const double a = g.a[i], dout = g.dout[i];
    double da = 0;
    switch (g.act) {
      case Activation::SwiGLU: {
        const double b = g.b[i];
        da = dout * b * silu_grad(a);
        if (g.db) g.db[i] = static_cast<T>(dout * silu(a));
        break;
      }
      case Activation::Gelu:
        da = dout * gelu_grad(a);
        break;
      case Activation::Relu:
        da = a > 0 ? dout : 0.0;
        break;
      case Activation::Silu:
        da = dout * silu_grad(a);
        break;
    }
    g.da[i] = static_cast<T>(da);
  }
}

template void activation<float>(const ActivationArgs<float>&);
template void activation<double>(const ActivationArgs<double>&);
template void activation_backward<float>(const ActivationBackwardArgs<float>&);
template void activation_backward<double>(const ActivationBackwardArgs<double>&);

}  // namespace moe::kernels::ref
