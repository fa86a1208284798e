// The dequantisation formulas of moe/kernels/ops_quant.h, shared by quantize_matrix /
// dequantize_matrix, the reference GEMM and the portable path of the Cpu kernel, so that every
// place computes the same fp32 weight.
//
// q · scale is exact in fp32 (q has at most 8 significant bits, an f16 scale 11), so w has a single
// rounding (none for int8) whether or not the compiler fuses the multiply and the add.
#pragma once

#include <cmath>
#include <cstdint>

namespace moe::kernels::quant {

// The stored integer of element k of an int4 row (two per byte, low nibble = even k).
inline uint8_t int4_at(const uint8_t* row, int64_t k) {
  const uint8_t b = row[k >> 1];
  return (k & 1) ? static_cast<uint8_t>(b >> 4) : static_cast<uint8_t>(b & 15u);
}

inline float dequant8(int8_t q, float scale) { return static_cast<float>(q) * scale; }
inline float dequant4(uint8_t q, float scale, float min) { return static_cast<float>(q) * scale + min; }

// W8A8 (moe/kernels/weights.h, int8-packed): quantizes one activation row to int8 with one scale,
// s = max |a| / 127, q = a / s rounded to nearest even, stored as q + 128 (unsigned, the operand of the
// u8 x s8 dot products). Returns s; NaN when the row has a non-finite value (its q are then 0). The
// reference and every Cpu path call this one function, so they quantize identically.
inline float quantize_act_row(const float* a, int64_t K, uint8_t* q_plus_128) {
  float amax = 0.0f;
  bool finite = true;
  for (int64_t k = 0; k < K; ++k) {
    const float v = std::fabs(a[k]);
    finite = finite && v <= 3.4028234663852886e38f;  // false for NaN and inf
    amax = v > amax ? v : amax;
  }
  if (!finite || amax == 0.0f) {
    for (int64_t k = 0; k < K; ++k) q_plus_128[k] = 128;
    return finite ? 0.0f : std::nanf("");
  }
  // Clamped first, then rounded to nearest even by adding and subtracting 1.5 · 2^23 (exact for
  // |q| <= 2^22, and the same as std::nearbyint in the default rounding mode, which the library
  // never changes): no libm call, so the loop vectorizes. The clamp between the multiply and the
  // add keeps them from being fused into one FMA.
  const float inv = 127.0f / amax, magic = 12582912.0f;
  for (int64_t k = 0; k < K; ++k) {
    float q = a[k] * inv;
    q = q > 127.0f ? 127.0f : q < -127.0f ? -127.0f : q;
    q = (q + magic) - magic;
    q_plus_128[k] = static_cast<uint8_t>(static_cast<int32_t>(q) + 128);
  }
  return amax / 127.0f;
}

}  // namespace moe::kernels::quant
