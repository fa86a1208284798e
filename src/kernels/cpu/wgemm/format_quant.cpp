// The int8 and int4 weight formats of grouped_gemm_w (engine.h): fp32 activations, int8/int4 weights
// with f16 group scales (ops_quant.h), fp32 sums.
//
// Decoding multiplies a few rows by an expert's whole weight matrix, so the kernel is bound by reading
// the packed weights: it reads them once per tile, dequantises them in registers and multiplies them
// with every row of the tile at once (no packed copy of W is made). A tile (from the engine) is at
// most kMS rows and a multiple of kTileCols columns; it walks its columns in blocks of kNB and, for each
// block, either dequantises in registers inside the micro-kernel (up to kDirectMaxRows rows, kDirectRows at a
// time) or first into a buffer of the block's columns that the micro-kernel then reads for every group of
// kDirectRows rows. format_quant_body.inc has the kernel and its summation order (the same on both paths).
//
// The kernel body is compiled once per instruction set: included three times, each time in its own
// namespace with that set's vector operations (Vx) and under a target pragma, and the set is picked
// at run time from the CPU's features. The file is compiled with -ffp-contract=off (CMakeLists.txt),
// so the portable path adds and multiplies exactly as written; the SIMD paths use explicit FMAs.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/cpu/wgemm/engine.h"
#include "kernels/quant_format.h"
#include "moe/core/dtype.h"

#define MOE_INLINE inline __attribute__((always_inline))

namespace moe::kernels::cpu::wgemm {

namespace {

constexpr int64_t kNB = 16;            // columns per block of scales
constexpr int64_t kMS = 64;            // rows per tile (the activation copy holds kMS rows of K)
constexpr int64_t kTileCols = 64;      // columns per tile (at least; the engine widens them)
constexpr int64_t kDirectRows = 4;     // rows of the micro-kernel
constexpr int64_t kDirectMaxRows = 8;  // up to this many rows: dequantise in registers

// One tile, as the kernel sees it.
struct Ctx {
  int64_t N = 0, K = 0, group = 64, ng = 0;  // ng = K / group
  const uint8_t* q = nullptr;                // row n at q + n * q_ld
  int64_t q_ld = 0;                          // K (int8) or K / 2 (int4) bytes
  const uint16_t* scales = nullptr;          // f16 (N, ng)
  const uint16_t* mins = nullptr;            // f16 (N, ng), int4
  float* C = nullptr;                        // the tile: column j at C + (j - j_base), row stride ldc
  int64_t ldc = 0, j_base = 0;
  bool load = false;  // add to the tile (else overwrite it)
};

Ctx context(const Problem& p, int64_t j0, const TileOut& out) {
  Ctx x;
  x.N = p.N;
  x.K = p.K;
  x.group = p.W.group;
  x.ng = p.K / p.W.group;
  x.q = static_cast<const uint8_t*>(p.W.data);
  x.q_ld = p.W.format == WeightFormat::Int8 ? p.K : p.K / 2;
  x.scales = p.W.scales;
  x.mins = p.W.mins;
  x.C = out.c;
  x.ldc = out.ldc;
  x.j_base = j0;
  x.load = out.load;
  return x;
}

// ---- portable: 8 lanes in plain arrays (the compiler vectorizes them with what the target has) ----
namespace generic_isa {

struct Vx {
  static constexpr int L = 8;
  struct V {
    float v[L];
  };
  static constexpr int nr(int mr) { return mr == 1 ? 4 : 2; }  // columns per micro-kernel
  static MOE_INLINE V zero() { return bcast(0.0f); }
  static MOE_INLINE V bcast(float f) {
    V r;
    for (int l = 0; l < L; ++l) r.v[l] = f;
    return r;
  }
  static MOE_INLINE V load(const float* p) {
    V r;
    std::memcpy(r.v, p, sizeof(r.v));
    return r;
  }
  static MOE_INLINE void store(float* p, const V& v) { std::memcpy(p, v.v, sizeof(v.v)); }
  static MOE_INLINE V fma(const V& a, const V& b, const V& c) {  // c + a · b, two roundings
    V r;
    for (int l = 0; l < L; ++l) r.v[l] = c.v[l] + a.v[l] * b.v[l];
    return r;
  }
  static MOE_INLINE float hsum(const V& v) {
    float t[4];
    for (int l = 0; l < 4; ++l) t[l] = v.v[l] + v.v[l + 4];
    return (t[0] + t[2]) + (t[1] + t[3]);
  }
  struct G4 {  // an int4 group: scale and min
    float s, m;
  };
  static MOE_INLINE G4 group4(float s, float m) { return {s, m}; }
  static MOE_INLINE void deq4(const uint8_t* q, const G4& g, V& lo, V& hi) {
    for (int l = 0; l < L; ++l) {
      lo.v[l] = quant::dequant4(static_cast<uint8_t>(q[l] & 15u), g.s, g.m);
      hi.v[l] = quant::dequant4(static_cast<uint8_t>(q[l] >> 4), g.s, g.m);
    }
  }
  static MOE_INLINE void deq8(const int8_t* q, const V& s, V& lo, V& hi) {
    for (int l = 0; l < L; ++l) {
      lo.v[l] = quant::dequant8(q[l], s.v[l]);
      hi.v[l] = quant::dequant8(q[L + l], s.v[l]);
    }
  }
  static void cvt_f16(const uint16_t* src, int64_t n, float* dst) {
    for (int64_t i = 0; i < n; ++i) dst[i] = f16_to_f32(src[i]);
  }
};

#include "kernels/cpu/wgemm/format_quant_body.inc"

}  // namespace generic_isa

// ---- AVX2 + FMA + F16C: 8 lanes, 16 registers ----
namespace avx2_isa {

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#endif

struct Vx {
  static constexpr int L = 8;
  using V = __m256;
  static constexpr int nr(int mr) { return mr == 1 ? 4 : 2; }
  static MOE_INLINE V zero() { return _mm256_setzero_ps(); }
  static MOE_INLINE V bcast(float f) { return _mm256_set1_ps(f); }
  static MOE_INLINE V load(const float* p) { return _mm256_loadu_ps(p); }
  static MOE_INLINE void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static MOE_INLINE V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static MOE_INLINE float hsum(V v) {
    __m128 t = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));  // l + (l + 4)
    t = _mm_add_ps(t, _mm_movehl_ps(t, t));                                         // (0 + 2), (1 + 3)
    t = _mm_add_ss(t, _mm_shuffle_ps(t, t, 1));
    return _mm_cvtss_f32(t);
  }
  struct G4 {  // an int4 group: scale and min
    V s, m;
  };
  static MOE_INLINE G4 group4(float s, float m) { return {bcast(s), bcast(m)}; }
  static MOE_INLINE void deq4(const uint8_t* q, const G4& g, V& lo, V& hi) {
    const __m256i x = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q)));  // 8 bytes
    lo = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(x, _mm256_set1_epi32(15))), g.s, g.m);
    hi = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(x, 4)), g.s, g.m);
  }
  static MOE_INLINE void deq8(const int8_t* q, V s, V& lo, V& hi) {
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q));
    lo = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b)), s);
    hi = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(b, b))), s);
  }
  static void cvt_f16(const uint16_t* src, int64_t n, float* dst) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
      _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
    for (; i < n; ++i) dst[i] = f16_to_f32(src[i]);
  }
};

#include "kernels/cpu/wgemm/format_quant_body.inc"

#if defined(__clang__)
#pragma clang attribute pop
#endif
#pragma GCC pop_options

}  // namespace avx2_isa

// ---- AVX-512F: 16 lanes, 32 registers ----
namespace avx512_isa {

#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma,f16c")
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx2,fma,f16c"))), apply_to = function)
#endif

struct Vx {
  static constexpr int L = 16;
  using V = __m512;
  // A vector-extension shift: GCC 12's _mm512_srli_epi32 trips -Wmaybe-uninitialized.
  // The zero-masked forms (with every lane selected) of the conversions, for the same reason.
  typedef uint32_t v16u __attribute__((vector_size(64)));
  static constexpr __mmask16 kAll = 0xffff;
  static constexpr int nr(int mr) { return mr == 1 ? 8 : 4; }
  static MOE_INLINE V zero() { return _mm512_setzero_ps(); }
  static MOE_INLINE V bcast(float f) { return _mm512_set1_ps(f); }
  static MOE_INLINE V load(const float* p) { return _mm512_loadu_ps(p); }
  static MOE_INLINE void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static MOE_INLINE V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  // Through memory: GCC 12's 512-bit extract intrinsics trip -Wuninitialized. Once per output element.
  static MOE_INLINE float hsum(V v) {
    alignas(64) float t[16];
    _mm512_store_ps(t, v);
    for (int l = 0; l < 8; ++l) t[l] += t[l + 8];
    for (int l = 0; l < 4; ++l) t[l] += t[l + 4];
    return (t[0] + t[2]) + (t[1] + t[3]);
  }
  // An int4 group as a table: lane i holds the weight that code i stands for, fma(i, scale, min) (the
  // formula of quant_format.h: i · scale is exact). A code then becomes its weight with one permute
  // (vpermps reads the low 4 bits of each index), instead of a conversion and an FMA.
  struct G4 {
    V table;
  };
  static MOE_INLINE G4 group4(float s, float m) {
    const V codes = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    return {_mm512_fmadd_ps(codes, bcast(s), bcast(m))};
  }
  static MOE_INLINE void deq4(const uint8_t* q, const G4& g, V& lo, V& hi) {
    const __m512i x = _mm512_maskz_cvtepu8_epi32(kAll, _mm_loadu_si128(reinterpret_cast<const __m128i*>(q)));
    const __m512i h = reinterpret_cast<__m512i>(reinterpret_cast<v16u>(x) >> 4);
    lo = _mm512_maskz_permutexvar_ps(kAll, x, g.table);  // the low nibble; bits 4..7 are ignored
    hi = _mm512_maskz_permutexvar_ps(kAll, h, g.table);
  }
  static MOE_INLINE void deq8(const int8_t* q, V s, V& lo, V& hi) {
    lo = _mm512_mul_ps(
        _mm512_maskz_cvtepi32_ps(
            kAll, _mm512_maskz_cvtepi8_epi32(kAll, _mm_loadu_si128(reinterpret_cast<const __m128i*>(q)))),
        s);
    hi = _mm512_mul_ps(
        _mm512_maskz_cvtepi32_ps(kAll, _mm512_maskz_cvtepi8_epi32(
                                           kAll, _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + 16)))),
        s);
  }
  static void cvt_f16(const uint16_t* src, int64_t n, float* dst) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
      _mm512_storeu_ps(dst + i, _mm512_maskz_cvtph_ps(
                                    kAll, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i))));
    for (; i < n; ++i) dst[i] = f16_to_f32(src[i]);
  }
};

#include "kernels/cpu/wgemm/format_quant_body.inc"

#if defined(__clang__)
#pragma clang attribute pop
#endif
#pragma GCC pop_options

}  // namespace avx512_isa

}  // namespace

const Format& int8_format() {
  static const Format f{.mc = kMS,
                        .nc = kTileCols,
                        .widen = true,
                        .min_parallel = int64_t{1} << 19,  // ~2^18 multiply-adds per thread of two
                        .family = Family::Quant,
                        .tile = {&generic_isa::tile<8>, &avx2_isa::tile<8>, &avx512_isa::tile<8>, nullptr}};
  return f;
}

const Format& int4_format() {
  static const Format f{.mc = kMS,
                        .nc = kTileCols,
                        .widen = true,
                        .min_parallel = int64_t{1} << 19,
                        .family = Family::Quant,
                        .tile = {&generic_isa::tile<4>, &avx2_isa::tile<4>, &avx512_isa::tile<4>, nullptr}};
  return f;
}

}  // namespace moe::kernels::cpu::wgemm
