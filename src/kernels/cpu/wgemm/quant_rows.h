// Activation rows quantized to int8 for the integer-packed formats (W8A8, W4A8): quant::quantize_act_row
// 16 values at a time with AVX-512, for the vpdpbusd kernels. The same scale and the same codes: the
// maximum is exact, and the product, clamp and round to nearest even are the same IEEE operations as
// the portable loop's, so every path quantizes a row to the same bytes.
// (AVX512-BW and -VL: every CPU with AVX512-VNNI has them.)
#pragma once

#include <immintrin.h>

#include <cmath>
#include <cstdint>

#include "kernels/quant_format.h"

namespace moe::kernels::cpu::wgemm {

// (GCC 12 reports the intrinsics' internal undefined vectors as maybe-uninitialized.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// Codes of row a (K) at q: q + offset (offset 128: the unsigned bytes of W8A8; 0: the signed codes of
// W4A8). With gs, the sums of the codes per group of `group` are stored there (as fp32, exact). Returns
// the row's scale (quant::quantize_act_row's: NaN for a non-finite row, whose codes are then 0).
__attribute__((target("avx512f,avx512bw,avx512vl"))) inline float quantize_row_avx512(
    const float* a, int64_t K, int offset, uint8_t* q, int64_t group = 0, float* gs = nullptr) {
  const __m512 inf = _mm512_set1_ps(INFINITY);
  __m512 vmax = _mm512_setzero_ps();
  bool finite = true;
  for (int64_t k = 0; k < K; k += 16) {
    const __mmask16 m = K - k >= 16 ? __mmask16(0xffff) : __mmask16((1u << (K - k)) - 1u);
    const __m512 v = _mm512_abs_ps(_mm512_maskz_loadu_ps(m, a + k));
    finite = finite && _mm512_cmp_ps_mask(v, inf, _CMP_LT_OQ) == 0xffff;  // NaN compares false
    vmax = _mm512_max_ps(vmax, v);
  }
  const float amax = _mm512_reduce_max_ps(vmax);
  if (!finite || amax == 0.0f) {
    for (int64_t k = 0; k < K; ++k) q[k] = static_cast<uint8_t>(offset);
    for (int64_t g = 0; gs && g < K / group; ++g) gs[g] = 0.0f;
    return finite ? 0.0f : std::nanf("");
  }
  const float inv = 127.0f / amax;
  const __m512 vinv = _mm512_set1_ps(inv), hi = _mm512_set1_ps(127.0f), lo = _mm512_set1_ps(-127.0f);
  const __m512i off = _mm512_set1_epi32(offset);
  __m512i gsum = _mm512_setzero_si512();
  for (int64_t k = 0; k < K; k += 16) {
    const __mmask16 m = K - k >= 16 ? __mmask16(0xffff) : __mmask16((1u << (K - k)) - 1u);
    __m512 x = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, a + k), vinv);
    x = _mm512_min_ps(_mm512_max_ps(x, lo), hi);
    const __m512i c =
        _mm512_cvtps_epi32(_mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    _mm_mask_storeu_epi8(q + k, m, _mm512_cvtepi32_epi8(_mm512_add_epi32(c, off)));
    if (gs) {
      gsum = _mm512_add_epi32(gsum, c);
      if ((k + 16) % group == 0) {
        gs[(k + 16) / group - 1] = static_cast<float>(_mm512_reduce_add_epi32(gsum));
        gsum = _mm512_setzero_si512();
      }
    }
  }
  return amax / 127.0f;
}
#pragma GCC diagnostic pop

// Row a (K) quantized to the signed int8 codes at q (K) and each group's sum of codes into gs (K / group,
// exact in fp32); returns the row's scale (NaN for a non-finite row, whose codes are then 0). The
// portable loop (quant::quantize_act_row) or, with kAvx512, quantize_row_avx512: the same bytes and sums.
template <bool kAvx512>
float quantize_row_signed(const float* a, int64_t K, int64_t group, int8_t* q, float* gs) {
  auto* u = reinterpret_cast<uint8_t*>(q);
  if constexpr (kAvx512) {
    return quantize_row_avx512(a, K, 0, u, group, gs);
  } else {
    const float s = quant::quantize_act_row(a, K, u);
    for (int64_t k = 0; k < K; ++k) u[k] ^= 0x80u;  // q + 128 -> q, two's complement
    for (int64_t g = 0; g < K / group; ++g) {
      int32_t sum = 0;
      for (int64_t k = g * group; k < (g + 1) * group; ++k) sum += q[k];
      gs[g] = static_cast<float>(sum);  // |sum| <= 1024 · 127: exact
    }
    return s;
  }
}

}  // namespace moe::kernels::cpu::wgemm
