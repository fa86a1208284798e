// The bf16 weight format of grouped_gemm_w (engine.h): fp32 activations rounded to bf16 as they are
// packed, bf16 weights, fp32 sums.
//
// A tile (at most kMC x kNC of one expert's output, from the engine) is computed as
//   for each K block of kKC (even):  pack W (kKC x kNC) and A (kMC x kKC) as bf16 pairs along K,
//                                    run the MR x NR register-tiled micro-kernel per panel pair
// Packed layout. A 32-bit word holds the bf16 pair (k, k + 1) of one row or column, k even, the
// element k in the low half (an odd K is padded with a zero in the high half of the last word):
//   A: row i of the tile at ap + i * kp, kp = ceil(kc / 2) words (the micro-kernel broadcasts a word)
//   W: panels of NR columns, (kp, NR) words each (the micro-kernel loads NR consecutive words)
// This is the operand layout of vdpbf16ps, which multiplies the two pairs of a word and adds both
// products to an fp32 lane. The fallbacks read the same layout and split each word into two fp32
// values (bf16 -> fp32 is a 16-bit shift), then use FMA. A is rounded to bf16 while it is packed (the
// engine's a_span gathers the rows and makes the pre-activation), so no converted copy of A is made.
//
// Determinism: the micro-kernel loads the tile into its accumulators (after the first K block, or
// when the engine asks to add) and adds the K pairs in order, so every element is summed in the same
// order for any thread count and any tile split.
#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/cpu/wgemm/engine.h"

#define MOE_INLINE inline __attribute__((always_inline))

namespace moe::kernels::cpu::wgemm {

namespace {

// Tile sizes for every instruction set: kMC is a multiple of every MR, kNC of every NR, kKC even.
constexpr int64_t kMC = 264;
constexpr int64_t kNC = 512;
constexpr int64_t kKC = 256;
static_assert(kKC % 2 == 0, "a K block must hold whole bf16 pairs");

MOE_INLINE uint32_t load_pair(const uint16_t* p) {  // p[0] | p[1] << 16
  uint32_t w;
  std::memcpy(&w, p, 4);
  return w;
}

MOE_INLINE const uint16_t* weights(const Problem& p) {  // (N, K), or (K, N) when trans
  return static_cast<const uint16_t*>(p.W.data);
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
    float h[kKC];  // the pre-activation, if any; then rounded like any A row
    const float* __restrict src = a_span(p, i0 + i, k0, kc, h);
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
    if (p.W.trans) {  // W (K, N): rows k and k + 1 interleaved
      for (int64_t q = 0; q < kp; ++q) {
        const uint16_t* __restrict r0 = weights(p) + (k0 + 2 * q) * p.N + j0 + jp;
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
      const uint16_t* __restrict src = weights(p) + (j0 + jp + jj) * p.K + k0;
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
      const char* run = reinterpret_cast<const char*>(weights(p) + (j0 + jn) * p.K + k0);
      for (int64_t off = 0; off < kc * 2; off += 64) __builtin_prefetch(run + off, 0, 2);  // to L2
    }
    for (int64_t jj = 0; jj < NR; ++jj) {
      if (jj >= cols) {
        for (int64_t q = 0; q < kp; ++q) panel[q * NR + jj] = 0;
        continue;
      }
      const uint16_t* __restrict src = weights(p) + (j0 + jp + jj) * p.K + k0;
      for (int64_t q = jj < cols_v ? qv : 0; q < pairs; ++q) panel[q * NR + jj] = load_pair(src + 2 * q);
      if (kc & 1) panel[pairs * NR + jj] = src[kc - 1];
    }
    for (int64_t jj0 = 0; jj0 < cols_v; jj0 += 16) {
      const uint16_t* src = weights(p) + (j0 + jp + jj0) * p.K + k0;
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

// Computes the tile [i0, i1) x [j0, j1) of problem p into out; i1 - i0 <= kMC, j1 - j0 <= kNC.
template <class Kern>
MOE_INLINE void tile_impl(const Problem& p, int64_t i0, int64_t i1, int64_t j0, int64_t j1,
                          const TileOut& out) {
  constexpr int MR = Kern::MR, NR = Kern::NR;
  const int64_t mc = i1 - i0, nc = j1 - j0;
  float* const C0 = out.c;  // element (i0, j0)
  const int64_t ldc = out.ldc;
  thread_local std::vector<uint32_t> a_buf, b_buf;
  const int64_t mc_pad = (mc + MR - 1) / MR * MR, nc_pad = (nc + NR - 1) / NR * NR;
  uint32_t* ap = scratch(a_buf, mc_pad * (kKC / 2));  // (mc_pad, kp)
  uint32_t* bp = scratch(b_buf, nc_pad * (kKC / 2));  // (nc_pad / NR, kp, NR)
  alignas(64) float edge[MR * NR];                    // (MR, NR) for partial register tiles
  for (int64_t k0 = 0; k0 < p.K; k0 += kKC) {
    const int64_t kc = p.K - k0 < kKC ? p.K - k0 : kKC, kp = (kc + 1) / 2;
    const bool load = k0 > 0 || out.load;  // else the first block overwrites the tile
    if constexpr (Kern::kSimdPack) {
      if (!p.W.trans) {
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
}

// ---- one entry per instruction set; everything above is inlined into each ----

void tile_generic(const Problem& p, int64_t i0, int64_t i1, int64_t j0, int64_t j1, const TileOut& out) {
  tile_impl<KernGeneric>(p, i0, i1, j0, j1, out);
}

__attribute__((target("avx2,fma"))) void tile_avx2(const Problem& p, int64_t i0, int64_t i1, int64_t j0,
                                                   int64_t j1, const TileOut& out) {
  tile_impl<KernAvx2>(p, i0, i1, j0, j1, out);
}

__attribute__((target("avx512f"))) void tile_avx512(const Problem& p, int64_t i0, int64_t i1, int64_t j0,
                                                    int64_t j1, const TileOut& out) {
  tile_impl<KernAvx512>(p, i0, i1, j0, j1, out);
}

__attribute__((target("avx512f,avx512bf16"))) void tile_avx512bf16(const Problem& p, int64_t i0, int64_t i1,
                                                                   int64_t j0, int64_t j1,
                                                                   const TileOut& out) {
  tile_impl<KernAvx512Bf16>(p, i0, i1, j0, j1, out);
}

}  // namespace

const Format& bf16_format() {
  static const Format f{.mc = kMC,
                        .nc = kNC,
                        .min_parallel = 0,
                        .family = Family::Bf16,
                        .tile = {&tile_generic, &tile_avx2, &tile_avx512, &tile_avx512bf16,
                                 // amx (Intel): widening beats vdpbf16ps there (isa.h fast_dpbf16)
                                 &tile_avx512}};
  return f;
}

}  // namespace moe::kernels::cpu::wgemm
