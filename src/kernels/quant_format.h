// The dequantisation formulas of moe/kernels/ops_quant.h, shared by quantize_matrix /
// dequantize_matrix, the reference GEMM and the portable path of the Cpu kernel, so that every
// place computes the same fp32 weight.
//
// q · scale is exact in fp32 (q has at most 8 significant bits, an f16 scale 11), so w has a single
// rounding (none for int8) whether or not the compiler fuses the multiply and the add.
#pragma once

#include <cstdint>

namespace moe::kernels::quant {

// The stored integer of element k of an int4 row (two per byte, low nibble = even k).
inline uint8_t int4_at(const uint8_t* row, int64_t k) {
  const uint8_t b = row[k >> 1];
  return (k & 1) ? static_cast<uint8_t>(b >> 4) : static_cast<uint8_t>(b & 15u);
}

inline float dequant8(int8_t q, float scale) { return static_cast<float>(q) * scale; }
inline float dequant4(uint8_t q, float scale, float min) { return static_cast<float>(q) * scale + min; }

}  // namespace moe::kernels::quant
