// CUDA permute: a stable counting sort in three kernels over chunks of kChunk assignments.
//   count: per chunk and expert, the kept assignments (shared-memory histogram)   counts (C, E)
//   scan:  offsets, and each chunk's first slot per expert (in place)             base (C, E)
//   place: each assignment's rank among the earlier kept ones of its expert in its chunk
// All integer: the result is exact and independent of scheduling. Expert ids outside [0, E) are
// flagged on the device; the host reads the flag (one synchronisation) and throws moe::Error.
#include <cuda_runtime.h>

#include "kernels/cuda/cuda.h"
#include "moe/core/error.h"

namespace moe::kernels::cuda {

namespace {

constexpr int kChunk = 256;  // assignments per chunk = threads per block

__device__ bool is_kept(const PermuteArgs& p, int64_t a) { return p.kept == nullptr || p.kept[a] != 0; }

// counts (C, E); bad: the smallest index of an out-of-range expert id (initialised to N).
__global__ void count_kernel(PermuteArgs p, int32_t* counts, unsigned long long* bad) {
  extern __shared__ int32_t hist[];  // (E)
  for (int64_t e = threadIdx.x; e < p.E; e += blockDim.x) hist[e] = 0;
  __syncthreads();
  const int64_t a = blockIdx.x * int64_t{kChunk} + threadIdx.x;
  if (a < p.N) {
    const int32_t e = p.expert[a];
    if (e < 0 || e >= p.E) {
      atomicMin(bad, static_cast<unsigned long long>(a));
    } else if (is_kept(p, a)) {
      atomicAdd(&hist[e], 1);
    }
  }
  __syncthreads();
  for (int64_t e = threadIdx.x; e < p.E; e += blockDim.x) counts[blockIdx.x * p.E + e] = hist[e];
}

// One block: per expert a running sum over chunks, then offsets by a serial scan over experts.
__global__ void scan_kernel(PermuteArgs p, int32_t* counts, int64_t chunks) {
  for (int64_t e = threadIdx.x; e < p.E; e += blockDim.x) {
    int32_t sum = 0;
    for (int64_t c = 0; c < chunks; ++c) {
      const int32_t n = counts[c * p.E + e];
      counts[c * p.E + e] = sum;  // slots before chunk c, relative to the expert's first
      sum += n;
    }
    p.offsets[e + 1] = sum;  // count for now
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    p.offsets[0] = 0;
    for (int64_t e = 0; e < p.E; ++e) p.offsets[e + 1] += p.offsets[e];
  }
  __syncthreads();
  for (int64_t e = threadIdx.x; e < p.E; e += blockDim.x) {
    for (int64_t c = 0; c < chunks; ++c) counts[c * p.E + e] += p.offsets[e];
  }
}

__global__ void place_kernel(PermuteArgs p, const int32_t* base) {
  __shared__ int32_t chunk_expert[kChunk];  // expert of each assignment in the chunk, -1 if not placed
  const int64_t a = blockIdx.x * int64_t{kChunk} + threadIdx.x;
  int32_t e = -1;
  if (a < p.N && is_kept(p, a)) {
    e = p.expert[a];
    if (e < 0 || e >= p.E) e = -1;
  }
  chunk_expert[threadIdx.x] = e;
  __syncthreads();
  if (a >= p.N) return;
  if (e < 0) {
    p.pos[a] = -1;
    return;
  }
  int32_t rank = 0;
  for (int i = 0; i < static_cast<int>(threadIdx.x); ++i) rank += chunk_expert[i] == e;
  const int32_t slot = base[blockIdx.x * p.E + e] + rank;
  p.perm[slot] = static_cast<int32_t>(a);
  p.pos[a] = slot;
}

}  // namespace

void permute(const PermuteArgs& p) {
  const int64_t chunks = (p.N + kChunk - 1) / kChunk;
  const size_t hist_bytes = static_cast<size_t>(p.E) * sizeof(int32_t);
  MOE_CHECK(hist_bytes <= 48 * 1024, "permute (cuda): E = ", p.E, " exceeds the shared-memory histogram");
  if (chunks == 0) {  // no assignments: offsets are all zero
    check_status(cudaMemset(p.offsets, 0, static_cast<size_t>(p.E + 1) * sizeof(int32_t)), "permute (cuda)");
    return;
  }
  int32_t* counts = nullptr;          // (chunks, E)
  unsigned long long* bad = nullptr;  // (1)
  check_status(
      cudaMallocAsync(reinterpret_cast<void**>(&counts), static_cast<size_t>(chunks) * hist_bytes, 0),
      "permute (cuda)");
  check_status(cudaMallocAsync(reinterpret_cast<void**>(&bad), sizeof(*bad), 0), "permute (cuda)");
  const unsigned long long none = static_cast<unsigned long long>(p.N);
  check_status(cudaMemcpyAsync(bad, &none, sizeof(none), cudaMemcpyHostToDevice, 0), "permute (cuda)");
  count_kernel<<<static_cast<unsigned>(chunks), kChunk, hist_bytes>>>(p, counts, bad);
  scan_kernel<<<1, 1024>>>(p, counts, chunks);
  place_kernel<<<static_cast<unsigned>(chunks), kChunk>>>(p, counts);
  unsigned long long first_bad = none;
  const int status = cudaMemcpy(&first_bad, bad, sizeof(first_bad), cudaMemcpyDeviceToHost);
  (void)cudaFreeAsync(counts, 0);
  (void)cudaFreeAsync(bad, 0);
  check_status(status, "permute (cuda)");
  if (first_bad < none) {
    int32_t e = 0;
    check_status(cudaMemcpy(&e, p.expert + first_bad, sizeof(e), cudaMemcpyDeviceToHost), "permute (cuda)");
    throw Error(cat("permute: expert[", first_bad, "] = ", e, " is outside [0, E = ", p.E, ")"));
  }
}

}  // namespace moe::kernels::cuda
