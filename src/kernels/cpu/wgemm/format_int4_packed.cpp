// The int4-packed weight format of grouped_gemm_w (engine.h): W4A8 on integer dot products. The
// weights are packed once (pack_int4_weights, moe/kernels/weight_view.h) in panels of 16 columns whose
// words hold 8 consecutive k of a column as nibbles (byte b: k = 8r + b low, 8r + 4 + b high); a call
// quantizes its activation rows to signed int8 (one scale per row, quant::quantize_act_row) and
// multiplies them with vpdpbusd, the nibbles masked out to unsigned bytes (0..15) and the activations
// the signed operand. The weight is w = q · scale + min per group, so a group's term is
//     scale · Σ_k a_k q_k  +  min · Σ_k a_k
// with both sums exact in int32 (|Σ a q| <= 1024 · 127 · 15 < 2^24, so exact in fp32 too). Decoding
// reads half the bytes of int8 weights for the same integer work: one 64-byte load feeds two
// vpdpbusd per row.
//
// A tile (at most kMC rows of one expert and a multiple of 16 columns, from the engine) is computed
//   quantize its rows (the whole K of each, after the pre-activation if any) and sum each group,
//   for each group of NV panels and each MR rows, over the groups g of K in order:
//     i[r, n] = Σ_{k in g} q_rk · w_nk                                         (int32, exact)
//     f[r, n] = fma(float(i[r, n]), scale[n, g], f[r, n]);  f[r, n] = fma(float(Σ_{k in g} q_rk), min[n, g],
//     f[r, n])
//   then C[r, n] = f · s_r (or fma(f, s_r, C) to add).
// The portable kernel and vpdpbusd run this order, so they give the same bits, for any thread count;
// a row's result does not depend on the other rows (batch invariance).
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

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

// The expert's packed data as the kernels read it.
struct Packed {
  const uint32_t* words;   // panel P at words + P * (K / 8) * 16
  const uint16_t* scales;  // f16; panel P, group g at scales + (P * ng + g) * 16
  const uint16_t* mins;    // likewise
  int64_t K, group, ng;
};

Packed packed_of(const Problem& p) {
  const auto* base = static_cast<const uint8_t*>(p.W.data);
  const int64_t words = packed_int4_words_bytes(p.N, p.K),
                params = packed_group_param_bytes(p.N, p.K, p.W.group);
  return {reinterpret_cast<const uint32_t*>(base),
          reinterpret_cast<const uint16_t*>(base + words),
          reinterpret_cast<const uint16_t*>(base + words + params),
          p.K,
          p.W.group,
          p.K / p.W.group};
}

// One block: R rows of quantized activations (a + r * K, signed), their group sums (gs + r * ng, as
// fp32) and scales (rs) x V panels from panel P.
struct Block {
  const int8_t* a;
  const float* gs;
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
        const auto* panel = reinterpret_cast<const uint8_t*>(w.words + (b.P + v) * (w.K / 8) * kPanel);
        const uint16_t* sc = w.scales + ((b.P + v) * w.ng + g) * kPanel;
        const uint16_t* mn = w.mins + ((b.P + v) * w.ng + g) * kPanel;
        for (int r = 0; r < R; ++r) {
          const int8_t* a = b.a + r * w.K;
          for (int j = 0; j < 16; ++j) {
            int32_t acc = 0;
            for (int64_t k = g * w.group; k < (g + 1) * w.group; ++k) {
              const uint8_t byte = panel[(k / 8 * kPanel + j) * 4 + k % 4];
              acc += int32_t{a[k]} * int32_t{k % 8 >= 4 ? byte >> 4 : byte & 15};
            }
            float& x = f[r][16 * v + j];
            x = std::fma(static_cast<float>(acc), moe::f16_to_f32(sc[j]), x);
            x = std::fma(b.gs[r * w.ng + g], moe::f16_to_f32(mn[j]), x);
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

// AVX-512 VNNI: 4 rows x 2 panels of int32 accumulators for a group, folded into as many fp32 ones.
struct KernVnni {
  typedef int32_t v16i __attribute__((vector_size(64)));
  typedef float v16f __attribute__((vector_size(64)));
  typedef uint32_t v16u __attribute__((vector_size(64)));
  // (Vector-extension conversion, masks and shifts: GCC 12's intrinsics for them trip
  // -Wmaybe-uninitialized through their undefined vectors.)
  __attribute__((target("avx512f"))) static MOE_INLINE __m512 to_f32(__m512i x) {
    return reinterpret_cast<__m512>(__builtin_convertvector(reinterpret_cast<v16i>(x), v16f));
  }
  static constexpr int MR = 4, NV = 2;
  template <int R, int V>
  __attribute__((target("avx512f,avx512vnni"))) static void run(const Packed& w, const Block& b) {
    __m512 f[R][V];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
      for (int v = 0; v < V; ++v) f[r][v] = _mm512_setzero_ps();
    const v16u nib = {0x0f0f0f0fu, 0x0f0f0f0fu, 0x0f0f0f0fu, 0x0f0f0f0fu, 0x0f0f0f0fu, 0x0f0f0f0fu,
                      0x0f0f0f0fu, 0x0f0f0f0fu, 0x0f0f0f0fu, 0x0f0f0f0fu, 0x0f0f0f0fu, 0x0f0f0f0fu,
                      0x0f0f0f0fu, 0x0f0f0f0fu, 0x0f0f0f0fu, 0x0f0f0f0fu};
    const int64_t rows = w.group / 8;  // word rows per group
    for (int64_t g = 0; g < w.ng; ++g) {
      // (the low and the high nibbles in their own accumulators: two dependency chains of vpdpbusd
      // per block instead of one, added at the group's end, exactly)
      __m512i acc[R][V], acc_hi[R][V];
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
        for (int v = 0; v < V; ++v) acc[r][v] = acc_hi[r][v] = _mm512_setzero_si512();
      for (int64_t q = g * rows; q < (g + 1) * rows; ++q) {
        __m512i lo[V], hi[V];
#pragma GCC unroll 16
        for (int v = 0; v < V; ++v) {
          v16u x;
          std::memcpy(&x, w.words + ((b.P + v) * (w.K / 8) + q) * kPanel, 64);
          lo[v] = reinterpret_cast<__m512i>(x & nib);
          hi[v] = reinterpret_cast<__m512i>((x >> 4) & nib);
        }
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) {
          int32_t a4[2];
          std::memcpy(a4, b.a + r * w.K + 8 * q, 8);
          const __m512i al = _mm512_set1_epi32(a4[0]), ah = _mm512_set1_epi32(a4[1]);
#pragma GCC unroll 16
          for (int v = 0; v < V; ++v) {
            acc[r][v] = _mm512_dpbusd_epi32(acc[r][v], lo[v], al);
            acc_hi[r][v] = _mm512_dpbusd_epi32(acc_hi[r][v], hi[v], ah);
          }
        }
      }
#pragma GCC unroll 16
      for (int v = 0; v < V; ++v) {
        const __m512 sc = _mm512_maskz_cvtph_ps(
            0xFFFF,
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.scales + ((b.P + v) * w.ng + g) * kPanel)));
        const __m512 mn = _mm512_maskz_cvtph_ps(
            0xFFFF,
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.mins + ((b.P + v) * w.ng + g) * kPanel)));
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) {
          f[r][v] = _mm512_fmadd_ps(to_f32(_mm512_add_epi32(acc[r][v], acc_hi[r][v])), sc, f[r][v]);
          f[r][v] = _mm512_fmadd_ps(_mm512_set1_ps(b.gs[r * w.ng + g]), mn, f[r][v]);
        }
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

template <class Kern>
MOE_INLINE void tile_impl(const Problem& p, int64_t i0, int64_t i1, int64_t j0, int64_t j1,
                          const TileOut& out) {
  constexpr int64_t MR = Kern::MR, NV = Kern::NV;
  const int64_t mc = i1 - i0, nc = j1 - j0, K = p.K;
  const int64_t ng = K / p.W.group;
  const Packed w = packed_of(p);
  thread_local std::vector<int8_t> q_buf;
  thread_local std::vector<float> h_buf, gs_buf;
  int8_t* q = scratch(q_buf, mc * K);    // (mc, K) activations
  float* h = scratch(h_buf, K);          // a row's pre-activation
  float* gs = scratch(gs_buf, mc * ng);  // (mc, ng) their group sums
  float rs[kMC];                         // the rows' scales
  for (int64_t i = 0; i < mc; ++i)
    rs[i] = quantize_row_signed<std::is_same_v<Kern, KernVnni>>(a_span(p, i0 + i, 0, K, h), K, p.W.group,
                                                                q + i * K, gs + i * ng);
  run_panels<MR, NV>(mc, nc, out, [&](int64_t r, int64_t v, int64_t ip, int64_t P, float* c, int64_t ldc) {
    kern_for<Kern, KernFn>(r, v)(w, {q + ip * K, gs + ip * ng, rs + ip, j0 / kPanel + P, c, ldc, out.load});
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

}  // namespace

const Format& int4_packed_format() {
  // No AMX tiles: TDPBSUD reads whole bytes, and the nibbles would have to be unpacked into a tile
  // first; on AMX machines the vpdpbusd kernel runs (the slot below).
  static const Format f{.mc = kMC,
                        .nc = kNC,
                        .widen = true,
                        .min_parallel = 0,
                        .family = Family::Quant,
                        .tile = {&tile_generic, &tile_generic, &tile_avx512, nullptr, nullptr}};
  return f;
}

}  // namespace moe::kernels::cpu::wgemm
