// Element types. Math is fp32 (f64 in references and gradient checks); bf16/f16/int8/int4 are
// storage types converted at load time.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>

namespace moe {

enum class DType : uint8_t { F32, F64, BF16, F16, I8, I4, I32, I64, U8 };

// Bits per element (I4 is packed two per byte, low nibble first).
int dtype_bits(DType t);
const char* dtype_name(DType t);
// Parses "f32", "float32", "bf16", ...; throws moe::Error on an unknown name.
DType dtype_from_name(const std::string& name);

template <typename T>
struct dtype_of;
template <>
struct dtype_of<float> {
  static constexpr DType value = DType::F32;
};
template <>
struct dtype_of<double> {
  static constexpr DType value = DType::F64;
};
template <>
struct dtype_of<int8_t> {
  static constexpr DType value = DType::I8;
};
template <>
struct dtype_of<int32_t> {
  static constexpr DType value = DType::I32;
};
template <>
struct dtype_of<int64_t> {
  static constexpr DType value = DType::I64;
};
template <>
struct dtype_of<uint8_t> {
  static constexpr DType value = DType::U8;
};

// bf16: the upper 16 bits of an IEEE float; conversion rounds to nearest even, NaN stays NaN.
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
inline float bf16_to_f32(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// IEEE half precision, round to nearest even, with subnormals, infinities and NaN.
uint16_t f32_to_f16(float f);
float f16_to_f32(uint16_t h);

}  // namespace moe
