// WeightView helpers (moe/kernels/weights.h).
#include "moe/kernels/weights.h"

#include <cstring>

#include "moe/core/dtype.h"
#include "moe/core/error.h"
#include "moe/core/parallel.h"

namespace moe::kernels {

const char* weight_format_name(WeightFormat f) {
  switch (f) {
    case WeightFormat::F32:
      return "f32";
    case WeightFormat::Bf16:
      return "bf16";
    case WeightFormat::Int8:
      return "int8";
    case WeightFormat::Int4:
      return "int4";
    case WeightFormat::Bf16Packed:
      return "bf16-packed";
  }
  return "?";
}

int weight_bits(WeightFormat f) {
  switch (f) {
    case WeightFormat::F32:
      return 32;
    case WeightFormat::Bf16:
    case WeightFormat::Bf16Packed:
      return 16;
    case WeightFormat::Int8:
      return 8;
    case WeightFormat::Int4:
      return 4;
  }
  return 0;
}

WeightView WeightView::expert(int64_t e) const {
  WeightView v = *this;
  const int64_t ds = data_stride ? data_stride : expert_data_bytes();
  const int64_t ps = param_stride ? param_stride : expert_params();
  v.data = static_cast<const char*>(data) + e * ds;
  if (scales) v.scales = scales + e * ps;
  if (mins) v.mins = mins + e * ps;
  v.data_stride = v.param_stride = 0;
  return v;
}

void check_weight_view(const char* op, const WeightView& w) {
  const int f = static_cast<int>(w.format);
  MOE_CHECK(f >= 0 && f < kWeightFormatCount, op, ": W.format = ", f, " is not a weight format");
  MOE_CHECK(w.N >= 0, op, ": N must be >= 0, got ", w.N);
  MOE_CHECK(w.K >= 0, op, ": K must be >= 0, got ", w.K);
  const char* name = weight_format_name(w.format);
  if (is_quantized(w.format)) {
    MOE_CHECK(!w.trans, op, ": W.trans is not supported with ", name, " weights (stored (N, K) only)");
    MOE_CHECK(w.group > 0 && w.group % 32 == 0, op, ": W.group must be a positive multiple of 32, got ",
              w.group);
    MOE_CHECK(w.K % w.group == 0, op, ": K = ", w.K, " is not a multiple of the group size ", w.group);
  } else {
    MOE_CHECK(w.scales == nullptr && w.mins == nullptr, op, ": W.scales and W.mins must be null with ", name,
              " weights");
  }
  MOE_CHECK(!(w.trans && w.format == WeightFormat::Bf16Packed), op,
            ": W.trans is not supported with bf16-packed weights (the packing resolves the orientation)");
  MOE_CHECK(w.data_stride == 0 || w.data_stride >= w.expert_data_bytes(), op,
            ": W.data_stride = ", w.data_stride, " is below one expert's ", w.expert_data_bytes(), " bytes");
  MOE_CHECK(w.param_stride == 0 || w.param_stride >= w.expert_params(), op,
            ": W.param_stride = ", w.param_stride, " is below one expert's ", w.expert_params(), " scales");
  if (w.K == 0 || w.N == 0) return;
  MOE_CHECK(w.data != nullptr, op, ": W.data is null");
  if (is_quantized(w.format)) MOE_CHECK(w.scales != nullptr, op, ": W.scales is null");
  if (w.format == WeightFormat::Int4) MOE_CHECK(w.mins != nullptr, op, ": W.mins is null");
}

WeightView pack_bf16_weights(const WeightView& src, int64_t E, void* dst, const char* what) {
  MOE_CHECK(src.format == WeightFormat::F32 || src.format == WeightFormat::Bf16, "pack_bf16_weights: ", what,
            " are ", weight_format_name(src.format), " (expected f32 or bf16)");
  MOE_CHECK(E >= 0 && src.N >= 0 && src.K >= 0, "pack_bf16_weights: ", what, ": negative size (E ", E, ", N ",
            src.N, ", K ", src.K, ")");
  const int64_t N = src.N, K = src.K, kp = packed_bf16_pairs(K), panels = packed_bf16_panels(N);
  const WeightView out{.format = WeightFormat::Bf16Packed, .N = N, .K = K, .data = dst};
  if (E == 0 || N == 0 || K == 0) return out;
  MOE_CHECK(src.data != nullptr && dst != nullptr, "pack_bf16_weights: ", what, ": null data");
  const bool f32 = src.format == WeightFormat::F32;
  // op(W)[k, n] as bf16 bits (0 beyond K or N).
  auto value = [&](const WeightView& w, int64_t k, int64_t n) -> uint32_t {
    if (k >= K || n >= N) return 0;
    const int64_t at = w.trans ? k * N + n : n * K + k;
    return f32 ? f32_to_bf16(static_cast<const float*>(w.data)[at])
               : static_cast<const uint16_t*>(w.data)[at];
  };
  // One item per (expert, panel): kp rows of 16 words.
  parallel_for(E * panels, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t e = i / panels, P = i % panels;
      const WeightView w = src.expert(e);
      uint32_t* panel = static_cast<uint32_t*>(dst) + (e * panels + P) * kp * kPackedPanel;  // (kp, 16)
      for (int64_t q = 0; q < kp; ++q) {
        for (int64_t j = 0; j < kPackedPanel; ++j) {
          const int64_t n = P * kPackedPanel + j;
          panel[q * kPackedPanel + j] = value(w, 2 * q, n) | (value(w, 2 * q + 1, n) << 16);
        }
      }
    }
  });
  return out;
}

}  // namespace moe::kernels
