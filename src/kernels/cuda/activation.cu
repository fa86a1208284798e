// CUDA activations (float), elementwise with a grid-stride loop. Formulas as in the reference
// (src/kernels/ref/activation.cpp).
#include <cuda_runtime.h>

#include "kernels/cuda/cuda.h"

namespace moe::kernels::cuda {

namespace {

constexpr int kThreads = 256;

__device__ float sigmoid(float a) { return 1.0f / (1.0f + expf(-a)); }
__device__ float gelu_cdf(float a) { return 0.5f * (1.0f + erff(a * 0.70710678118654752440f)); }
__device__ float gelu_pdf(float a) { return 0.39894228040143267794f * expf(-0.5f * a * a); }

__global__ void forward_kernel(ActivationArgs<float> g) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < g.n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const float a = g.a[i];
    float out = 0;
    switch (g.act) {
      case Activation::SwiGLU:
        out = a * sigmoid(a) * g.b[i];
        break;
      case Activation::Silu:
        out = a * sigmoid(a);
        break;
      case Activation::Gelu:
        out = a * gelu_cdf(a);
        break;
      case Activation::Relu:
        out = a < 0.0f ? 0.0f : a;
        break;
    }
    g.out[i] = out;
  }
}

__global__ void backward_kernel(ActivationBackwardArgs<float> g) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < g.n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const float a = g.a[i], dout = g.dout[i];
    float da = 0;
    switch (g.act) {
      case Activation::SwiGLU: {
        const float s = sigmoid(a);
        da = dout * g.b[i] * (s * (1.0f + a * (1.0f - s)));
        if (g.db) g.db[i] = dout * (a * s);
        break;
      }
      case Activation::Silu: {
        const float s = sigmoid(a);
        da = dout * (s * (1.0f + a * (1.0f - s)));
        break;
      }
      case Activation::Gelu:
        da = dout * (gelu_cdf(a) + a * gelu_pdf(a));
        break;
      case Activation::Relu:
        da = a > 0.0f ? dout : 0.0f;
        break;
    }
    g.da[i] = da;
  }
}

unsigned blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < 65535 ? b : 65535);
}

}  // namespace

void activation(const ActivationArgs<float>& g, Context& ctx) {
  const auto stream = static_cast<cudaStream_t>(ctx.stream());
  forward_kernel<<<blocks_for(g.n), kThreads, 0, stream>>>(g);
  check_status(cudaGetLastError(), "activation (cuda)");
}

void activation_backward(const ActivationBackwardArgs<float>& g, Context& ctx) {
  const auto stream = static_cast<cudaStream_t>(ctx.stream());
  backward_kernel<<<blocks_for(g.n), kThreads, 0, stream>>>(g);
  check_status(cudaGetLastError(), "activation_backward (cuda)");
}

}  // namespace moe::kernels::cuda
