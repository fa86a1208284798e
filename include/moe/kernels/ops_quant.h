// Group-wise weight-only quantized GEMMs: weights (N, K) stored in int8 or int4 with one fp16 scale
// (and, for int4, one fp16 offset) per group of G consecutive k of a row; activations and outputs
// fp32, accumulation fp32 (double in the reference).
//
// Formats (w is the dequantised weight, q the stored integer, g = k / G the group):
//   int8: q in [-127, 127] (int8 two's complement), w = q · scale[n, g]             (symmetric)
//   int4: q in [0, 15], two per byte (low nibble = even k), w = q · scale[n, g] + min[n, g]
//         (asymmetric: min is the group's minimum, scale = (max - min) / 15)
// scale and min are IEEE half (uint16_t bit patterns, moe::f16_to_f32). Bytes per weight:
// int8 1 + 2/G, int4 0.5 + 4/G (G = 64: 28% of bf16's 2 bytes).
//
// Every product a · w uses the dequantised weight w computed in fp32 as above. The Cpu backend's
// result for a row of C does not depend on M, on the other rows, or on the thread count (bit-identical),
// so a sequence's output is the same alone or in a batch.
#pragma once

#include <cstdint>
#include <string>

#include "moe/core/tensor.h"
#include "moe/kernels/ops.h"

namespace moe::kernels {

// A view of one quantized (N, K) matrix. K % group == 0; group is a multiple of 32.
struct QuantWeight {
  int bits = 4;  // 8 or 4
  int64_t N = 0, K = 0, group = 64;
  const uint8_t* q = nullptr;        // int8: (N, K) bytes (int8_t); int4: (N, K / 2) bytes
  const uint16_t* scales = nullptr;  // f16 (N, K / group)
  const uint16_t* mins = nullptr;    // f16 (N, K / group); int4 only (null for int8)
};

// The same matrix as a one-expert WeightView of the int8 / int4 format (what pack_int_weights reads).
inline WeightView weight_view(const QuantWeight& w) {
  return {.format = w.bits == 8 ? WeightFormat::Int8 : WeightFormat::Int4,
          .N = w.N,
          .K = w.K,
          .data = w.q,
          .scales = w.scales,
          .mins = w.mins,
          .group = w.group};
}

// gemm_qw: C (M, N) = beta · C + A_rows (M, K) · dequant(W)^T, where A_rows[m] = A[gather ? gather[m] : m]:
// grouped_gemm_w (weights.h) with one expert and an int8 / int4 WeightView, which it calls.
// beta == 0 overwrites C (NaN in C does not propagate).
struct GemmQuantArgs {
  int64_t M = 0;
  const float* A = nullptr;  // rows of length K, row stride lda
  int64_t lda = 0;
  const int32_t* gather = nullptr;  // (M) or null
  QuantWeight W;
  float* C = nullptr;  // (M, N), row stride ldc
  int64_t ldc = 0;
  float beta = 0;
};
inline void gemm_qw(Exec e, const GemmQuantArgs& args) { run(e, args); }

// A quantized matrix that owns its storage (tensors so that it can be written to safetensors):
// q is I8 (N, K) for int8 or U8 (N, K / 2) for int4; scales F16 (N, K / group); mins F16 (N, K / group)
// for int4, undefined for int8.
struct QuantizedMatrix {
  int bits = 4;
  int64_t N = 0, K = 0, group = 64;
  Tensor q, scales, mins;
  QuantWeight view() const;
  int64_t bytes() const;  // q + scales + mins
};

// Round-to-nearest quantization of an f32 (N, K) row-major matrix (the scale and min are rounded to
// f16 first, outwards: min down and scale up so that the group's range stays covered, and q computed
// from the rounded values, so dequantisation errors are at most half a step; src/kernels/quant.cpp). Throws
// moe::Error on bits other than 4/8, a group that is not a multiple of 32 or does not divide K, or a
// non-finite weight (naming `name`).
QuantizedMatrix quantize_matrix(const float* W, int64_t N, int64_t K, int bits, int64_t group,
                                const std::string& name = "weight");
// Wraps loaded tensors (checking dtypes and shapes, naming `name` in errors).
QuantizedMatrix quantized_from_tensors(int bits, int64_t group, Tensor q, Tensor scales, Tensor mins,
                                       const std::string& name = "weight");
// out (N, K) f32 = dequant(W).
void dequantize_matrix(const QuantWeight& W, float* out);

// Instruction set of the Cpu quantized kernel ("generic", "avx2", "avx512", ...), picked at start-up;
// set_gemm_quant_isa (tests, benchmarks) throws moe::Error on an unknown or unsupported name.
const char* gemm_quant_isa();
void set_gemm_quant_isa(const std::string& name);
bool gemm_quant_isa_supported(const std::string& name);

}  // namespace moe::kernels
