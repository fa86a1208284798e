// CPU bf16-weight grouped GEMM (moe/kernels/ops_bf16.h): fp32 activations, bf16 weights, fp32 sums.
//
// Blocking (like the fp32 engine in gemm_engine.h, with its own tile sizes): the output of each
// expert is split into tiles of at most kMC x kNC, listed as (expert, row tile, column tile) and
// handed to moe::parallel_items; one thread computes a whole tile:
//   for each K block of kKC (even):  pack W (kKC x kNC) and A (kMC x kKC) as bf16 pairs along K,
//                                    run the MR x NR register-tiled micro-kernel per panel pair
// Packed layout. A 32-bit word holds the bf16 pair (k, k + 1) of one row or column, k even, the
// element k in the low half (an odd K is padded with a zero in the high half of the last word):
//   A: row i of the tile at ap + i * kp, kp = ceil(kc / 2) words (the micro-kernel broadcasts a word)
//   W: panels of NR columns, (kp, NR) words each (the micro-kernel loads NR consecutive words)
// This is the operand layout of vdpbf16ps, which multiplies the two pairs of a word and adds both
// products to an fp32 lane. The fallbacks read the same layout and split each word into two fp32
// values (bf16 -> fp32 is a 16-bit shift), then use FMA. A is rounded to bf16 while it is packed,
// gathering the token rows at the same time, so no converted or permuted copy of A is made.
//
// Determinism: the micro-kernel loads the C tile into its accumulators (after the first K block, or
// when beta != 0) and adds the K pairs in order, so every element is summed in the same order for
// any thread count and any tile split.
#include <immintrin.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/cpu/act_inline.h"
#include "kernels/cpu/isa.h"
#include "moe/core/error.h"
#include "moe/core/parallel.h"
#include "moe/kernels/ops_bf16.h"

#define MOE_INLINE inline __attribute__((always_inline))

namespace moe::kernels::cpu {

namespace {

// Tile sizes for every instruction set: kMC is a multiple of every MR, kNC of every NR, kKC even.
constexpr int64_t kMC = 264;
constexpr int64_t kNC = 512;
constexpr int64_t kKC = 256;
static_assert(kKC % 2 == 0, "a K block must hold whole bf16 pairs");

// One expert's GEMM: C (M, N) = beta * C + bf16(A[row(i), :]) (M, K) · op(W) (K, N).
struct Problem {
  int64_t M = 0, N = 0, K = 0;
  const float* A = nullptr;  // row(i) = map ? map[i] : i, row stride lda
  int64_t lda = 0;
  const int32_t* map = nullptr;
  const uint16_t* W = nullptr;  // (N, K), or (K, N) when trans_w
  bool trans_w = false;
  float* C = nullptr;  // (M, N), row stride ldc; with scale or out_row, rows out_row[i] (or i)
  int64_t ldc = 0;
  float beta = 0;
  const float* scale = nullptr;      // (M) or null
  const int32_t* out_row = nullptr;  // (M) or null
  bool pre = false;                  // A rows are pre-activations: A = act(row), made while packing
  Activation act = Activation::SwiGLU;
};

// f32 -> bf16 bits, round to nearest even, NaN stays a quiet NaN: moe::f32_to_bf16 without the branch,
// so that the packing loops vectorize.
MOE_INLINE uint32_t round_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const uint32_t nan = (u >> 16) | 0x40u;
  return (u & 0x7fffffffu) > 0x7f800000u ? nan : rounded;
}

MOE_INLINE uint32_t load_pair(const uint16_t* p) {  // p[0] | p[1] << 16
  uint32_t w;
  std::memcpy(&w, p, 4);
  return w;
}

// Packs rows [i0, i0 + mc) of A, columns [k0, k0 + kc), as bf16 pairs: row i at dst + i * kp;
// rows mc .. mc_pad - 1 are zero.
MOE_INLINE void pack_a(const Problem& p, int64_t i0, int64_t mc, int64_t mc_pad, int64_t k0, int64_t kc,
                       int64_t kp, uint32_t* __restrict dst) {
  const int64_t pairs = kc / 2;
  for (int64_t i = 0; i < mc_pad; ++i) {
    uint32_t* __restrict d = dst + i * kp;
    if (i >= mc) {
      for (int64_t q = 0; q < kp; ++q) d[q] = 0;
      continue;
    }
    const int64_t r = i0 + i;
    const float* __restrict src = p.A + (p.map ? p.map[r] : r) * p.lda + k0;
    float h[kKC];
    if (p.pre) {  // [G | U] (or U) -> h, then rounded like any A row
      act_row(p.act, src, p.K, kc, 1.0f, h);
      src = h;
    }
    for (int64_t q = 0; q < pairs; ++q) d[q] = round_bf16(src[2 * q]) | (round_bf16(src[2 * q + 1]) << 16);
    if (kc & 1) d[pairs] = round_bf16(src[kc - 1]);
  }
}

// Packs op(W)[k0 : k0 + kc, j0 : j0 + nc] in panels of NR columns, (kp, NR) words each, zero padded.
template <int NR>
MOE_INLINE void pack_w(const Problem& p, int64_t k0, int64_t kc, int64_t kp, int64_t j0, int64_t nc,
                       uint32_t* __restrict dst) {
  const int64_t pairs = kc / 2;
  for (int64_t jp = 0; jp < nc; jp += NR) {
    uint32_t* __restrict panel = dst + jp * kp;  // (kp, NR)
    const int64_t cols = nc - jp < NR ? nc - jp : NR;
    if (p.trans_w) {  // W (K, N): rows k and k + 1 interleaved
      for (int64_t q = 0; q < kp; ++q) {
        const uint16_t* __restrict r0 = p.W + (k0 + 2 * q) * p.N + j0 + jp;
        uint32_t* __restrict d = panel + q * NR;
        if (q < pairs) {
          const uint16_t* __restrict r1 = r0 + p.N;
          for (int64_t jj = 0; jj < cols; ++jj) d[jj] = uint32_t{r0[jj]} | (uint32_t{r1[jj]} << 16);
        } else {
          for (int64_t jj = 0; jj < cols; ++jj) d[jj] = r0[jj];
        }
        for (int64_t jj = cols; jj < NR; ++jj) d[jj] = 0;
      }
      continue;
    }
    // W (N, K): the pair (k, k + 1) of column j is one word of row j; a transpose of words.
    for (int64_t jj = 0; jj < NR; ++jj) {
      if (jj >= cols) {
        for (int64_t q = 0; q < kp; ++q) panel[q * NR + jj] = 0;
        continue;
      }
      const uint16_t* __restrict src = p.W + (j0 + jp + jj) * p.K + k0;
      for (int64_t q = 0; q < pairs; ++q) panel[q * NR + jj] = load_pair(src + 2 * q);
      if (kc & 1) panel[pairs * NR + jj] = src[kc - 1];
    }
  }
}

// pack_w for W (N, K) with AVX-512: 16 columns x 16 pairs at a time, loaded as 16 rows of words and
// transposed in registers (four vpermt2d stages, each swapping one bit of the row index with the same
// bit of the lane index); the rest of the panel (a column or pair remainder, the odd last k, zero
// padding) is packed word by word.
template <int NR>
__attribute__((target("avx512f"))) void pack_w_nk_avx512(const Problem& p, int64_t k0, int64_t kc, int64_t kp,
                                                         int64_t j0, int64_t nc, uint32_t* __restrict dst) {
  static_assert(NR % 16 == 0, "NR must be a multiple of 16");
  const int64_t pairs = kc / 2, qv = pairs / 16 * 16;  // pairs [0, qv) go through the transpose
  __m512i idx_lo[4], idx_hi[4];
  for (int st = 0; st < 4; ++st) {
    const int s = 8 >> st;
    alignas(64) int32_t lo[16], hi[16];
    for (int l = 0; l < 16; ++l) {
      lo[l] = (l & s) == 0 ? l : 16 + (l - s);
      hi[l] = (l & s) == 0 ? l + s : 16 + l;
    }
    idx_lo[st] = _mm512_load_si512(lo);
    idx_hi[st] = _mm512_load_si512(hi);
  }
  for (int64_t jp = 0; jp < nc; jp += NR) {
    uint32_t* __restrict panel = dst + jp * kp;  // (kp, NR)
    const int64_t cols = nc - jp < NR ? nc - jp : NR, cols_v = cols / 16 * 16;
    // Each column's run of kc values lies in its own page, which the hardware prefetcher picks up
    // late: request the next panel's runs while this one is packed (decoding is bound by these reads).
    for (int64_t jn = jp + NR; jn < jp + 2 * NR && jn < nc; ++jn) {
      const char* run = reinterpret_cast<const char*>(p.W + (j0 + jn) * p.K + k0);
      for (int64_t off = 0; off < kc * 2; off += 64) __builtin_prefetch(run + off, 0, 2);  // to L2
    }
    for (int64_t jj = 0; jj < NR; ++jj) {
      if (jj >= cols) {
        for (int64_t q = 0; q < kp; ++q) panel[q * NR + jj] = 0;
        continue;
      }
      const uint16_t* __restrict src = p.W + (j0 + jp + jj) * p.K + k0;
      for (int64_t q = jj < cols_v ? qv : 0; q < pairs; ++q) panel[q * NR + jj] = load_pair(src + 2 * q);
      if (kc & 1) panel[pairs * NR + jj] = src[kc - 1];
    }
    for (int64_t jj0 = 0; jj0 < cols_v; jj0 += 16) {
      const uint16_t* src = p.W + (j0 + jp + jj0) * p.K + k0;
      for (int64_t q0 = 0; q0 < qv; q0 += 16) {
        __m512i r[16];
#pragma GCC unroll 16
        for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_si512(src + i * p.K + 2 * q0);  // column jj0 + i
#pragma GCC unroll 4
        for (int st = 0; st < 4; ++st) {
          const int s = 8 >> st;
#pragma GCC unroll 16
          for (int i = 0; i < 16; ++i) {
            if (i & s) continue;
            const __m512i a = r[i], b = r[i + s];
            r[i] = _mm512_permutex2var_epi32(a, idx_lo[st], b);
            r[i + s] = _mm512_permutex2var_epi32(a, idx_hi[st], b);
          }
        }
#pragma GCC unroll 16
        for (int i = 0; i < 16; ++i) _mm512_storeu_si512(panel + (q0 + i) * NR + jj0, r[i]);  // pair q0 + i
      }
    }
  }
}

// ---- micro-kernels: c (MR, NR) (+)= a (MR rows of kp words) · b (kp, NR words) ----
// load: start from c (else from zero). c has row stride ldc. The ISA-specific ones are called, not
// inlined, from the tile (GCC does not inline a target-specific function into the generic template
// body before that is inlined into its target-specific entry); one call runs kp pairs, so the cost
// of the call does not show.

MOE_INLINE float lo_f32(uint32_t w) {  // the bf16 in the low half, as f32
  const uint32_t u = w << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
MOE_INLINE float hi_f32(uint32_t w) {
  const uint32_t u = w & 0xffff0000u;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Portable: plain loops (the compiler vectorizes the column loop with what the target has).
struct KernGeneric {
  static constexpr int MR = 4, NR = 16;
  static constexpr bool kSimdPack = false;
  static MOE_INLINE void run(int64_t kp, const uint32_t* __restrict a, const uint32_t* __restrict b,
                             float* __restrict c, int64_t ldc, bool load) {
    float acc[MR][NR];
    for (int i = 0; i < MR; ++i) {
      for (int j = 0; j < NR; ++j) acc[i][j] = load ? c[i * ldc + j] : 0.0f;
    }
    for (int64_t q = 0; q < kp; ++q) {
      float be[NR], bo[NR];
      for (int j = 0; j < NR; ++j) {
        be[j] = lo_f32(b[q * NR + j]);
        bo[j] = hi_f32(b[q * NR + j]);
      }
      for (int i = 0; i < MR; ++i) {
        const uint32_t w = a[i * kp + q];
        const float ae = lo_f32(w), ao = hi_f32(w);
        for (int j = 0; j < NR; ++j) {
          acc[i][j] += ae * be[j];  // exact product: one rounding per add
          acc[i][j] += ao * bo[j];
        }
      }
    }
    for (int i = 0; i < MR; ++i) {
      for (int j = 0; j < NR; ++j) c[i * ldc + j] = acc[i][j];
    }
  }
};

// AVX2 + FMA: 16 registers of 8 floats; 4 x 2 accumulators.
struct KernAvx2 {
  static constexpr int MR = 4, NV = 2, NR = 8 * NV;
  static constexpr bool kSimdPack = false;
  __attribute__((target("avx2,fma"))) static void run(int64_t kp, const uint32_t* __restrict a,
                                                      const uint32_t* __restrict b, float* __restrict c,
                                                      int64_t ldc, bool load) {
    __m256 acc[MR][NV];
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v)
        acc[i][v] = load ? _mm256_loadu_ps(c + i * ldc + 8 * v) : _mm256_setzero_ps();
    }
    const __m256i hi = _mm256_set1_epi32(static_cast<int>(0xffff0000u));
    for (int64_t q = 0; q < kp; ++q) {
      __m256 be[NV], bo[NV];
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) {
        const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + q * NR + 8 * v));
        be[v] = _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
        bo[v] = _mm256_castsi256_ps(_mm256_and_si256(w, hi));
      }
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) {
        const __m256i x = _mm256_set1_epi32(static_cast<int>(a[i * kp + q]));
        const __m256 ae = _mm256_castsi256_ps(_mm256_slli_epi32(x, 16));
        const __m256 ao = _mm256_castsi256_ps(_mm256_and_si256(x, hi));
#pragma GCC unroll 16
        for (int v = 0; v < NV; ++v) {
          acc[i][v] = _mm256_fmadd_ps(ae, be[v], acc[i][v]);
          acc[i][v] = _mm256_fmadd_ps(ao, bo[v], acc[i][v]);
        }
      }
    }
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) _mm256_storeu_ps(c + i * ldc + 8 * v, acc[i][v]);
    }
  }
};

// AVX-512F without BF16: 32 registers of 16 floats; 6 x 2 accumulators.
struct KernAvx512 {
  // w << 16 per 32-bit lane (a vector-extension shift: GCC 12's _mm512_slli_epi32 trips
  // -Wmaybe-uninitialized through _mm512_undefined_epi32).
  typedef uint32_t v16u __attribute__((vector_size(64)));
  __attribute__((target("avx512f"))) static MOE_INLINE __m512i shl16(__m512i w) {
    return reinterpret_cast<__m512i>(reinterpret_cast<v16u>(w) << 16);
  }
  static constexpr int MR = 6, NV = 2, NR = 16 * NV;
  static constexpr bool kSimdPack = true;  // pack_w_nk_avx512
  __attribute__((target("avx512f"))) static void run(int64_t kp, const uint32_t* __restrict a,
                                                     const uint32_t* __restrict b, float* __restrict c,
                                                     int64_t ldc, bool load) {
    __m512 acc[MR][NV];
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v)
        acc[i][v] = load ? _mm512_loadu_ps(c + i * ldc + 16 * v) : _mm512_setzero_ps();
    }
    const __m512i hi = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
    for (int64_t q = 0; q < kp; ++q) {
      __m512 be[NV], bo[NV];
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) {
        const __m512i w = _mm512_loadu_si512(b + q * NR + 16 * v);
        be[v] = _mm512_castsi512_ps(shl16(w));
        bo[v] = _mm512_castsi512_ps(_mm512_and_si512(w, hi));
      }
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) {
        const __m512i x = _mm512_set1_epi32(static_cast<int>(a[i * kp + q]));
        const __m512 ae = _mm512_castsi512_ps(shl16(x));
        const __m512 ao = _mm512_castsi512_ps(_mm512_and_si512(x, hi));
#pragma GCC unroll 16
        for (int v = 0; v < NV; ++v) {
          acc[i][v] = _mm512_fmadd_ps(ae, be[v], acc[i][v]);
          acc[i][v] = _mm512_fmadd_ps(ao, bo[v], acc[i][v]);
        }
      }
    }
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) _mm512_storeu_ps(c + i * ldc + 16 * v, acc[i][v]);
    }
  }
};

// AVX-512 BF16: vdpbf16ps adds the two products of a word pair to each fp32 lane.
// 32 registers: MR x NV accumulators, NV weight vectors, one broadcast.
struct KernAvx512Bf16 {
  static constexpr int MR = 6, NV = 4, NR = 16 * NV;
  static constexpr bool kSimdPack = true;
  __attribute__((target("avx512f,avx512bf16"))) static void run(int64_t kp, const uint32_t* __restrict a,
                                                                const uint32_t* __restrict b,
                                                                float* __restrict c, int64_t ldc, bool load) {
    __m512 acc[MR][NV];
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v)
        acc[i][v] = load ? _mm512_loadu_ps(c + i * ldc + 16 * v) : _mm512_setzero_ps();
    }
    const uint32_t* ar[MR];
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) ar[i] = a + i * kp;
    for (int64_t q = 0; q < kp; ++q) {
      __m512bh bv[NV];
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) bv[v] = (__m512bh)_mm512_loadu_si512(b + q * NR + 16 * v);
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) {
        const __m512bh av = (__m512bh)_mm512_set1_epi32(static_cast<int>(ar[i][q]));
#pragma GCC unroll 16
        for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_dpbf16_ps(acc[i][v], av, bv[v]);
      }
    }
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) _mm512_storeu_ps(c + i * ldc + 16 * v, acc[i][v]);
    }
  }
};

static_assert(kMC % KernGeneric::MR == 0 && kMC % KernAvx2::MR == 0 && kMC % KernAvx512::MR == 0 &&
                  kMC % KernAvx512Bf16::MR == 0,
              "kMC must be a multiple of every MR");
static_assert(kNC % KernGeneric::NR == 0 && kNC % KernAvx2::NR == 0 && kNC % KernAvx512::NR == 0 &&
                  kNC % KernAvx512Bf16::NR == 0,
              "kNC must be a multiple of every NR");

template <typename T>
T* scratch(std::vector<T>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
  return v.data();
}

// Computes C[i0:i1, j0:j1] of problem p; i1 - i0 <= kMC, j1 - j0 <= kNC.
template <class Kern>
MOE_INLINE void tile_impl(const Problem& p, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
  constexpr int MR = Kern::MR, NR = Kern::NR;
  const int64_t mc = i1 - i0, nc = j1 - j0;
  if (p.K == 0 || (p.beta != 0.0f && p.beta != 1.0f)) {  // C = beta * C (zero when beta == 0)
    for (int64_t i = i0; i < i1; ++i) {
      float* c = p.C + (p.out_row ? p.out_row[i] : i) * p.ldc;
      for (int64_t j = j0; j < j1; ++j) c[j] = p.beta == 0.0f ? 0.0f : p.beta * c[j];
    }
    if (p.K == 0) return;
  }
  // The tile's C: in place, or with scale / out_row a scratch tile stored by the epilogue below.
  const bool scatter = p.scale || p.out_row;
  thread_local std::vector<float> c_buf;
  float* const C0 = scatter ? scratch(c_buf, mc * nc) : p.C + i0 * p.ldc + j0;  // element (i0, j0)
  const int64_t ldc = scatter ? nc : p.ldc;
  thread_local std::vector<uint32_t> a_buf, b_buf;
  const int64_t mc_pad = (mc + MR - 1) / MR * MR, nc_pad = (nc + NR - 1) / NR * NR;
  uint32_t* ap = scratch(a_buf, mc_pad * (kKC / 2));  // (mc_pad, kp)
  uint32_t* bp = scratch(b_buf, nc_pad * (kKC / 2));  // (nc_pad / NR, kp, NR)
  alignas(64) float edge[MR * NR];                    // (MR, NR) for partial register tiles
  for (int64_t k0 = 0; k0 < p.K; k0 += kKC) {
    const int64_t kc = p.K - k0 < kKC ? p.K - k0 : kKC, kp = (kc + 1) / 2;
    const bool load = k0 > 0 || p.beta != 0.0f;  // beta == 0: the first block overwrites C
    if constexpr (Kern::kSimdPack) {
      if (!p.trans_w) {
        pack_w_nk_avx512<NR>(p, k0, kc, kp, j0, nc, bp);
      } else {
        pack_w<NR>(p, k0, kc, kp, j0, nc, bp);
      }
    } else {
      pack_w<NR>(p, k0, kc, kp, j0, nc, bp);
    }
    pack_a(p, i0, mc, mc_pad, k0, kc, kp, ap);
    for (int64_t jp = 0; jp < nc; jp += NR) {
      const int64_t cols = nc - jp < NR ? nc - jp : NR;
      for (int64_t ip = 0; ip < mc; ip += MR) {
        const int64_t rows = mc - ip < MR ? mc - ip : MR;
        float* c = C0 + ip * ldc + jp;  // (rows, cols)
        if (rows == MR && cols == NR) {
          Kern::run(kp, ap + ip * kp, bp + jp * kp, c, ldc, load);
          continue;
        }
        if (load) {
          for (int64_t i = 0; i < MR; ++i) {
            for (int64_t j = 0; j < NR; ++j) edge[i * NR + j] = i < rows && j < cols ? c[i * ldc + j] : 0.0f;
          }
        }
        Kern::run(kp, ap + ip * kp, bp + jp * kp, edge, NR, load);
        for (int64_t i = 0; i < rows; ++i) {
          for (int64_t j = 0; j < cols; ++j) c[i * ldc + j] = edge[i * NR + j];
        }
      }
    }
  }
  if (!scatter) return;
  for (int64_t i = 0; i < mc; ++i) {  // epilogue: scaled rows to their output rows
    const int64_t r = i0 + i;
    const float s = p.scale ? p.scale[r] : 1.0f;
    float* dst = p.C + (p.out_row ? p.out_row[r] : r) * p.ldc + j0;
    const float* src = C0 + i * nc;
    for (int64_t j = 0; j < nc; ++j) dst[j] = s * src[j];
  }
}

// ---- one entry per instruction set; everything above is inlined into each ----

void tile_generic(const Problem& p, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
  tile_impl<KernGeneric>(p, i0, i1, j0, j1);
}

__attribute__((target("avx2,fma"))) void tile_avx2(const Problem& p, int64_t i0, int64_t i1, int64_t j0,
                                                   int64_t j1) {
  tile_impl<KernAvx2>(p, i0, i1, j0, j1);
}

__attribute__((target("avx512f"))) void tile_avx512(const Problem& p, int64_t i0, int64_t i1, int64_t j0,
                                                    int64_t j1) {
  tile_impl<KernAvx512>(p, i0, i1, j0, j1);
}

__attribute__((target("avx512f,avx512bf16"))) void tile_avx512bf16(const Problem& p, int64_t i0, int64_t i1,
                                                                   int64_t j0, int64_t j1) {
  tile_impl<KernAvx512Bf16>(p, i0, i1, j0, j1);
}

void run_tile(int isa, const Problem& p, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
  switch (isa) {
    case kAvx512Bf16:
      return tile_avx512bf16(p, i0, i1, j0, j1);
    case kAvx512:
      return tile_avx512(p, i0, i1, j0, j1);
    case kAvx2:
      return tile_avx2(p, i0, i1, j0, j1);
    default:
      return tile_generic(p, i0, i1, j0, j1);
  }
}

struct Tile {
  int64_t problem;  // index into the problem list
  int64_t i0, i1, j0, j1;
};

}  // namespace

void grouped_gemm_bf16w(const GroupedGemmBf16Args& g) {
  std::vector<Problem> problems;
  std::vector<Tile> tiles;
  for (int64_t e = 0; e < g.E; ++e) {
    const int64_t off = g.offsets[e], rows = g.offsets[e + 1] - off;
    if (rows == 0) continue;
    Problem p;
    p.M = rows;
    p.N = g.N;
    p.K = g.K;
    // A[row(i), k]: gathered rows, or the expert's contiguous block of rows.
    p.A = g.gather ? g.A : g.A + off * g.lda;
    p.lda = g.lda;
    p.map = g.gather ? g.gather + off : nullptr;
    p.W = g.W + e * g.N * g.K;
    p.trans_w = g.trans_w;
    p.C = g.out_row ? g.C : g.C + off * g.ldc;  // out_row holds absolute rows of C
    p.ldc = g.ldc;
    p.beta = g.beta;
    p.scale = g.scale ? g.scale + off : nullptr;
    p.out_row = g.out_row ? g.out_row + off : nullptr;
    p.pre = g.a_preact;
    p.act = g.act;
    const int64_t q = static_cast<int64_t>(problems.size());
    problems.push_back(p);
    for (int64_t i0 = 0; i0 < p.M; i0 += kMC) {
      for (int64_t j0 = 0; j0 < p.N; j0 += kNC) {
        tiles.push_back({q, i0, i0 + kMC < p.M ? i0 + kMC : p.M, j0, j0 + kNC < p.N ? j0 + kNC : p.N});
      }
    }
  }
  const int isa = cpu::isa(Family::Bf16);
  parallel_items(static_cast<int64_t>(tiles.size()), [&](int64_t t) {
    const Tile& tile = tiles[static_cast<size_t>(t)];
    run_tile(isa, problems[static_cast<size_t>(tile.problem)], tile.i0, tile.i1, tile.j0, tile.j1);
  });
}

}  // namespace moe::kernels::cpu
