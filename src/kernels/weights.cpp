// WeightView helpers (moe/kernels/weights.h).
#include "moe/kernels/weights.h"

#include "moe/core/error.h"

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
  }
  return "?";
}

int weight_bits(WeightFormat f) {
  switch (f) {
    case WeightFormat::F32:
      return 32;
    case WeightFormat::Bf16:
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
  MOE_CHECK(w.data_stride == 0 || w.data_stride >= w.expert_data_bytes(), op,
            ": W.data_stride = ", w.data_stride, " is below one expert's ", w.expert_data_bytes(), " bytes");
  MOE_CHECK(w.param_stride == 0 || w.param_stride >= w.expert_params(), op,
            ": W.param_stride = ", w.param_stride, " is below one expert's ", w.expert_params(), " scales");
  if (w.K == 0 || w.N == 0) return;
  MOE_CHECK(w.data != nullptr, op, ": W.data is null");
  if (is_quantized(w.format)) MOE_CHECK(w.scales != nullptr, op, ": W.scales is null");
  if (w.format == WeightFormat::Int4) MOE_CHECK(w.mins != nullptr, op, ": W.mins is null");
}

}  // namespace moe::kernels
