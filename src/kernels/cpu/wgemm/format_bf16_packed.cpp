// The bf16-packed weight format of grouped_gemm_w (engine.h): bf16 weights packed once
// (pack_bf16_weights, moe/kernels/weights.h) in panels of 16 columns of bf16 pairs along K, fp32
// activations rounded to bf16 as they are packed, fp32 sums. The weights are read in place: a call
// packs only its activation rows.
//
// A tile (at most kMC x kNC of one expert's output, from the engine; j0 a multiple of 16) is computed
//   for each K block of kKC (kAmxKC on the tiles; a multiple of 32; the packed K is padded with zeros to 32):
//     pack A rows [i0, i1) of the block, rounded to bf16 (zero beyond K),
//     for each group of NV panels, for each MR rows: the micro-kernel on A rows x the panels in place.
// Two kinds of micro-kernel read the same weights:
//   widening (generic, avx2, avx512): A kept as fp32 values (bf16-exact), a weight word split into its
//     two bf16 as fp32 (a shift and a mask), two FMAs per pair: c += a[2q] w[2q]; c += a[2q+1] w[2q+1];
//   bf16 pairs (avx512bf16: vdpbf16ps; amx: TDPBF16PS on 16 x 16 tiles): A packed as words of pairs.
// Every product of two bf16 values is exact in fp32, so the widening kernels and the tiles' manual
// order (amx_tiles.h) give the same bits: generic, avx2, avx512 and the emulated amx are
// bit-identical, and each element is summed in K order for any thread count and any tile split.
// vdpbf16ps adds a pair's two products in its own order (odd first in the manual), within K · 2^-24 of
// the sum of |products|.
//
// Rows: the widening and vdpbf16ps kernels have a variant for every row count up to MR, so a decode
// step of one row computes one row. The amx kernel computes 32 rows; a tile with fewer than
// kAmxMinRows rows runs the widening avx512 kernel instead (tiles do not pay off there).
#include <immintrin.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include "kernels/cpu/wgemm/amx_tiles.h"
#include "kernels/cpu/wgemm/engine.h"

#define MOE_INLINE inline __attribute__((always_inline))

namespace moe::kernels::cpu::wgemm {

namespace {

constexpr int64_t kPanel = kPackedPanel;  // 16 columns per packed panel
constexpr int64_t kMC = 288;              // a multiple of every MR (4, 8, 6, 32)
constexpr int64_t kNC = 192;              // a multiple of every NR (16, 48, 64, 32); the engine widens it
constexpr int64_t kKC = 512;              // a multiple of kPackedKAlign
constexpr int64_t kAmxKC = 2048;          // the amx kernel's K block: its C tiles go to memory once per block
constexpr int64_t kAmxMinRows = 16;       // fewer rows in a tile: the avx512 widening kernel
static_assert(kKC % kPackedKAlign == 0 && kAmxKC % kPackedKAlign == 0,
              "a K block must be whole AMX tile rows");

MOE_INLINE float bits_f32(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// The packed A of a K block: rows [0, mc_pad) (zero from mc), kc values per row (zero from K - k0).
// Widening kernels: fp32 values rounded to bf16, row stride kc floats. Pair kernels: words of bf16
// pairs (k even in the low half), row stride kc / 2 words.
template <bool Words, int64_t KC = kKC>
MOE_INLINE void pack_a(const Problem& p, int64_t i0, int64_t mc, int64_t mc_pad, int64_t k0, int64_t kc,
                       void* dst) {
  const int64_t kv = p.K - k0 < kc ? p.K - k0 : kc;  // values from A; the rest of the block is zero
  for (int64_t i = 0; i < mc_pad; ++i) {
    float h[KC];  // the pre-activation, if any
    const float* __restrict src = i < mc ? a_span(p, i0 + i, k0, kv, h) : nullptr;
    if constexpr (Words) {
      uint32_t* __restrict d = static_cast<uint32_t*>(dst) + i * (kc / 2);
      if (!src) {
        for (int64_t q = 0; q < kc / 2; ++q) d[q] = 0;
        continue;
      }
      const int64_t pairs = kv / 2;
      for (int64_t q = 0; q < pairs; ++q) d[q] = round_bf16(src[2 * q]) | (round_bf16(src[2 * q + 1]) << 16);
      int64_t q = pairs;
      if (kv & 1) d[q++] = round_bf16(src[kv - 1]);
      for (; q < kc / 2; ++q) d[q] = 0;
    } else {
      float* __restrict d = static_cast<float*>(dst) + i * kc;
      if (!src) {
        for (int64_t k = 0; k < kc; ++k) d[k] = 0;
        continue;
      }
      for (int64_t k = 0; k < kv; ++k) d[k] = bits_f32(round_bf16(src[k]) << 16);
      for (int64_t k = kv; k < kc; ++k) d[k] = 0;
    }
  }
}

// ---- micro-kernels: c (R, 16 V) (+)= a (R rows) · panels (V panels of kp words x 16, bs words apart) ----
// Each kernel K has MR, NV, kWords (A as pair words) and run<R, V>(kp, a, la, b, bs, c, ldc, load),
// la the A row stride in its elements; load: start from c (else from zero).

struct KernGeneric {
  static constexpr int MR = 4, NV = 1;
  static constexpr bool kWords = false;
  template <int R, int V>
  static void run(int64_t kp, const float* __restrict a, int64_t la, const uint32_t* __restrict b, int64_t bs,
                  float* __restrict c, int64_t ldc, bool load) {
    float acc[R][16 * V];
    for (int i = 0; i < R; ++i)
      for (int j = 0; j < 16 * V; ++j) acc[i][j] = load ? c[i * ldc + j] : 0.0f;
    for (int64_t q = 0; q < kp; ++q) {
      for (int v = 0; v < V; ++v) {
        float be[16], bo[16];
        for (int j = 0; j < 16; ++j) {
          const uint32_t w = b[v * bs + q * 16 + j];
          be[j] = bits_f32(w << 16);
          bo[j] = bits_f32(w & 0xffff0000u);
        }
        for (int i = 0; i < R; ++i) {
          const float ae = a[i * la + 2 * q], ao = a[i * la + 2 * q + 1];
          for (int j = 0; j < 16; ++j) {
            acc[i][16 * v + j] += ae * be[j];  // exact products: one rounding per add
            acc[i][16 * v + j] += ao * bo[j];
          }
        }
      }
    }
    for (int i = 0; i < R; ++i)
      for (int j = 0; j < 16 * V; ++j) c[i * ldc + j] = acc[i][j];
  }
};

// AVX2 + FMA: a panel is two vectors of 8 words; 4 rows x 2 accumulators.
struct KernAvx2 {
  static constexpr int MR = 4, NV = 1;
  static constexpr bool kWords = false;
  template <int R, int V>
  __attribute__((target("avx2,fma"))) static void run(int64_t kp, const float* __restrict a, int64_t la,
                                                      const uint32_t* __restrict b, int64_t bs,
                                                      float* __restrict c, int64_t ldc, bool load) {
    constexpr int H = 2 * V;  // vectors of 8 columns
    __m256 acc[R][H];
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i)
#pragma GCC unroll 16
      for (int h = 0; h < H; ++h)
        acc[i][h] = load ? _mm256_loadu_ps(c + i * ldc + 8 * h) : _mm256_setzero_ps();
    const __m256i hi = _mm256_set1_epi32(static_cast<int>(0xffff0000u));
    for (int64_t q = 0; q < kp; ++q) {
      __m256 be[H], bo[H];
#pragma GCC unroll 16
      for (int h = 0; h < H; ++h) {
        const __m256i w =
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + (h / 2) * bs + q * 16 + 8 * (h % 2)));
        be[h] = _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
        bo[h] = _mm256_castsi256_ps(_mm256_and_si256(w, hi));
      }
#pragma GCC unroll 16
      for (int i = 0; i < R; ++i) {
        const __m256 ae = _mm256_broadcast_ss(a + i * la + 2 * q),
                     ao = _mm256_broadcast_ss(a + i * la + 2 * q + 1);
#pragma GCC unroll 16
        for (int h = 0; h < H; ++h) {
          acc[i][h] = _mm256_fmadd_ps(ae, be[h], acc[i][h]);
          acc[i][h] = _mm256_fmadd_ps(ao, bo[h], acc[i][h]);
        }
      }
    }
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i)
#pragma GCC unroll 16
      for (int h = 0; h < H; ++h) _mm256_storeu_ps(c + i * ldc + 8 * h, acc[i][h]);
  }
};

// AVX-512F: 8 rows x 3 panels = 24 accumulators, 6 widened weight vectors, one broadcast activation;
// the two conversions per weight vector are shared by 8 rows (on Intel cores, faster than vdpbf16ps:
// see fast_dpbf16 in isa.h). Measured against 12 x 2 and 14 x 2 with K blocks of 256, 512 and 1024
// on one (512, 7168, 1024) and one (512, 1024, 3584) problem: 8 x 3 with 512 was the fastest, about
// 79% of the FMA peak on 2 cores of a Xeon (12 x 2: 67-71%).
struct KernAvx512 {
  typedef uint32_t v16u __attribute__((vector_size(64)));
  static constexpr int MR = 8, NV = 3;
  static constexpr bool kWords = false;
  template <int R, int V>
  __attribute__((target("avx512f"))) static void run(int64_t kp, const float* __restrict a, int64_t la,
                                                     const uint32_t* __restrict b, int64_t bs,
                                                     float* __restrict c, int64_t ldc, bool load) {
    __m512 acc[R][V];
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i)
#pragma GCC unroll 16
      for (int v = 0; v < V; ++v)
        acc[i][v] = load ? _mm512_loadu_ps(c + i * ldc + 16 * v) : _mm512_setzero_ps();
    const v16u hi = reinterpret_cast<v16u>(_mm512_set1_epi32(static_cast<int>(0xffff0000u)));
    for (int64_t q = 0; q < kp; ++q) {
      __m512 be[V], bo[V];
#pragma GCC unroll 16
      for (int v = 0; v < V; ++v) {
        const v16u w = reinterpret_cast<v16u>(_mm512_loadu_si512(b + v * bs + q * 16));
        be[v] = reinterpret_cast<__m512>(w << 16);
        bo[v] = reinterpret_cast<__m512>(w & hi);
      }
#pragma GCC unroll 16
      for (int i = 0; i < R; ++i) {
        const __m512 ae = _mm512_set1_ps(a[i * la + 2 * q]), ao = _mm512_set1_ps(a[i * la + 2 * q + 1]);
#pragma GCC unroll 16
        for (int v = 0; v < V; ++v) {
          acc[i][v] = _mm512_fmadd_ps(ae, be[v], acc[i][v]);
          acc[i][v] = _mm512_fmadd_ps(ao, bo[v], acc[i][v]);
        }
      }
    }
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i)
#pragma GCC unroll 16
      for (int v = 0; v < V; ++v) _mm512_storeu_ps(c + i * ldc + 16 * v, acc[i][v]);
  }
};

// AVX-512 BF16: vdpbf16ps adds a word pair's two products to an fp32 lane; 6 rows x 4 panels.
struct KernAvx512Bf16 {
  static constexpr int MR = 6, NV = 4;
  static constexpr bool kWords = true;
  template <int R, int V>
  __attribute__((target("avx512f,avx512bf16"))) static void run(int64_t kp, const uint32_t* __restrict a,
                                                                int64_t la, const uint32_t* __restrict b,
                                                                int64_t bs, float* __restrict c, int64_t ldc,
                                                                bool load) {
    __m512 acc[R][V];
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i)
#pragma GCC unroll 16
      for (int v = 0; v < V; ++v)
        acc[i][v] = load ? _mm512_loadu_ps(c + i * ldc + 16 * v) : _mm512_setzero_ps();
    for (int64_t q = 0; q < kp; ++q) {
      __m512bh bv[V];
#pragma GCC unroll 16
      for (int v = 0; v < V; ++v) bv[v] = (__m512bh)_mm512_loadu_si512(b + v * bs + q * 16);
#pragma GCC unroll 16
      for (int i = 0; i < R; ++i) {
        const __m512bh av = (__m512bh)_mm512_set1_epi32(static_cast<int>(a[i * la + q]));
#pragma GCC unroll 16
        for (int v = 0; v < V; ++v) acc[i][v] = _mm512_dpbf16_ps(acc[i][v], av, bv[v]);
      }
    }
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i)
#pragma GCC unroll 16
      for (int v = 0; v < V; ++v) _mm512_storeu_ps(c + i * ldc + 16 * v, acc[i][v]);
  }
};

// The kernels' common pointer type.
template <class Kern>
using KernFn = void (*)(int64_t, const std::conditional_t<Kern::kWords, uint32_t, float>*, int64_t,
                        const uint32_t*, int64_t, float*, int64_t, bool);

// Where a block of the tile's output goes: straight to c, or (columns past N in the last panel)
// through a scratch block whose valid columns are copied out.
struct Block {
  float* c;
  int64_t ldc, rows, cols;  // valid rows and columns of the block
  bool load;
};

template <class Run>
MOE_INLINE void through_edge(const Block& blk, int64_t width, float* edge, Run&& run) {
  if (blk.cols == width) {
    run(blk.c, blk.ldc);
    return;
  }
  if (blk.load) {
    for (int64_t i = 0; i < blk.rows; ++i)
      for (int64_t j = 0; j < width; ++j) edge[i * width + j] = j < blk.cols ? blk.c[i * blk.ldc + j] : 0.0f;
  }
  run(edge, width);
  for (int64_t i = 0; i < blk.rows; ++i)
    for (int64_t j = 0; j < blk.cols; ++j) blk.c[i * blk.ldc + j] = edge[i * width + j];
}

// The panels of the tile's columns: panel P of the expert at W + P * kp_all * 16 words.
struct Panels {
  const uint32_t* W;
  int64_t kp_all;  // packed pairs of K (rows of a panel)
  int64_t first;   // the tile's first panel (j0 / 16)
  const uint32_t* at(int64_t P, int64_t q0) const { return W + (first + P) * kp_all * kPanel + q0 * kPanel; }
  int64_t stride() const { return kp_all * kPanel; }
};

// Computes the tile [i0, i1) x [j0, j1) of problem p into out with the register-tiled kernel Kern.
template <class Kern>
MOE_INLINE void tile_impl(const Problem& p, int64_t i0, int64_t i1, int64_t j0, int64_t j1,
                          const TileOut& out) {
  using AT = std::conditional_t<Kern::kWords, uint32_t, float>;
  constexpr int64_t MR = Kern::MR, NV = Kern::NV, per_pair = Kern::kWords ? 1 : 2;
  const int64_t mc = i1 - i0, nc = j1 - j0, panels = (nc + kPanel - 1) / kPanel;
  const Panels W{static_cast<const uint32_t*>(p.W.data), packed_bf16_pairs(p.K), j0 / kPanel};
  thread_local std::vector<AT> a_buf;
  AT* ap = scratch(a_buf, mc * kKC / 2 * per_pair);
  alignas(64) float edge[MR * kPanel * NV];
  for (int64_t k0 = 0; k0 < 2 * W.kp_all; k0 += kKC) {
    const int64_t kc = 2 * W.kp_all - k0 < kKC ? 2 * W.kp_all - k0 : kKC, kp = kc / 2, la = kp * per_pair;
    const bool load = k0 > 0 || out.load;
    pack_a<Kern::kWords>(p, i0, mc, mc, k0, kc, ap);
    for (int64_t P = 0; P < panels; P += NV) {
      const int64_t v = panels - P < NV ? panels - P : NV;
      const int64_t cols = nc - P * kPanel < v * kPanel ? nc - P * kPanel : v * kPanel;
      for (int64_t ip = 0; ip < mc; ip += MR) {
        const int64_t r = mc - ip < MR ? mc - ip : MR;
        const auto kern = kern_for<Kern, KernFn<Kern>>(r, v);
        through_edge({out.c + ip * out.ldc + P * kPanel, out.ldc, r, cols, load}, v * kPanel, edge,
                     [&](float* c, int64_t ldc) {
                       kern(kp, ap + ip * la, la, W.at(P, k0 / 2), W.stride(), c, ldc, load);
                     });
      }
    }
  }
}

// ---- amx: 32 x 32 blocks of 2 x 2 tiles (C in tiles 0..3, A in 4..5, B in 6..7) ----
// A is packed as whole tiles: tile (g, s) (rows [16 g, 16 g + 16), pair words [16 s, 16 s + 16)) is
// 1 KiB at a + (g * kp / 16 + s) * 256 words, 64 bytes per row, so a tile load reads 16 adjacent
// lines; a panel's 16 pair rows are adjacent 64-byte rows already. Each step prefetches the next
// step's A and B lines (4 KiB) into L1 while the tile unit works: the operands stream from L2 (a
// 32 x 32 block reads 4 KiB per 4 TDPBF16PS), which without the prefetch holds the tiles to about a
// fifth of their rate.

// The A rows [0, mc_pad) of a K block as tiles (see above): row i's words as pack_a<true> makes them.
MOE_INLINE void pack_a_tiles(const Problem& p, int64_t i0, int64_t mc, int64_t mc_pad, int64_t k0, int64_t kc,
                             uint32_t* dst) {
  const int64_t kp = kc / 2, steps = kp / 16;
  alignas(64) uint32_t row[kAmxKC / 2];
  for (int64_t i = 0; i < mc_pad; ++i) {
    pack_a<true, kAmxKC>(p, i0 + i, i < mc ? 1 : 0, 1, k0, kc, row);
    uint32_t* d = dst + (i / 16) * steps * 256 + (i % 16) * 16;
    for (int64_t st = 0; st < steps; ++st) std::memcpy(d + st * 256, row + st * 16, 64);
  }
}

MOE_INLINE void prefetch_tile(const void* base, int64_t stride) {
  for (int r = 0; r < 16; ++r) __builtin_prefetch(static_cast<const char*>(base) + r * stride, 0, 3);
}

// c (32, 16 V) (+)= a (2 row groups of kp / 16 tiles, tiles as above) · V panels; kp a multiple of 16.
template <class Unit, int V>
MOE_INLINE void amx_block(int64_t kp, const uint32_t* a, const uint32_t* b, int64_t bs, float* c, int64_t ldc,
                          bool load) {
  const int64_t cs = ldc * 4, a1 = kp * 16;  // C's byte stride; A's second row group (words)
  if (load) {
    Unit::template load<0>(c, cs);
    Unit::template load<2>(c + 16 * ldc, cs);
    if constexpr (V == 2) {
      Unit::template load<1>(c + 16, cs);
      Unit::template load<3>(c + 16 * ldc + 16, cs);
    }
  } else {
    Unit::template zero<0>();
    Unit::template zero<2>();
    if constexpr (V == 2) {
      Unit::template zero<1>();
      Unit::template zero<3>();
    }
  }
  for (int64_t q = 0; q < kp; q += 16) {
    const uint32_t* at = a + q * 16;
    if (q + 16 < kp) {  // the next step's operands
      prefetch_tile(at + 256, 64);
      prefetch_tile(at + a1 + 256, 64);
      prefetch_tile(b + (q + 16) * kPanel, 64);
      if constexpr (V == 2) prefetch_tile(b + bs + (q + 16) * kPanel, 64);
    }
    Unit::template load<4>(at, 64);
    Unit::template load<5>(at + a1, 64);
    Unit::template load<6>(b + q * kPanel, 64);
    Unit::template dp<0, 4, 6>();
    Unit::template dp<2, 5, 6>();
    if constexpr (V == 2) {
      Unit::template load<7>(b + bs + q * kPanel, 64);
      Unit::template dp<1, 4, 7>();
      Unit::template dp<3, 5, 7>();
    }
  }
  Unit::template store<0>(c, cs);
  Unit::template store<2>(c + 16 * ldc, cs);
  if constexpr (V == 2) {
    Unit::template store<1>(c + 16, cs);
    Unit::template store<3>(c + 16 * ldc + 16, cs);
  }
}

void tile_avx512(const Problem& p, int64_t i0, int64_t i1, int64_t j0, int64_t j1, const TileOut& out);
void tile_generic(const Problem& p, int64_t i0, int64_t i1, int64_t j0, int64_t j1, const TileOut& out);

template <class Unit>
MOE_INLINE void tile_amx_impl(const Problem& p, int64_t i0, int64_t i1, int64_t j0, int64_t j1,
                              const TileOut& out) {
  const int64_t mc = i1 - i0, nc = j1 - j0;
  if (mc < kAmxMinRows) {  // tiles do not pay off: the widening kernel (bit-identical to the emulation)
    (cpu_runs(kAvx512) ? tile_avx512 : tile_generic)(p, i0, i1, j0, j1, out);
    return;
  }
  const int64_t mc_pad = (mc + 31) / 32 * 32, panels = (nc + kPanel - 1) / kPanel;
  const Panels W{static_cast<const uint32_t*>(p.W.data), packed_bf16_pairs(p.K), j0 / kPanel};
  thread_local std::vector<uint32_t> a_buf;
  uint32_t* ap = scratch(a_buf, mc_pad * kAmxKC / 2);
  alignas(64) float edge[32 * 32];
  Unit::begin();
  for (int64_t k0 = 0; k0 < 2 * W.kp_all; k0 += kAmxKC) {
    const int64_t kc = 2 * W.kp_all - k0 < kAmxKC ? 2 * W.kp_all - k0 : kAmxKC, kp = kc / 2;
    const bool load = k0 > 0 || out.load;
    pack_a_tiles(p, i0, mc, mc_pad, k0, kc, ap);
    for (int64_t P = 0; P < panels; P += 2) {
      const int64_t v = panels - P < 2 ? panels - P : 2;
      const int64_t cols = nc - P * kPanel < v * kPanel ? nc - P * kPanel : v * kPanel;
      for (int64_t ip = 0; ip < mc; ip += 32) {
        const int64_t r = mc - ip < 32 ? mc - ip : 32;
        const Block blk{out.c + ip * out.ldc + P * kPanel, out.ldc, r, cols, load};
        auto run = [&](float* c, int64_t ldc) {
          if (v == 2) {
            amx_block<Unit, 2>(kp, ap + ip * kp, W.at(P, k0 / 2), W.stride(), c, ldc, load);
          } else {
            amx_block<Unit, 1>(kp, ap + ip * kp, W.at(P, k0 / 2), W.stride(), c, ldc, load);
          }
        };
        if (r == 32) {
          through_edge(blk, v * kPanel, edge, run);
          continue;
        }
        // Fewer than 32 rows: all 32 through the scratch block (the padded A rows are zero).
        if (load) {
          for (int64_t i = 0; i < 32; ++i)
            for (int64_t j = 0; j < v * kPanel; ++j)
              edge[i * 32 + j] = i < r && j < cols ? blk.c[i * blk.ldc + j] : 0.0f;
        }
        run(edge, 32);
        for (int64_t i = 0; i < r; ++i)
          for (int64_t j = 0; j < cols; ++j) blk.c[i * blk.ldc + j] = edge[i * 32 + j];
      }
    }
  }
  Unit::end();
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

// AVX-512 for the packing of A (every CPU with AMX has it, and the emulation runs only where it does).
__attribute__((target("avx512f,avx512bw,avx512vl"))) void tile_amx(const Problem& p, int64_t i0, int64_t i1,
                                                                   int64_t j0, int64_t j1,
                                                                   const TileOut& out) {
  if (amx_emulated()) {
    tile_amx_impl<AmxEmu>(p, i0, i1, j0, j1, out);
  } else {
    tile_amx_impl<AmxHw>(p, i0, i1, j0, j1, out);
  }
}

}  // namespace

const Format& bf16_packed_format() {
  static const Format f{.mc = kMC,
                        .nc = kNC,
                        .widen = true,
                        .min_parallel = 0,
                        .family = Family::Bf16,
                        .tile = {&tile_generic, &tile_avx2, &tile_avx512, &tile_avx512bf16, &tile_amx}};
  return f;
}

}  // namespace moe::kernels::cpu::wgemm
