// CUDA permute: a stable counting sort in three kernels over chunks of kChunk assignments.
//   count: per chunk and expert, the kept assignments (shared-memory histogram)   counts (C, E)
//   scan:  offsets, and each chunk's first slot per expert (in place)             base (C, E)
//   place: each assignment's rank among the earlier kept ones of its expert in its chunk
// All integer: the result is exact and independent of scheduling. Expert ids outside [0, E) are
// flagged on the device and recorded in the context's error record: no host synchronisation here;
// Context::synchronize throws moe::Error naming the first bad id (the default context does so at once).
// The tile metadata (tile_m > 0) is a fourth kernel over the offsets, in one block. Not run on a GPU
// yet (compiled only): the harness cases cover it where a GPU is present.
#include <cuda_runtime.h>

#include "kernels/cuda/cuda.h"
#include "moe/core/error.h"

namespace moe::kernels::cuda {

namespace {

constexpr int kChunk = 256;  // assignments per chunk = threads per block

__device__ bool is_kept(const PermuteArgs& p, int64_t a) { return p.kept == nullptr || p.kept[a] != 0; }

// counts (C, E); bad: the smallest index of an out-of-range expert id (initialised to all ones).
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

// One block: each expert's first tile (a serial scan by thread 0 into start (E + 1), in tiles), then
// the tile list and tile_offsets with the experts spread over the threads.
__global__ void tile_kernel(PermuteArgs p, int32_t* start) {
  const int64_t m = p.tile_m;
  if (threadIdx.x == 0) {
    int32_t tile = 0;
    start[0] = 0;
    for (int64_t e = 0; e < p.E; ++e) {
      tile += static_cast<int32_t>((p.offsets[e + 1] - p.offsets[e] + m - 1) / m);
      start[e + 1] = tile;
    }
  }
  __syncthreads();
  for (int64_t e = threadIdx.x; e <= p.E; e += blockDim.x) {
    if (p.tile_offsets) p.tile_offsets[e] = static_cast<int32_t>(start[e] * m);
    if (e == p.E) continue;
    for (int32_t i = start[e]; i < start[e + 1]; ++i) {
      if (p.tile_expert) p.tile_expert[i] = static_cast<int32_t>(e);
      if (p.tile_row) p.tile_row[i] = static_cast<int32_t>(p.offsets[e] + (i - start[e]) * m);
    }
  }
}

// After the three kernels: when an expert id was out of range (bad < N), the first one goes into the
// context's error record (unless an earlier op already recorded one), read at Context::synchronize.
__global__ void record_kernel(PermuteArgs p, const unsigned long long* bad, DeviceError* err) {
  const unsigned long long a = *bad;
  if (a >= static_cast<unsigned long long>(p.N) || err->code != 0) return;
  err->code = 1;
  err->index = static_cast<int64_t>(a);
  err->value = p.expert[a];
  err->bound = p.E;
}

}  // namespace

void permute(const PermuteArgs& p, Context& ctx) {
  const auto stream = static_cast<cudaStream_t>(ctx.stream());
  const int64_t chunks = (p.N + kChunk - 1) / kChunk;
  const size_t hist_bytes = static_cast<size_t>(p.E) * sizeof(int32_t);
  MOE_CHECK(hist_bytes <= 48 * 1024, "permute (cuda): E = ", p.E, " exceeds the shared-memory histogram");
  const size_t offsets_bytes = static_cast<size_t>(p.E + 1) * sizeof(int32_t);
  if (chunks == 0) {  // no assignments: offsets (and tile offsets) are all zero, there are no tiles
    check_status(cudaMemsetAsync(p.offsets, 0, offsets_bytes, stream), "permute (cuda)");
    if (p.tile_m > 0 && p.tile_offsets)
      check_status(cudaMemsetAsync(p.tile_offsets, 0, offsets_bytes, stream), "permute (cuda)");
    return;
  }
  // Scratch from the context's workspace (no per-call allocation): the first-bad-index flag, then
  // counts (chunks, E), then each expert's first tile (E + 1).
  constexpr size_t kFlagBytes = 256;  // keeps counts aligned
  const size_t counts_bytes = static_cast<size_t>(chunks) * hist_bytes;
  auto* scratch =
      static_cast<unsigned char*>(ctx.workspace().reserve(kFlagBytes + counts_bytes + offsets_bytes));
  auto* bad = reinterpret_cast<unsigned long long*>(scratch);                          // (1)
  auto* counts = reinterpret_cast<int32_t*>(scratch + kFlagBytes);                     // (chunks, E)
  auto* tile_start = reinterpret_cast<int32_t*>(scratch + kFlagBytes + counts_bytes);  // (E + 1)
  DeviceError* err = ctx.device_error();
  // bad starts as all ones (no bad id; atomicMin lowers it): a memset, no copy from the host.
  check_status(cudaMemsetAsync(bad, 0xff, sizeof(*bad), stream), "permute (cuda)");
  count_kernel<<<static_cast<unsigned>(chunks), kChunk, hist_bytes, stream>>>(p, counts, bad);
  scan_kernel<<<1, 1024, 0, stream>>>(p, counts, chunks);
  place_kernel<<<static_cast<unsigned>(chunks), kChunk, 0, stream>>>(p, counts);
  if (p.tile_m > 0 && (p.tile_offsets || p.tile_expert || p.tile_row))
    tile_kernel<<<1, 1024, 0, stream>>>(p, tile_start);
  record_kernel<<<1, 1, 0, stream>>>(p, bad, err);
  check_status(cudaGetLastError(), "permute (cuda)");
}

}  // namespace moe::kernels::cuda
