// The blocked GEMM engine: packing, the register-tiled micro-kernel and one output tile.
// See gemm_engine.h for the blocking scheme and why it is deterministic.
#include "kernels/cpu/gemm_engine.h"

#include <atomic>
#include <cstdint>
#include <vector>

#include "moe/core/error.h"

#define MOE_INLINE inline __attribute__((always_inline))

namespace moe::kernels::cpu {

namespace {

// Packs A[i0 : i0 + mc, k0 : k0 + kc] into panels of MR rows: dst[panel][k][i], zero padded.
template <typename T, int MR>
MOE_INLINE void pack_a(const Operand<T>& A, int64_t i0, int64_t mc, int64_t k0, int64_t kc, T* dst) {
  for (int64_t ip = 0; ip < mc; ip += MR) {
    T* panel = dst + ip * kc;  // (kc, MR)
    const int64_t rows = mc - ip < MR ? mc - ip : MR;
    for (int ii = 0; ii < MR; ++ii) {
      if (ii >= rows) {
        for (int64_t k = 0; k < kc; ++k) panel[k * MR + ii] = T(0);
        continue;
      }
      const int64_t r = i0 + ip + ii;
      const T* src = A.base + (A.map ? A.map[r] : r) * A.rs + k0 * A.cs;
      if (A.cs == 1) {
        for (int64_t k = 0; k < kc; ++k) panel[k * MR + ii] = src[k];
      } else {
        for (int64_t k = 0; k < kc; ++k) panel[k * MR + ii] = src[k * A.cs];
      }
    }
  }
}

// Packs B[k0 : k0 + kc, j0 : j0 + nc] into panels of NR columns: dst[panel][k][j], zero padded.
template <typename T, int NR>
MOE_INLINE void pack_b(const Operand<T>& B, int64_t k0, int64_t kc, int64_t j0, int64_t nc, T* dst) {
  for (int64_t jp = 0; jp < nc; jp += NR) {
    T* panel = dst + jp * kc;  // (kc, NR)
    const int64_t cols = nc - jp < NR ? nc - jp : NR;
    if (B.cs == 1 && cols == NR) {  // rows of B are contiguous: copy NR at a time
      for (int64_t k = 0; k < kc; ++k) {
        const int64_t r = k0 + k;
        const T* src = B.base + (B.map ? B.map[r] : r) * B.rs + (j0 + jp);
        for (int jj = 0; jj < NR; ++jj) panel[k * NR + jj] = src[jj];
      }
      continue;
    }
    for (int jj = 0; jj < NR; ++jj) {
      if (jj >= cols) {
        for (int64_t k = 0; k < kc; ++k) panel[k * NR + jj] = T(0);
        continue;
      }
      const T* col = B.base + (j0 + jp + jj) * B.cs;
      for (int64_t k = 0; k < kc; ++k) {
        const int64_t r = k0 + k;
        panel[k * NR + jj] = col[(B.map ? B.map[r] : r) * B.rs];
      }
    }
  }
}

// out (MR, NR) = a (kc, MR)^T · b (kc, NR), summed over k in order. The accumulators are MR x NV
// vectors of VB bytes (GCC vector extensions, so the tile stays in registers and the code is the
// same for every instruction set; the target attribute of the caller decides the instructions).
template <typename T, int MR, int NR, int VB>
MOE_INLINE void micro_kernel(int64_t kc, const T* __restrict a, const T* __restrict b, T* __restrict out) {
  typedef T vec __attribute__((vector_size(VB)));
  constexpr int kLanes = VB / static_cast<int>(sizeof(T));
  constexpr int NV = NR / kLanes;
  static_assert(NV * kLanes == NR, "NR must be a multiple of the vector length");
  vec c[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) c[i][v] = vec{};
  }
  for (int64_t k = 0; k < kc; ++k) {
    vec bk[NV];
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) __builtin_memcpy(&bk[v], b + k * NR + v * kLanes, sizeof(vec));
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const T ai = a[k * MR + i];
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) c[i][v] += ai * bk[v];
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) __builtin_memcpy(out + i * NR + v * kLanes, &c[i][v], sizeof(vec));
  }
}

template <typename T>
T* scratch(std::vector<T>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
  return v.data();
}

template <typename T, int MR, int NR, int VB>
MOE_INLINE void tile_impl(const GemmProblem<T>& p, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
  static_assert(kMC % MR == 0 && kNC % NR == 0, "tile sizes must be multiples of the register tile");
  const int64_t mc = i1 - i0, nc = j1 - j0;
  if (p.K == 0) {  // C = beta * C (zero when beta == 0)
    for (int64_t i = i0; i < i1; ++i) {
      T* c = p.C + i * p.ldc;
      for (int64_t j = j0; j < j1; ++j) c[j] = p.beta == T(0) ? T(0) : p.beta * c[j];
    }
    return;
  }
  thread_local std::vector<T> a_buf, b_buf;
  const int64_t mc_pad = (mc + MR - 1) / MR * MR, nc_pad = (nc + NR - 1) / NR * NR;
  T* ap = scratch(a_buf, mc_pad * kKC);  // (mc_pad / MR, kc, MR)
  T* bp = scratch(b_buf, nc_pad * kKC);  // (nc_pad / NR, kc, NR)
  alignas(64) T out[MR * NR];            // (MR, NR)
  for (int64_t k0 = 0; k0 < p.K; k0 += kKC) {
    const int64_t kc = p.K - k0 < kKC ? p.K - k0 : kKC;
    const bool first = k0 == 0;
    pack_b<T, NR>(p.B, k0, kc, j0, nc, bp);
    pack_a<T, MR>(p.A, i0, mc, k0, kc, ap);
    for (int64_t jp = 0; jp < nc; jp += NR) {
      const int64_t cols = nc - jp < NR ? nc - jp : NR;
      for (int64_t ip = 0; ip < mc; ip += MR) {
        const int64_t rows = mc - ip < MR ? mc - ip : MR;
        micro_kernel<T, MR, NR, VB>(kc, ap + ip * kc, bp + jp * kc, out);
        for (int64_t i = 0; i < rows; ++i) {
          T* c = p.C + (i0 + ip + i) * p.ldc + j0 + jp;  // (cols)
          const T* o = out + i * NR;
          if (!first) {
            for (int64_t j = 0; j < cols; ++j) c[j] += p.alpha * o[j];
          } else if (p.beta == T(0)) {
            for (int64_t j = 0; j < cols; ++j) c[j] = p.alpha * o[j];
          } else {
            for (int64_t j = 0; j < cols; ++j) c[j] = p.alpha * o[j] + p.beta * c[j];
          }
        }
      }
    }
  }
}

// ---- one entry per instruction set; everything above is inlined into each ----

template <typename T>
void tile_generic(const GemmProblem<T>& p, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
  // SSE2: 16 registers of 16 bytes.
  tile_impl<T, 4, 32 / static_cast<int>(sizeof(T)), 16>(p, i0, i1, j0, j1);
}

template <typename T>
__attribute__((target("avx2,fma"))) void tile_avx2(const GemmProblem<T>& p, int64_t i0, int64_t i1,
                                                   int64_t j0, int64_t j1) {
  // 16 registers of 32 bytes: 6 x 2 accumulators.
  tile_impl<T, 6, 64 / static_cast<int>(sizeof(T)), 32>(p, i0, i1, j0, j1);
}

template <typename T>
__attribute__((target("avx512f"))) void tile_avx512(const GemmProblem<T>& p, int64_t i0, int64_t i1,
                                                    int64_t j0, int64_t j1) {
  // 32 registers of 64 bytes: 6 x 2 accumulators.
  tile_impl<T, 6, 128 / static_cast<int>(sizeof(T)), 64>(p, i0, i1, j0, j1);
}

enum Isa : int { kGeneric = 0, kAvx2 = 1, kAvx512 = 2 };
const char* const kIsaNames[] = {"generic", "avx2", "avx512"};

bool supported(int isa) {
  __builtin_cpu_init();
  switch (isa) {
    case kGeneric:
      return true;
    case kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case kAvx512:
      return __builtin_cpu_supports("avx512f");
  }
  return false;
}

int best_isa() {
  for (int isa = kAvx512; isa > kGeneric; --isa) {
    if (supported(isa)) return isa;
  }
  return kGeneric;
}

std::atomic<int> g_isa{best_isa()};

int isa_index(const std::string& name) {
  for (int i = 0; i < 3; ++i) {
    if (name == kIsaNames[i]) return i;
  }
  return -1;
}

}  // namespace

const char* gemm_isa() { return kIsaNames[g_isa.load()]; }

bool gemm_isa_supported(const std::string& name) {
  const int i = isa_index(name);
  return i >= 0 && supported(i);
}

void set_gemm_isa(const std::string& name) {
  const int i = isa_index(name);
  MOE_CHECK(i >= 0, "gemm: unknown instruction set '", name, "' (expected generic, avx2 or avx512)");
  MOE_CHECK(supported(i), "gemm: instruction set '", name, "' is not supported by this CPU");
  g_isa.store(i);
}

template <typename T>
void gemm_tile(const GemmProblem<T>& p, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
  switch (g_isa.load(std::memory_order_relaxed)) {
    case kAvx512:
      return tile_avx512(p, i0, i1, j0, j1);
    case kAvx2:
      return tile_avx2(p, i0, i1, j0, j1);
    default:
      return tile_generic(p, i0, i1, j0, j1);
  }
}

template void gemm_tile<float>(const GemmProblem<float>&, int64_t, int64_t, int64_t, int64_t);
template void gemm_tile<double>(const GemmProblem<double>&, int64_t, int64_t, int64_t, int64_t);

}  // namespace moe::kernels::cpu
