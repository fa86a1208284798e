// CUDA combine and combine backward (float).
//   combine: one block per token (grid-stride), threads over D; assignments added in list order.
//   backward: one block per assignment; dX row = w * dY row; dweight by a fixed-shape tree
//   reduction in shared memory, so the result does not depend on scheduling.
#include <cuda_runtime.h>

#include "kernels/cuda/cuda.h"

namespace moe::kernels::cuda {

namespace {

constexpr int kThreads = 128;  // a power of two (tree reduction)
constexpr int64_t kMaxBlocks = 65535;

__global__ void combine_kernel(CombineArgs<float> g) {
  for (int64_t t = blockIdx.x; t < g.T_; t += gridDim.x) {
    float* y = g.Y + t * g.D;  // (D)
    const int32_t first = g.tok_offsets[t], last = g.tok_offsets[t + 1];
    for (int64_t d = threadIdx.x; d < g.D; d += blockDim.x) {
      float acc = g.beta == 0.0f ? 0.0f : g.beta * y[d];
      for (int32_t i = first; i < last; ++i) {
        const int32_t a = g.tok_assign[i];
        const int64_t row = g.pos[a];
        if (row < 0) continue;  // dropped
        acc += (g.weight ? g.weight[a] : 1.0f) * g.X[row * g.D + d];
      }
      y[d] = acc;
    }
  }
}

__global__ void combine_backward_kernel(CombineBackwardArgs<float> g) {
  __shared__ float partial[kThreads];
  for (int64_t a = blockIdx.x; a < g.N; a += gridDim.x) {
    const int64_t row = g.pos[a];
    if (row < 0) {
      if (g.dweight && threadIdx.x == 0) g.dweight[a] = 0.0f;
      continue;
    }
    const float* dy = g.dY + int64_t{g.token[a]} * g.D;  // (D)
    const float w = g.weight ? g.weight[a] : 1.0f;
    float dot = 0;
    for (int64_t d = threadIdx.x; d < g.D; d += blockDim.x) {
      g.dX[row * g.D + d] = w * dy[d];
      if (g.dweight) dot += dy[d] * g.X[row * g.D + d];
    }
    if (g.dweight) {
      partial[threadIdx.x] = dot;
      __syncthreads();
      for (int s = kThreads / 2; s > 0; s /= 2) {
        if (threadIdx.x < s) partial[threadIdx.x] += partial[threadIdx.x + s];
        __syncthreads();
      }
      if (threadIdx.x == 0) g.dweight[a] = partial[0];
      __syncthreads();
    }
  }
}

unsigned blocks_for(int64_t n) { return static_cast<unsigned>(n < kMaxBlocks ? n : kMaxBlocks); }

}  // namespace

void combine(const CombineArgs<float>& g, Context& ctx) {
  const auto stream = static_cast<cudaStream_t>(ctx.stream());
  combine_kernel<<<blocks_for(g.T_), kThreads, 0, stream>>>(g);
  check_status(cudaGetLastError(), "combine (cuda)");
}

void combine_backward(const CombineBackwardArgs<float>& g, Context& ctx) {
  const auto stream = static_cast<cudaStream_t>(ctx.stream());
  combine_backward_kernel<<<blocks_for(g.N), kThreads, 0, stream>>>(g);
  check_status(cudaGetLastError(), "combine_backward (cuda)");
}

}  // namespace moe::kernels::cuda
