// CUDA gemm, grouped_gemm and grouped_gemm_wgrad (float): simple shared-memory tiled kernels,
// one output element per thread, summed over K in order (deterministic).
//   gemm:     grid (N tiles, M tiles)
//   grouped:  grid (N tiles, G) where the G blocks of a column walk all (expert, row tile) pairs;
//             row counts stay on the device, the host needs no synchronisation
//   wgrad:    grid (K tiles, N tiles, E); each block sums over its expert's rows
#include <cuda_runtime.h>

#include "kernels/cuda/cuda.h"

namespace moe::kernels::cuda {

namespace {

constexpr int kTile = 16;

// Element (r, c) = base[row(r) * rs + c * cs], row(r) = map ? map[r] : r.
struct Operand {
  const float* base;
  int64_t rs, cs;
  const int32_t* map;
  __device__ float at(int64_t r, int64_t c) const { return base[(map ? map[r] : r) * rs + c * cs]; }
};

struct Problem {  // C (M, N) = alpha * A (M, K) · B (K, N) + beta * C
  int64_t M, N, K;
  Operand A, B;
  float* C;
  int64_t ldc;
  float alpha, beta;
};

// The kTile x kTile output tile at (row0, col0); called by all threads of a block.
__device__ void tile(const Problem& p, int64_t row0, int64_t col0) {
  __shared__ float As[kTile][kTile + 1], Bs[kTile][kTile + 1];
  const int ty = threadIdx.y, tx = threadIdx.x;
  const int64_t r = row0 + ty, c = col0 + tx;
  float acc = 0;
  for (int64_t k0 = 0; k0 < p.K; k0 += kTile) {
    As[ty][tx] = r < p.M && k0 + tx < p.K ? p.A.at(r, k0 + tx) : 0.0f;
    Bs[ty][tx] = k0 + ty < p.K && c < p.N ? p.B.at(k0 + ty, c) : 0.0f;
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kTile; ++k) acc += As[ty][k] * Bs[k][tx];
    __syncthreads();
  }
  if (r < p.M && c < p.N) {
    float* out = p.C + r * p.ldc + c;
    *out = p.beta == 0.0f ? p.alpha * acc : p.alpha * acc + p.beta * *out;
  }
}

__global__ void gemm_kernel(Problem p) {
  for (int64_t row0 = int64_t{blockIdx.y} * kTile; row0 < p.M; row0 += int64_t{gridDim.y} * kTile) {
    tile(p, row0, int64_t{blockIdx.x} * kTile);
  }
}

__global__ void grouped_kernel(GroupedGemmArgs<float> g) {
  // Row tiles in expert order; block y takes tiles y, y + gridDim.y, ... (uniform per block).
  for (int64_t t = blockIdx.y;; t += gridDim.y) {
    int64_t e = 0, first = 0;  // expert of tile t and its first tile
    for (; e < g.E; ++e) {
      const int64_t tiles = (g.offsets[e + 1] - g.offsets[e] + kTile - 1) / kTile;
      if (t < first + tiles) break;
      first += tiles;
    }
    if (e == g.E) return;
    const int64_t off = g.offsets[e];
    const float* w = g.W + e * g.N * g.K;
    Problem p;
    p.M = g.offsets[e + 1] - off;
    p.N = g.N;
    p.K = g.K;
    p.A = g.gather ? Operand{g.A, g.lda, 1, g.gather + off} : Operand{g.A + off * g.lda, g.lda, 1, nullptr};
    p.B = g.trans_w ? Operand{w, g.N, 1, nullptr} : Operand{w, 1, g.K, nullptr};
    p.C = g.C + off * g.ldc;
    p.ldc = g.ldc;
    p.alpha = 1.0f;
    p.beta = g.beta;
    tile(p, (t - first) * kTile, int64_t{blockIdx.x} * kTile);
  }
}

__global__ void wgrad_kernel(GroupedWgradArgs<float> g) {
  const int64_t e = blockIdx.z, off = g.offsets[e];
  Problem p;
  p.M = g.N;
  p.N = g.K;
  p.K = g.offsets[e + 1] - off;
  p.A = Operand{g.dC + off * g.ldc, 1, g.ldc, nullptr};  // dC_e^T
  p.B = g.gather ? Operand{g.A, g.lda, 1, g.gather + off} : Operand{g.A + off * g.lda, g.lda, 1, nullptr};
  p.C = g.dW + e * g.N * g.K;
  p.ldc = g.K;
  p.alpha = 1.0f;
  p.beta = g.beta;
  tile(p, int64_t{blockIdx.y} * kTile, int64_t{blockIdx.x} * kTile);
}

unsigned tiles(int64_t n) { return static_cast<unsigned>((n + kTile - 1) / kTile); }

// Blocks per column for the grouped kernel: enough to fill the GPU, fixed per device.
unsigned grouped_blocks() {
  static const unsigned blocks = [] {
    int sms = 0;
    if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0) != cudaSuccess || sms <= 0) sms = 80;
    return static_cast<unsigned>(sms * 8);
  }();
  return blocks;
}

}  // namespace

void gemm(const GemmArgs<float>& g, Context& ctx) {
  const auto stream = static_cast<cudaStream_t>(ctx.stream());
  Problem p;
  p.M = g.M;
  p.N = g.N;
  p.K = g.K;
  p.A = g.trans_a ? Operand{g.A, 1, g.lda, nullptr} : Operand{g.A, g.lda, 1, nullptr};
  p.B = g.trans_b ? Operand{g.B, 1, g.ldb, nullptr} : Operand{g.B, g.ldb, 1, nullptr};
  p.C = g.C;
  p.ldc = g.ldc;
  p.alpha = g.alpha;
  p.beta = g.beta;
  const unsigned row_blocks = tiles(g.M) < 65535u ? tiles(g.M) : 65535u;  // the kernel loops over the rest
  gemm_kernel<<<dim3(tiles(g.N), row_blocks), dim3(kTile, kTile), 0, stream>>>(p);
  check_status(cudaGetLastError(), "gemm (cuda)");
}

void grouped_gemm(const GroupedGemmArgs<float>& g, Context& ctx) {
  const auto stream = static_cast<cudaStream_t>(ctx.stream());
  if (g.N == 0) return;
  grouped_kernel<<<dim3(tiles(g.N), grouped_blocks()), dim3(kTile, kTile), 0, stream>>>(g);
  check_status(cudaGetLastError(), "grouped_gemm (cuda)");
}

void grouped_gemm_wgrad(const GroupedWgradArgs<float>& g, Context& ctx) {
  const auto stream = static_cast<cudaStream_t>(ctx.stream());
  wgrad_kernel<<<dim3(tiles(g.K), tiles(g.N), static_cast<unsigned>(g.E)), dim3(kTile, kTile), 0, stream>>>(
      g);
  check_status(cudaGetLastError(), "grouped_gemm_wgrad (cuda)");
}

}  // namespace moe::kernels::cuda
