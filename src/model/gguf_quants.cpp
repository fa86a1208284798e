// ggml's block layouts (ggml-common.h) and their dequantization, written from the layouts: each
// value is computed with the same float operations in the same order as ggml's reference
// dequantizers (ggml-quants.c), so the results are bit-identical to theirs (this file is compiled
// without floating-point contraction, see CMakeLists.txt).
//
//   q8_0  32 values: f16 d, i8 q[32];                      x = d · q
//   q4_0  32 values: f16 d, u8 qs[16];                     x[j] = d · ((qs[j] & 15) − 8), x[j+16]: high
//   nibble q4_K  256 values: f16 d, f16 dmin, u8 scales[12], u8 qs[128]; 8 sub-blocks of 32 with 6-bit
//         scale sc and min m: x = (d·sc)·q − (dmin·m); sub-blocks 2i and 2i+1 share the 32 bytes
//         qs[32i..32i+32) (low, then high nibbles)
//   q6_K  256 values: u8 ql[128], u8 qh[64], i8 scales[16], f16 d; x = (d·scale)·(q − 32), q 6 bits
#include <algorithm>
#include <cmath>
#include <cstring>

#include "moe/core/dtype.h"
#include "moe/core/error.h"
#include "moe/model/gguf.h"

namespace moe::gguf {

namespace {

constexpr int64_t kQK = 32;    // q8_0, q4_0
constexpr int64_t kQKK = 256;  // k-quants super-block

float half_at(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}

void put_half(uint8_t* p, float f) {
  const uint16_t h = f32_to_f16(f);
  std::memcpy(p, &h, 2);
}

void dequant_q8_0(const uint8_t* b, float* y) {
  const float d = half_at(b);
  for (int j = 0; j < kQK; ++j) y[j] = static_cast<float>(static_cast<int8_t>(b[2 + j])) * d;
}

void dequant_q4_0(const uint8_t* b, float* y) {
  const float d = half_at(b);
  const uint8_t* qs = b + 2;
  for (int j = 0; j < kQK / 2; ++j) {
    const int x0 = (qs[j] & 0x0F) - 8, x1 = (qs[j] >> 4) - 8;
    y[j] = static_cast<float>(x0) * d;
    y[j + kQK / 2] = static_cast<float>(x1) * d;
  }
}

// The 6-bit scale and min of sub-block j of a q4_K block (12 bytes pack 8 pairs).
void scale_min_k4(int j, const uint8_t* q, uint8_t& sc, uint8_t& m) {
  if (j < 4) {
    sc = q[j] & 63;
    m = q[j + 4] & 63;
  } else {
    sc = static_cast<uint8_t>((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    m = static_cast<uint8_t>((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

void dequant_q4_k(const uint8_t* b, float* y) {
  const float d = half_at(b), dmin = half_at(b + 2);
  const uint8_t* scales = b + 4;  // (12)
  const uint8_t* q = b + 16;      // (128)
  for (int j = 0, is = 0; j < kQKK; j += 64, is += 2, q += 32) {
    uint8_t sc, m;
    scale_min_k4(is, scales, sc, m);
    const float d1 = d * sc, m1 = dmin * m;
    scale_min_k4(is + 1, scales, sc, m);
    const float d2 = d * sc, m2 = dmin * m;
    for (int l = 0; l < 32; ++l) *y++ = d1 * static_cast<float>(q[l] & 0xF) - m1;
    for (int l = 0; l < 32; ++l) *y++ = d2 * static_cast<float>(q[l] >> 4) - m2;
  }
}

void dequant_q6_k(const uint8_t* b, float* y) {
  const uint8_t* ql = b;                                      // (128)
  const uint8_t* qh = b + 128;                                // (64)
  const auto* sc = reinterpret_cast<const int8_t*>(b + 192);  // (16)
  const float d = half_at(b + 208);
  for (int n = 0; n < kQKK; n += 128, y += 128, ql += 64, qh += 32, sc += 8) {
    for (int l = 0; l < 32; ++l) {
      const int is = l / 16;
      const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
      const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      y[l] = d * sc[is] * static_cast<float>(q1);
      y[l + 32] = d * sc[is + 2] * static_cast<float>(q2);
      y[l + 64] = d * sc[is + 4] * static_cast<float>(q3);
      y[l + 96] = d * sc[is + 6] * static_cast<float>(q4);
    }
  }
}

void quant_q8_0(const float* x, uint8_t* b) {
  float amax = 0;
  for (int j = 0; j < kQK; ++j) amax = std::max(amax, std::fabs(x[j]));
  const float d = amax / 127.0f, id = d != 0 ? 1.0f / d : 0.0f;
  put_half(b, d);
  for (int j = 0; j < kQK; ++j) b[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(std::roundf(x[j] * id)));
}

void quant_q4_0(const float* x, uint8_t* b) {
  float amax = 0, max = 0;
  for (int j = 0; j < kQK; ++j)
    if (amax < std::fabs(x[j])) amax = std::fabs(x[j]), max = x[j];
  const float d = max / -8.0f, id = d != 0 ? 1.0f / d : 0.0f;
  put_half(b, d);
  for (int j = 0; j < kQK / 2; ++j) {
    const auto q0 =
        static_cast<uint8_t>(std::min(15, static_cast<int>(static_cast<int8_t>(x[j] * id + 8.5f))));
    const auto q1 =
        static_cast<uint8_t>(std::min(15, static_cast<int>(static_cast<int8_t>(x[j + kQK / 2] * id + 8.5f))));
    b[2 + j] = static_cast<uint8_t>(q0 | (q1 << 4));
  }
}

}  // namespace

int64_t ggml_block_size(GgmlType t) {
  switch (t) {
    case GgmlType::F32:
    case GgmlType::F16:
    case GgmlType::BF16:
      return 1;
    case GgmlType::Q4_0:
    case GgmlType::Q8_0:
      return kQK;
    case GgmlType::Q4_K:
    case GgmlType::Q6_K:
      return kQKK;
  }
  throw Error(cat("ggml type ", static_cast<uint32_t>(t), " is not supported"));
}

int64_t ggml_block_bytes(GgmlType t) {
  switch (t) {
    case GgmlType::F32:
      return 4;
    case GgmlType::F16:
    case GgmlType::BF16:
      return 2;
    case GgmlType::Q4_0:
      return 2 + kQK / 2;  // 18
    case GgmlType::Q8_0:
      return 2 + kQK;  // 34
    case GgmlType::Q4_K:
      return 2 + 2 + 12 + kQKK / 2;  // 144
    case GgmlType::Q6_K:
      return kQKK / 2 + kQKK / 4 + kQKK / 16 + 2;  // 210
  }
  throw Error(cat("ggml type ", static_cast<uint32_t>(t), " is not supported"));
}

uint64_t ggml_row_bytes(GgmlType t, int64_t n) {
  return static_cast<uint64_t>(n / ggml_block_size(t)) * static_cast<uint64_t>(ggml_block_bytes(t));
}

void dequantize_row(GgmlType t, const uint8_t* src, int64_t n, float* dst) {
  const int64_t bs = ggml_block_size(t), bb = ggml_block_bytes(t);
  MOE_CHECK(n % bs == 0, "dequantize ", ggml_type_name(static_cast<uint32_t>(t)), ": ", n,
            " values is not a whole number of blocks of ", bs);
  switch (t) {
    case GgmlType::F32:
      std::memcpy(dst, src, static_cast<size_t>(n) * 4);
      return;
    case GgmlType::F16:
      for (int64_t i = 0; i < n; ++i) dst[i] = half_at(src + 2 * i);
      return;
    case GgmlType::BF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        dst[i] = bf16_to_f32(h);
      }
      return;
    default:
      break;
  }
  void (*block)(const uint8_t*, float*) = t == GgmlType::Q8_0   ? dequant_q8_0
                                          : t == GgmlType::Q4_0 ? dequant_q4_0
                                          : t == GgmlType::Q4_K ? dequant_q4_k
                                                                : dequant_q6_k;
  for (int64_t i = 0; i < n / bs; ++i) block(src + i * bb, dst + i * bs);
}

void quantize_row(GgmlType t, const float* src, int64_t n, uint8_t* dst) {
  const int64_t bs = ggml_block_size(t), bb = ggml_block_bytes(t);
  MOE_CHECK(n % bs == 0, "quantize ", ggml_type_name(static_cast<uint32_t>(t)), ": ", n,
            " values is not a whole number of blocks of ", bs);
  switch (t) {
    case GgmlType::F32:
      std::memcpy(dst, src, static_cast<size_t>(n) * 4);
      return;
    case GgmlType::F16:
      for (int64_t i = 0; i < n; ++i) put_half(dst + 2 * i, src[i]);
      return;
    case GgmlType::BF16:
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t h = f32_to_bf16(src[i]);
        std::memcpy(dst + 2 * i, &h, 2);
      }
      return;
    case GgmlType::Q8_0:
      for (int64_t i = 0; i < n / bs; ++i) quant_q8_0(src + i * bs, dst + i * bb);
      return;
    case GgmlType::Q4_0:
      for (int64_t i = 0; i < n / bs; ++i) quant_q4_0(src + i * bs, dst + i * bb);
      return;
    default:
      throw Error(cat("quantize: writing ", ggml_type_name(static_cast<uint32_t>(t)),
                      " is not supported (f32, f16, bf16, q8_0 and q4_0 are)"));
  }
}

}  // namespace moe::gguf
