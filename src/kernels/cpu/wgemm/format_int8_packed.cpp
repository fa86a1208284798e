// The int8-packed weight format of grouped_gemm_w (engine.h): W8A8 on integer dot products. The
// weights are packed once (pack_int8_weights, moe/kernels/weights.h) in panels of 16 columns whose
// words hold 4 consecutive k of a column as unsigned bytes w + 128; a call quantizes its activation
// rows to signed int8 (one scale per row, quant::quantize_act_row) with each group's sum of codes, and
// multiplies them with vpdpbusd, which adds the four products of unsigned (weight) and signed
// (activation) bytes to an int32 lane. The weights' offset is taken back with the rows' group sums, so
// the packed format holds only the codes and one f16 scale per column and group (as q8_0 does).
//
// A tile (at most kMC rows of one expert and a multiple of 16 columns, from the engine) is computed
//   quantize its rows (the whole K of each, after the pre-activation if any) and sum each group,
//   for each group of NV panels and each MR rows, over the groups g of K in order:
//     i[r, n] = Σ_{k in g} q_rk · (w_nk + 128)           (int32, exact)
//     f[r, n] = fma(float(i[r, n] - 128 · Σ_{k in g} q_rk), scale[n, g], f[r, n])   (the int32 is exact
//               in fp32: |Σ q w| <= 1024 · 127² < 2^24)
//   then C[r, n] = f · s_r (or fma(f, s_r, C) to add).
// Every instruction set runs this order, so the portable path, vpdpbusd and the AMX tiles (TDPBSUD,
// hardware or emulated) give the same bits, for any thread count; a row's result does not depend on
// the other rows. The tiles need groups of whole 64-byte tile rows (group % 64 == 0) and at least
// kAmxMinRows rows; otherwise the vpdpbusd kernel runs.
#include <immintrin.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include "kernels/cpu/wgemm/amx_tiles.h"
#include "kernels/cpu/wgemm/engine.h"
#include "kernels/cpu/wgemm/quant_rows.h"
#include "kernels/quant_format.h"
#include "moe/core/dtype.h"

#define MOE_INLINE inline __attribute__((always_inline))

namespace moe::kernels::cpu::wgemm {

namespace {

constexpr int64_t kPanel = kPackedPanel;
constexpr int64_t kMC = 48;   // rows per tile: a multiple of every MR; the tile's rows are quantized whole
constexpr int64_t kNC = 192;  // a multiple of every NR
constexpr int64_t kAmxMinRows = 16;

// The expert's packed data as the kernels read it.
struct Packed {
  const int32_t* words;    // panel P at words + P * K * 4 (K / 4 rows of 16 words)
  const uint16_t* scales;  // f16; panel P, group g at scales + (P * ng + g) * 16
  int64_t K, group, ng;
};

Packed packed_of(const Problem& p) {
  const auto* base = static_cast<const uint8_t*>(p.W.data);
  const int64_t words = packed_int8_words_bytes(p.N, p.K);
  return {reinterpret_cast<const int32_t*>(base), reinterpret_cast<const uint16_t*>(base + words), p.K,
          p.W.group, p.K / p.W.group};
}

// One block: R rows of quantized activations (a + r * K, signed), their group sums times 128 (gc + r *
// ng) and scales (rs) x V panels from panel P.
struct Block {
  const int8_t* a;
  const int32_t* gc;
  const float* rs;
  int64_t P;
  float* c;
  int64_t ldc;
  bool load;
};

struct KernGeneric {
  static constexpr int MR = 4, NV = 1;
  template <int R, int V>
  static void run(const Packed& w, const Block& b) {
    float f[R][16 * V] = {};
    for (int64_t g = 0; g < w.ng; ++g) {
      for (int v = 0; v < V; ++v) {
        const auto* panel = reinterpret_cast<const uint8_t*>(w.words + (b.P + v) * w.K * 4);
        const uint16_t* sc = w.scales + ((b.P + v) * w.ng + g) * kPanel;
        for (int r = 0; r < R; ++r) {
          const int8_t* a = b.a + r * w.K;
          for (int j = 0; j < 16; ++j) {
            int32_t acc = 0;
            for (int64_t k = g * w.group; k < (g + 1) * w.group; ++k)
              acc += int32_t{a[k]} * int32_t{panel[(k / 4 * kPanel + j) * 4 + k % 4]};
            f[r][16 * v + j] = std::fma(static_cast<float>(acc - b.gc[r * w.ng + g]), moe::f16_to_f32(sc[j]),
                                        f[r][16 * v + j]);
          }
        }
      }
    }
    for (int r = 0; r < R; ++r) {
      for (int j = 0; j < 16 * V; ++j) {
        float& c = b.c[r * b.ldc + j];
        c = b.load ? std::fma(f[r][j], b.rs[r], c) : f[r][j] * b.rs[r];
      }
    }
  }
};

// AVX-512 VNNI: 6 rows x 2 panels of int32 accumulators for a group, folded into as many fp32 ones.
struct KernVnni {
  // int32 -> fp32 per lane (a vector-extension conversion: GCC 12's _mm512_cvtepi32_ps trips
  // -Wmaybe-uninitialized through _mm512_undefined_ps).
  typedef int32_t v16i __attribute__((vector_size(64)));
  typedef float v16f __attribute__((vector_size(64)));
  __attribute__((target("avx512f"))) static MOE_INLINE __m512 to_f32(__m512i x) {
    return reinterpret_cast<__m512>(__builtin_convertvector(reinterpret_cast<v16i>(x), v16f));
  }
  static constexpr int MR = 6, NV = 2;
  template <int R, int V>
  __attribute__((target("avx512f,avx512vnni"))) static void run(const Packed& w, const Block& b) {
    __m512 f[R][V];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
      for (int v = 0; v < V; ++v) f[r][v] = _mm512_setzero_ps();
    const int64_t quads = w.group / 4;
    for (int64_t g = 0; g < w.ng; ++g) {
      __m512i acc[R][V];
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
        for (int v = 0; v < V; ++v) acc[r][v] = _mm512_setzero_si512();
      const int64_t q0 = g * quads;
      for (int64_t q = q0; q < q0 + quads; ++q) {
        __m512i wv[V];
#pragma GCC unroll 16
        for (int v = 0; v < V; ++v) wv[v] = _mm512_loadu_si512(w.words + (b.P + v) * w.K * 4 + q * kPanel);
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) {
          int32_t a4;
          std::memcpy(&a4, b.a + r * w.K + 4 * q, 4);
          const __m512i av = _mm512_set1_epi32(a4);
#pragma GCC unroll 16
          for (int v = 0; v < V; ++v) acc[r][v] = _mm512_dpbusd_epi32(acc[r][v], wv[v], av);
        }
      }
      __m512i gc[R];
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) gc[r] = _mm512_set1_epi32(b.gc[r * w.ng + g]);
#pragma GCC unroll 16
      for (int v = 0; v < V; ++v) {
        const __m512 sc = _mm512_maskz_cvtph_ps(
            0xFFFF,
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.scales + ((b.P + v) * w.ng + g) * kPanel)));
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r)
          f[r][v] = _mm512_fmadd_ps(to_f32(_mm512_sub_epi32(acc[r][v], gc[r])), sc, f[r][v]);
      }
    }
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const __m512 s = _mm512_set1_ps(b.rs[r]);
#pragma GCC unroll 16
      for (int v = 0; v < V; ++v) {
        float* c = b.c + r * b.ldc + 16 * v;
        _mm512_storeu_ps(
            c, b.load ? _mm512_fmadd_ps(f[r][v], s, _mm512_loadu_ps(c)) : _mm512_mul_ps(f[r][v], s));
      }
    }
  }
};

using KernFn = void (*)(const Packed&, const Block&);

// Rows [i0, i0 + mc) of the call quantized to signed int8 at q (mc, K), 128 times each group's sum of
// codes at gc (mc, ng) and the rows' scales at rs.
template <bool kAvx512>
MOE_INLINE void quantize_rows(const Problem& p, int64_t i0, int64_t mc, float* h, int8_t* q, int32_t* gc,
                              float* rs) {
  const int64_t K = p.K, G = p.W.group, ng = K / G;
  thread_local std::vector<float> gs_buf;
  float* gs = scratch(gs_buf, ng);  // a row's group sums (exact in fp32)
  for (int64_t i = 0; i < mc; ++i) {
    rs[i] = quantize_row_signed<kAvx512>(a_span(p, i0 + i, 0, K, h), K, G, q + i * K, gs);
    for (int64_t g = 0; g < ng; ++g) gc[i * ng + g] = 128 * static_cast<int32_t>(gs[g]);
  }
}

template <class Kern>
MOE_INLINE void tile_impl(const Problem& p, int64_t i0, int64_t i1, int64_t j0, int64_t j1,
                          const TileOut& out) {
  constexpr int64_t MR = Kern::MR, NV = Kern::NV;
  const int64_t mc = i1 - i0, nc = j1 - j0, K = p.K, ng = K / p.W.group;
  const Packed w = packed_of(p);
  thread_local std::vector<int8_t> q_buf;
  thread_local std::vector<float> h_buf;
  thread_local std::vector<int32_t> gc_buf;
  int8_t* q = scratch(q_buf, mc * K);      // (mc, K) activations
  float* h = scratch(h_buf, K);            // a row's pre-activation
  int32_t* gc = scratch(gc_buf, mc * ng);  // (mc, ng) 128 times their group sums
  float rs[kMC];                           // the rows' scales
  quantize_rows<std::is_same_v<Kern, KernVnni>>(p, i0, mc, h, q, gc, rs);
  run_panels<MR, NV>(mc, nc, out, [&](int64_t r, int64_t v, int64_t ip, int64_t P, float* c, int64_t ldc) {
    kern_for<Kern, KernFn>(r, v)(w, {q + ip * K, gc + ip * ng, rs + ip, j0 / kPanel + P, c, ldc, out.load});
  });
}

void tile_generic(const Problem& p, int64_t i0, int64_t i1, int64_t j0, int64_t j1, const TileOut& out) {
  tile_impl<KernGeneric>(p, i0, i1, j0, j1, out);
}

__attribute__((target("avx512f,avx512vnni"))) void tile_vnni(const Problem& p, int64_t i0, int64_t i1,
                                                             int64_t j0, int64_t j1, const TileOut& out) {
  tile_impl<KernVnni>(p, i0, i1, j0, j1, out);
}

// avx512 without VNNI (Skylake-X): the portable kernel.
void tile_avx512(const Problem& p, int64_t i0, int64_t i1, int64_t j0, int64_t j1, const TileOut& out) {
  (has_avx512_vnni() ? tile_vnni : tile_generic)(p, i0, i1, j0, j1, out);
}

// ---- amx: 32 x 32 blocks of 2 x 2 int32 tiles per group, folded into fp32 sums kept in memory ----

// The block's fp32 sums over the groups: rows [0, 32) of q (quantized, row stride K; 128 times their
// group sums at gc, row stride ng), panels P, P + 1.
template <class Unit, int V>
MOE_INLINE void amx_block(const Packed& w, const int8_t* q, const int32_t* gc, int64_t P,
                          float* f /* (32, 32) */) {
  alignas(64) int32_t c[32 * 32];  // one group's int32 block
  for (int64_t i = 0; i < 32 * 32; ++i) f[i] = 0.0f;
  for (int64_t g = 0; g < w.ng; ++g) {
    Unit::template zero<0>();
    Unit::template zero<2>();
    if constexpr (V == 2) {
      Unit::template zero<1>();
      Unit::template zero<3>();
    }
    for (int64_t k0 = g * w.group; k0 < (g + 1) * w.group; k0 += 64) {
      Unit::template load<4>(q + k0, w.K);
      Unit::template load<5>(q + 16 * w.K + k0, w.K);
      Unit::template load<6>(w.words + P * w.K * 4 + k0 / 4 * kPanel, 64);
      Unit::template dpbsud<0, 4, 6>();
      Unit::template dpbsud<2, 5, 6>();
      if constexpr (V == 2) {
        Unit::template load<7>(w.words + (P + 1) * w.K * 4 + k0 / 4 * kPanel, 64);
        Unit::template dpbsud<1, 4, 7>();
        Unit::template dpbsud<3, 5, 7>();
      }
    }
    Unit::template store<0>(c, 128);
    Unit::template store<2>(c + 16 * 32, 128);
    if constexpr (V == 2) {
      Unit::template store<1>(c + 16, 128);
      Unit::template store<3>(c + 16 * 32 + 16, 128);
    }
    for (int v = 0; v < V; ++v) {
      float sc[16];
      for (int j = 0; j < 16; ++j) sc[j] = moe::f16_to_f32(w.scales[((P + v) * w.ng + g) * kPanel + j]);
      for (int r = 0; r < 32; ++r) {
        const int32_t corr = gc[r * w.ng + g];
        for (int j = 0; j < 16; ++j) {
          float& x = f[r * 32 + 16 * v + j];
          x = std::fma(static_cast<float>(c[r * 32 + 16 * v + j] - corr), sc[j], x);
        }
      }
    }
  }
}

template <class Unit>
MOE_INLINE void tile_amx_impl(const Problem& p, int64_t i0, int64_t i1, int64_t j0, int64_t j1,
                              const TileOut& out) {
  const int64_t mc = i1 - i0, nc = j1 - j0, panels = (nc + kPanel - 1) / kPanel, K = p.K;
  const int64_t mc_pad = (mc + 31) / 32 * 32, ng = K / p.W.group;
  const Packed w = packed_of(p);
  thread_local std::vector<int8_t> q_buf;
  thread_local std::vector<float> h_buf;
  thread_local std::vector<int32_t> gc_buf;
  int8_t* q = scratch(q_buf, mc_pad * K);
  float* h = scratch(h_buf, K);
  int32_t* gc = scratch(gc_buf, mc_pad * ng);
  float rs[kMC + 32];
  // (the hardware's fold-in is compiled for AVX-512, the emulation's portable)
  quantize_rows<std::is_same_v<Unit, AmxHw>>(p, i0, mc, h, q, gc, rs);
  for (int64_t i = mc; i < mc_pad; ++i) {  // zero rows
    std::memset(q + i * K, 0, static_cast<size_t>(K));
    for (int64_t g = 0; g < ng; ++g) gc[i * ng + g] = 0;
    rs[i] = 0.0f;
  }
  alignas(64) float f[32 * 32];
  Unit::begin();
  for (int64_t P = 0; P < panels; P += 2) {
    const int64_t v = panels - P < 2 ? panels - P : 2;
    const int64_t cols = nc - P * kPanel < v * kPanel ? nc - P * kPanel : v * kPanel;
    for (int64_t ip = 0; ip < mc; ip += 32) {
      if (v == 2) {
        amx_block<Unit, 2>(w, q + ip * K, gc + ip * ng, j0 / kPanel + P, f);
      } else {
        amx_block<Unit, 1>(w, q + ip * K, gc + ip * ng, j0 / kPanel + P, f);
      }
      const int64_t r = mc - ip < 32 ? mc - ip : 32;
      for (int64_t ii = 0; ii < r; ++ii) {
        float* c = out.c + (ip + ii) * out.ldc + P * kPanel;
        for (int64_t j = 0; j < cols; ++j)
          c[j] = out.load ? std::fma(f[ii * 32 + j], rs[ip + ii], c[j]) : f[ii * 32 + j] * rs[ip + ii];
      }
    }
  }
  Unit::end();
}

// The tiles' fp32 fold-in compiled for AVX-512 (every CPU with AMX has it); the emulation portable.
__attribute__((target("avx512f,fma"))) void tile_amx_hw(const Problem& p, int64_t i0, int64_t i1, int64_t j0,
                                                        int64_t j1, const TileOut& out) {
  tile_amx_impl<AmxHw>(p, i0, i1, j0, j1, out);
}

void tile_amx(const Problem& p, int64_t i0, int64_t i1, int64_t j0, int64_t j1, const TileOut& out) {
  if (p.W.group % 64 != 0 || i1 - i0 < kAmxMinRows) return tile_avx512(p, i0, i1, j0, j1, out);
  if (amx_emulated()) return tile_amx_impl<AmxEmu>(p, i0, i1, j0, j1, out);
  tile_amx_hw(p, i0, i1, j0, j1, out);
}

}  // namespace

const Format& int8_packed_format() {
  static const Format f{.mc = kMC,
                        .nc = kNC,
                        .widen = true,
                        .min_parallel = 0,
                        .family = Family::Quant,
                        .tile = {&tile_generic, &tile_generic, &tile_avx512, nullptr, &tile_amx}};
  return f;
}

}  // namespace moe::kernels::cpu::wgemm
