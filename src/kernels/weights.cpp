// WeightView helpers (moe/kernels/weights.h).
#include "moe/kernels/weights.h"

#include <cstring>

#include "kernels/quant_format.h"
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
    case WeightFormat::Int8Packed:
      return "int8-packed";
    case WeightFormat::Int4Packed:
      return "int4-packed";
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
    case WeightFormat::Int8Packed:
      return 8;
    case WeightFormat::Int4:
    case WeightFormat::Int4Packed:
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
  if (has_groups(w.format)) {
    MOE_CHECK(!w.trans, op, ": W.trans is not supported with ", name, " weights (stored (N, K) only)");
    MOE_CHECK(w.group > 0 && w.group % 32 == 0, op, ": W.group must be a positive multiple of 32, got ",
              w.group);
    MOE_CHECK(w.K % w.group == 0, op, ": K = ", w.K, " is not a multiple of the group size ", w.group);
  }
  if (is_int_packed(w.format)) {
    MOE_CHECK(w.group <= kMaxPackedInt8Group, op, ": W.group = ", w.group, " is above ", kMaxPackedInt8Group,
              " with ", name, " weights");
    MOE_CHECK(w.scales == nullptr && w.mins == nullptr, op, ": W.scales and W.mins must be null with ", name,
              " weights (they are in W.data)");
  } else if (!is_quantized(w.format)) {
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

namespace {

// bf16 bits of a source element: f32 rounded (moe::f32_to_bf16), bf16 as is.
inline uint32_t bf16_bits(float f) { return f32_to_bf16(f); }
inline uint32_t bf16_bits(uint16_t h) { return h; }

// One panel (kp rows of 16 words) of one expert whose op(W) (K, N) is stored as src.
template <typename S>
void pack_panel(const S* src, bool trans, int64_t N, int64_t K, int64_t kp, int64_t P, uint32_t* panel) {
  const int64_t n0 = P * kPackedPanel, cols = N - n0 < kPackedPanel ? N - n0 : kPackedPanel;
  if (trans) {  // (K, N): rows 2q and 2q + 1 are contiguous along n
    for (int64_t q = 0; q < kp; ++q) {
      uint32_t* d = panel + q * kPackedPanel;
      const S* r0 = 2 * q < K ? src + 2 * q * N + n0 : nullptr;
      const S* r1 = 2 * q + 1 < K ? src + (2 * q + 1) * N + n0 : nullptr;
      for (int64_t j = 0; j < kPackedPanel; ++j) {
        const uint32_t lo = r0 && j < cols ? bf16_bits(r0[j]) : 0u,
                       hi = r1 && j < cols ? bf16_bits(r1[j]) : 0u;
        d[j] = lo | (hi << 16);
      }
    }
    return;
  }
  for (int64_t j = 0; j < kPackedPanel; ++j) {  // (N, K): column n0 + j's values are contiguous along k
    int64_t q = 0;
    if (j < cols) {
      const S* row = src + (n0 + j) * K;
      for (; q < K / 2; ++q)
        panel[q * kPackedPanel + j] = bf16_bits(row[2 * q]) | (bf16_bits(row[2 * q + 1]) << 16);
      if (K & 1) panel[q++ * kPackedPanel + j] = bf16_bits(row[K - 1]);
    }
    for (; q < kp; ++q) panel[q * kPackedPanel + j] = 0;
  }
}

}  // namespace

WeightView pack_bf16_weights(const WeightView& src, int64_t E, void* dst, const char* what) {
  MOE_CHECK(src.format == WeightFormat::F32 || src.format == WeightFormat::Bf16, "pack_bf16_weights: ", what,
            " are ", weight_format_name(src.format), " (expected f32 or bf16)");
  MOE_CHECK(E >= 0 && src.N >= 0 && src.K >= 0, "pack_bf16_weights: ", what, ": negative size (E ", E, ", N ",
            src.N, ", K ", src.K, ")");
  const int64_t N = src.N, K = src.K, kp = packed_bf16_pairs(K), panels = packed_bf16_panels(N);
  const WeightView out{.format = WeightFormat::Bf16Packed, .N = N, .K = K, .data = dst};
  if (E == 0 || N == 0 || K == 0) return out;
  MOE_CHECK(src.data != nullptr && dst != nullptr, "pack_bf16_weights: ", what, ": null data");
  // One item per (expert, panel): kp rows of 16 words.
  parallel_for(E * panels, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t e = i / panels, P = i % panels;
      const WeightView w = src.expert(e);
      uint32_t* panel = static_cast<uint32_t*>(dst) + (e * panels + P) * kp * kPackedPanel;  // (kp, 16)
      if (src.format == WeightFormat::F32) {
        pack_panel(static_cast<const float*>(w.data), w.trans, N, K, kp, P, panel);
      } else {
        pack_panel(static_cast<const uint16_t*>(w.data), w.trans, N, K, kp, P, panel);
      }
    }
  });
  return out;
}

WeightView pack_int8_weights(const WeightView& src, int64_t E, void* dst, const char* what) {
  MOE_CHECK(src.format == WeightFormat::Int8, "pack_int8_weights: ", what, " are ",
            weight_format_name(src.format), " (expected int8)");
  check_weight_view("pack_int8_weights", src);
  MOE_CHECK(src.group <= kMaxPackedInt8Group, "pack_int8_weights: ", what, ": group ", src.group,
            " is above ", kMaxPackedInt8Group);
  MOE_CHECK(E >= 0, "pack_int8_weights: ", what, ": negative expert count ", E);
  const int64_t N = src.N, K = src.K, G = src.group, ng = K / G, panels = packed_bf16_panels(N);
  const WeightView out{.format = WeightFormat::Int8Packed, .N = N, .K = K, .data = dst, .group = G};
  if (E == 0 || N == 0 || K == 0) return out;
  MOE_CHECK(dst != nullptr, "pack_int8_weights: ", what, ": null destination");
  const int64_t bytes = packed_int8_bytes(N, K, G), words = packed_int8_words_bytes(N, K);
  parallel_for(E * panels, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t e = i / panels, P = i % panels;
      const WeightView w = src.expert(e);
      const auto* q = static_cast<const int8_t*>(w.data);  // (N, K)
      auto* base = static_cast<uint8_t*>(dst) + e * bytes;
      uint8_t* panel = base + P * kPackedPanel * K;                                         // (K / 4, 16, 4)
      uint16_t* scale = reinterpret_cast<uint16_t*>(base + words) + P * ng * kPackedPanel;  // (ng, 16)
      for (int64_t j = 0; j < kPackedPanel; ++j) {
        const int64_t n = P * kPackedPanel + j;
        for (int64_t k = 0; k < K; ++k)  // q + 128 (two's complement: the sign bit flipped)
          panel[(k / 4 * kPackedPanel + j) * 4 + k % 4] =
              static_cast<uint8_t>((n < N ? static_cast<uint8_t>(q[n * K + k]) : 0u) ^ 0x80u);
        for (int64_t g = 0; g < ng; ++g)
          scale[g * kPackedPanel + j] = n < N ? w.scales[n * ng + g] : uint16_t{0};
      }
    }
  });
  return out;
}

WeightView pack_int4_weights(const WeightView& src, int64_t E, void* dst, const char* what) {
  MOE_CHECK(src.format == WeightFormat::Int4, "pack_int4_weights: ", what, " are ",
            weight_format_name(src.format), " (expected int4)");
  check_weight_view("pack_int4_weights", src);
  MOE_CHECK(src.group <= kMaxPackedInt8Group, "pack_int4_weights: ", what, ": group ", src.group,
            " is above ", kMaxPackedInt8Group);
  MOE_CHECK(E >= 0, "pack_int4_weights: ", what, ": negative expert count ", E);
  const int64_t N = src.N, K = src.K, G = src.group, ng = K / G, panels = packed_bf16_panels(N);
  const WeightView out{.format = WeightFormat::Int4Packed, .N = N, .K = K, .data = dst, .group = G};
  if (E == 0 || N == 0 || K == 0) return out;
  MOE_CHECK(dst != nullptr, "pack_int4_weights: ", what, ": null destination");
  const int64_t bytes = packed_int4_bytes(N, K, G), words = packed_int4_words_bytes(N, K),
                params = packed_group_param_bytes(N, K, G);
  parallel_for(E * panels, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t e = i / panels, P = i % panels;
      const WeightView w = src.expert(e);
      const auto* q = static_cast<const uint8_t*>(w.data);  // (N, K / 2)
      auto* base = static_cast<uint8_t*>(dst) + e * bytes;
      uint8_t* panel = base + P * kPackedPanel * K / 2;                                     // (K / 8, 16, 4)
      uint16_t* scale = reinterpret_cast<uint16_t*>(base + words) + P * ng * kPackedPanel;  // (ng, 16)
      uint16_t* min = reinterpret_cast<uint16_t*>(base + words + params) + P * ng * kPackedPanel;  // (ng, 16)
      for (int64_t j = 0; j < kPackedPanel; ++j) {
        const int64_t n = P * kPackedPanel + j;
        const uint8_t* row = n < N ? q + n * (K / 2) : nullptr;
        for (int64_t r = 0; r < K / 8; ++r)
          for (int64_t b = 0; b < 4; ++b)
            panel[(r * kPackedPanel + j) * 4 + b] =
                row ? static_cast<uint8_t>(quant::int4_at(row, 8 * r + b) |
                                           (quant::int4_at(row, 8 * r + 4 + b) << 4))
                    : 0;
        for (int64_t g = 0; g < ng; ++g) {
          scale[g * kPackedPanel + j] = row ? w.scales[n * ng + g] : uint16_t{0};  // f16 +0
          min[g * kPackedPanel + j] = row ? w.mins[n * ng + g] : uint16_t{0};
        }
      }
    }
  });
  return out;
}

WeightView pack_int_weights(const WeightView& src, int64_t E, void* dst, const char* what) {
  if (src.format == WeightFormat::Int4) return pack_int4_weights(src, E, dst, what);
  return pack_int8_weights(src, E, dst, what);  // names any other format as not int8
}

}  // namespace moe::kernels
