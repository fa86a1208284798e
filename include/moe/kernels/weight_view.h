// Weights in a storage format (WeightView) and their packing; the GEMM over them is in
// moe/kernels/weights.h (grouped_gemm_w).
//
// A WeightView is E experts' matrices of one format, each op(W_e) (K, N) (the B of C = A · B):
//   f32   float (N, K), or (K, N) when trans                      w = the stored value
//   bf16  bf16 bit patterns (uint16_t) (N, K), or (K, N) trans    w = bf16_to_f32(stored)
//   int8  int8 (N, K), f16 scales (N, K / group)                  w = q · scale   (quant_format.h)
//   int4  two per byte (N, K / 2), f16 scales and mins            w = q · scale + min
//   bf16-packed  bf16 packed once (pack_bf16_weights) in the operand layout of the tile and dot-product
//         instructions, per expert: ceil(N / 16) panels of 16 columns, each kp = ceil(K / 32) · 16
//         rows of 16 32-bit words; word (q, j) of panel P holds op(W)[2q, 16P + j] in its low half and
//         op(W)[2q + 1, 16P + j] in its high half; zero beyond N and K   w = bf16_to_f32(stored)
//   int8-packed  the int8 format packed once (pack_int8_weights) for integer dot products, and the
//         activations quantized to int8 per row as they are read (W8A8, below). Per expert, ceil(N / 16)
//         panels of 16 columns, each K / 4 rows of 16 32-bit words, word (r, j) holding q + 128 (an
//         unsigned byte; q the int8) of op(W)[4r .. 4r + 3, 16P + j] (k ascending from the low byte);
//         then, per panel and group, the 16 columns' f16 scales (the int8 format's, bit for bit): 8.5
//         bits per weight at a group of 32. Zero codes (q = 0) and scales beyond N. Scales live in data
//         (scales, mins null).                                         w = q · scale
//   int4-packed  the int4 format packed once (pack_int4_weights) for integer dot products with int8
//         activations (W4A8, below). Per expert, ceil(N / 16) panels of 16 columns, each K / 8 rows of
//         16 32-bit words; byte b (0..3) of word (r, j) holds q[8r + b] in its low nibble and q[8r + 4 + b]
//         in its high nibble, q the unsigned int4 of op(W)[., 16P + j]; then, per panel and group, the 16
//         columns' f16 scales (the int4 format's, bit for bit); then, per panel and group, their f16
//         mins: 4.5 + 0.5 bits per weight at a group of 32. Zero beyond N. Scales and mins live in data
//         (scales, mins null).                                           w = q · scale + min
// (moe/kernels/ops_quant.h describes the int8 / int4 formats.) Expert e's data starts
// e · data_stride bytes after data, its scales and mins e · param_stride entries after theirs; a
// stride of 0 means the experts are packed one after the other.
//
// Each format keeps its rounding semantics in grouped_gemm_w: with bf16 weights the activations are
// rounded to bf16 as they are read (every product is then exact in fp32); f32, int8 and int4 multiply
// the fp32 activations with the fp32 (dequantised) weights.
#pragma once

#include <cstdint>

namespace moe::kernels {

enum class WeightFormat : int {
  F32 = 0,
  Bf16 = 1,
  Int8 = 2,
  Int4 = 3,
  Bf16Packed = 4,
  Int8Packed = 5,
  Int4Packed = 6
};
constexpr int kWeightFormatCount = 7;

// "f32", "bf16", "int8", "int4", "bf16-packed", "int8-packed", "int4-packed"
const char* weight_format_name(WeightFormat f);
int weight_bits(WeightFormat f);  // bits per stored weight: 32, 16, 8, 4, 16, 8, 4
// int8 / int4: integers with f16 group scales (and mins) in their own arrays.
inline bool is_quantized(WeightFormat f) { return f == WeightFormat::Int8 || f == WeightFormat::Int4; }
// The packed integer formats, whose activations are quantized to int8 per row (W8A8, W4A8).
inline bool is_int_packed(WeightFormat f) {
  return f == WeightFormat::Int8Packed || f == WeightFormat::Int4Packed;
}
// Formats with a group (a multiple of 32 dividing K): int8, int4, int8-packed, int4-packed.
inline bool has_groups(WeightFormat f) { return is_quantized(f) || is_int_packed(f); }
// Formats whose activations are rounded to bf16 as they are read (bf16 and bf16-packed).
inline bool is_bf16(WeightFormat f) { return f == WeightFormat::Bf16 || f == WeightFormat::Bf16Packed; }

// The bf16-packed layout: 16 columns per panel (one 512-bit vector of words, one AMX B tile's width),
// K padded to a multiple of 32 (one AMX tile row of bf16 values).
constexpr int64_t kPackedPanel = 16;
constexpr int64_t kPackedKAlign = 32;
inline int64_t packed_bf16_pairs(int64_t K) {
  return (K + kPackedKAlign - 1) / kPackedKAlign * kPackedKAlign / 2;
}
inline int64_t packed_bf16_panels(int64_t N) { return (N + kPackedPanel - 1) / kPackedPanel; }
inline int64_t packed_bf16_bytes(int64_t N, int64_t K) {  // one expert
  return packed_bf16_panels(N) * packed_bf16_pairs(K) * kPackedPanel * 4;
}
// The int8- and int4-packed group parameters: one f16 per column and group, per panel (the bytes of
// one such array: the scales, or int4's mins).
inline int64_t packed_group_param_bytes(int64_t N, int64_t K, int64_t group) {
  return group > 0 ? packed_bf16_panels(N) * (K / group) * kPackedPanel * 2 : 0;
}
// The int8-packed layout of one expert: the words, then the scales (bytes from data).
inline int64_t packed_int8_words_bytes(int64_t N, int64_t K) {
  return packed_bf16_panels(N) * kPackedPanel * K;
}
inline int64_t packed_int8_bytes(int64_t N, int64_t K, int64_t group) {
  return packed_int8_words_bytes(N, K) + packed_group_param_bytes(N, K, group);
}
// The int4-packed layout of one expert: the words, then the scales, then the mins (bytes from data).
inline int64_t packed_int4_words_bytes(int64_t N, int64_t K) {
  return packed_bf16_panels(N) * kPackedPanel * K / 2;
}
inline int64_t packed_int4_bytes(int64_t N, int64_t K, int64_t group) {
  return packed_int4_words_bytes(N, K) + 2 * packed_group_param_bytes(N, K, group);
}
// int8- and int4-packed groups: at most this many k (each group's integer sum is then exact in fp32).
constexpr int64_t kMaxPackedInt8Group = 1024;

struct WeightView {
  WeightFormat format = WeightFormat::F32;
  int64_t N = 0, K = 0;        // each expert's op(W_e) is (K, N)
  bool trans = false;          // stored (K, N) instead of (N, K); f32 and bf16 only
  const void* data = nullptr;  // (E, N, K) or (E, K, N) elements of the format (int4: (E, N, K / 2) bytes)
  const uint16_t* scales = nullptr;  // int8 / int4: f16 (E, N, K / group)
  const uint16_t* mins = nullptr;    // int4: f16 (E, N, K / group)
  int64_t group = 0;                 // int8 / int4: consecutive k per scale, a multiple of 32 dividing K
  int64_t data_stride = 0;           // bytes from one expert's data to the next; 0: expert_data_bytes()
  int64_t param_stride = 0;          // entries from one expert's scales (mins) to the next; 0: packed

  int64_t expert_data_bytes() const {
    if (format == WeightFormat::Bf16Packed) return packed_bf16_bytes(N, K);
    if (format == WeightFormat::Int8Packed) return packed_int8_bytes(N, K, group);
    if (format == WeightFormat::Int4Packed) return packed_int4_bytes(N, K, group);
    return N * K * weight_bits(format) / 8;
  }
  int64_t expert_params() const { return is_quantized(format) && group > 0 ? N * (K / group) : 0; }
  int64_t expert_bytes() const {  // data, scales and mins of one expert
    return expert_data_bytes() + 2 * expert_params() * (format == WeightFormat::Int4 ? 2 : 1);
  }
  // The view of expert e alone (strides resolved).
  WeightView expert(int64_t e) const;
};

// Throws moe::Error naming `op` and the field on a view grouped_gemm_w cannot read (unknown format,
// a negative size, a group that is not a multiple of 32 or does not divide K, trans with a quantized
// format, a null data, scales or mins pointer when K > 0, a stride below one expert's size).
void check_weight_view(const char* op, const WeightView& w);

// Packs E experts' weights into the bf16-packed format: src is f32 (rounded to nearest even, NaN stays
// NaN) or bf16, stored (N, K) or (K, N) (trans); dst holds E · packed_bf16_bytes(N, K) bytes (64-byte
// aligned is best, none is required) and is written densely (expert e at e · packed_bf16_bytes). Returns the
// view of dst. Throws moe::Error naming `what` on another source format or a null pointer.
WeightView pack_bf16_weights(const WeightView& src, int64_t E, void* dst, const char* what = "weights");

// Packs E experts of the int8 format (src: int8 (N, K) with f16 scales, src.group) into the int8-packed
// format at dst (E · packed_int8_bytes(N, K, group) bytes, expert e at e · that). Returns the view of
// dst. Throws moe::Error naming `what` on another source format, a group above kMaxPackedInt8Group or
// a null pointer.
WeightView pack_int8_weights(const WeightView& src, int64_t E, void* dst, const char* what = "weights");

// Packs E experts of the int4 format (src: int4 (N, K / 2) with f16 scales and mins, src.group) into the
// int4-packed format at dst (E · packed_int4_bytes(N, K, group) bytes, expert e at e · that). Returns
// the view of dst. Throws moe::Error naming `what` as pack_int8_weights does.
WeightView pack_int4_weights(const WeightView& src, int64_t E, void* dst, const char* what = "weights");

// The integer-packed form of an int8 or int4 view: pack_int8_weights or pack_int4_weights by src.format
// (the bytes of one expert: packed_int_bytes). Throws moe::Error naming `what` for another format.
WeightView pack_int_weights(const WeightView& src, int64_t E, void* dst, const char* what = "weights");
inline int64_t packed_int_bytes(const WeightView& src) {
  return src.format == WeightFormat::Int4 ? packed_int4_bytes(src.N, src.K, src.group)
                                          : packed_int8_bytes(src.N, src.K, src.group);
}

}  // namespace moe::kernels
