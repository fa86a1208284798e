// Group-wise quantization of (N, K) matrices (moe/kernels/ops_quant.h): quantize_matrix,
// quantized_from_tensors, dequantize_matrix.
//
// Rounding of the group parameters. So that every weight is within half a step of its dequantised
// value (up to one fp32 rounding of q · scale + min), the f16 parameters are rounded outwards:
//   int8: scale = the smallest f16 >= max|w| / 127, so |w| / scale <= 127;
//   int4: min = the largest f16 <= min(w), scale = the smallest f16 >= (max(w) - min) / 15, so every
//         w lies in [min, min + 15 · scale].
// Then q = round-half-to-even((w - min) / scale) (min = 0 for int8), the quotient taken in double, and
// clamped to the format's range. A group of equal weights whose min is exact in f16 gets scale 0 and
// q = 0. A group whose scale or min does not fit f16 (|w| above ~8e6 for int8, a range above ~9.8e5
// or a minimum below -65504 for int4) is an error.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

#include "kernels/quant_format.h"
#include "moe/core/dtype.h"
#include "moe/core/error.h"
#include "moe/kernels/ops_quant.h"

namespace moe::kernels {

namespace {

bool f16_finite(uint16_t h) { return (h & 0x7c00u) != 0x7c00u; }

// The f16 next to h towards +inf (up) or -inf (down); h finite.
uint16_t f16_step(uint16_t h, bool up) {
  const bool neg = (h & 0x8000u) != 0, zero = (h & 0x7fffu) == 0;
  if (zero) return up ? uint16_t{0x0001} : uint16_t{0x8001};
  return static_cast<uint16_t>(up != neg ? h + 1 : h - 1);  // away from zero when the sign agrees
}

// The smallest f16 >= x (up) or the largest f16 <= x (down); an infinity when x is beyond the range.
uint16_t f16_round(double x, bool up) {
  uint16_t h = f32_to_f16(static_cast<float>(x));  // within one f16 step of x
  for (int i = 0; i < 2 && f16_finite(h); ++i) {
    const double v = f16_to_f32(h);
    if (up ? v >= x : v <= x) break;
    h = f16_step(h, up);
  }
  return h;
}

void check_format(int bits, int64_t K, int64_t group, const std::string& name) {
  MOE_CHECK(bits == 4 || bits == 8, "quantized weight '", name, "': bits must be 4 or 8, got ", bits);
  MOE_CHECK(group > 0 && group % 32 == 0, "quantized weight '", name,
            "': group size must be a positive multiple of 32, got ", group);
  MOE_CHECK(K % group == 0, "quantized weight '", name, "': K = ", K, " is not a multiple of the group size ",
            group);
}

}  // namespace

QuantWeight QuantizedMatrix::view() const {
  QuantWeight w;
  w.bits = bits;
  w.N = N;
  w.K = K;
  w.group = group;
  w.q = q.defined() ? static_cast<const uint8_t*>(q.raw()) : nullptr;
  w.scales = scales.defined() ? static_cast<const uint16_t*>(scales.raw()) : nullptr;
  w.mins = bits == 4 && mins.defined() ? static_cast<const uint16_t*>(mins.raw()) : nullptr;
  return w;
}

int64_t QuantizedMatrix::bytes() const {
  int64_t b = 0;
  for (const Tensor* t : {&q, &scales, &mins})
    if (t->defined()) b += static_cast<int64_t>(t->nbytes());
  return b;
}

QuantizedMatrix quantize_matrix(const float* W, int64_t N, int64_t K, int bits, int64_t group,
                                const std::string& name) {
  MOE_CHECK(N >= 0 && K >= 0, "quantize: '", name, "': bad shape (", N, ", ", K, ")");
  check_format(bits, K, group, name);
  MOE_CHECK(W != nullptr || N * K == 0, "quantize: '", name, "': weights are null");
  const int64_t ng = K / group;
  QuantizedMatrix r;
  r.bits = bits;
  r.N = N;
  r.K = K;
  r.group = group;
  r.q = bits == 8 ? Tensor::empty({N, K}, DType::I8, name + ".qweight")
                  : Tensor::empty({N, K / 2}, DType::U8, name + ".qweight");
  r.scales = Tensor::empty({N, ng}, DType::F16, name + ".scales");
  if (bits == 4) r.mins = Tensor::empty({N, ng}, DType::F16, name + ".mins");
  uint8_t* q = static_cast<uint8_t*>(r.q.raw());
  uint16_t* scales = static_cast<uint16_t*>(r.scales.raw());
  uint16_t* mins = bits == 4 ? static_cast<uint16_t*>(r.mins.raw()) : nullptr;
  for (int64_t n = 0; n < N; ++n) {
    const float* w = W + n * K;  // (K)
    for (int64_t k = 0; k < K; ++k)
      MOE_CHECK(std::isfinite(w[k]), "quantize: '", name, "' has a non-finite weight ", w[k], " at (", n,
                ", ", k, ")");
    for (int64_t g = 0; g < ng; ++g) {
      const float* wg = w + g * group;
      const auto [lo_it, hi_it] = std::minmax_element(wg, wg + group);
      const double lo = *lo_it, hi = *hi_it;
      double min = 0, scale = 0;
      uint16_t min_h = 0, scale_h = 0;
      if (bits == 8) {
        const double amax = std::max(std::fabs(lo), std::fabs(hi));
        if (amax > 0) scale_h = f16_round(amax / 127.0, true);
      } else {
        min_h = f16_round(lo, false);
        MOE_CHECK(f16_finite(min_h), "quantize: '", name, "' row ", n, ", group ", g, ": minimum ", lo,
                  " is below the f16 range");
        min = f16_to_f32(min_h);
        if (hi > min) scale_h = f16_round((hi - min) / 15.0, true);
      }
      MOE_CHECK(f16_finite(scale_h), "quantize: '", name, "' row ", n, ", group ", g, ": weights in [", lo,
                ", ", hi, "] need a scale beyond the f16 range");
      scale = f16_to_f32(scale_h);
      scales[n * ng + g] = scale_h;
      if (mins) mins[n * ng + g] = min_h;
      for (int64_t i = 0; i < group; ++i) {
        const int64_t k = g * group + i;
        const double t = scale > 0 ? std::nearbyint((static_cast<double>(wg[i]) - min) / scale) : 0.0;
        if (bits == 8) {
          q[n * K + k] = static_cast<uint8_t>(static_cast<int8_t>(std::clamp(t, -127.0, 127.0)));
        } else {
          const uint8_t v = static_cast<uint8_t>(std::clamp(t, 0.0, 15.0));
          uint8_t& b = q[n * (K / 2) + k / 2];
          b = (k & 1) ? static_cast<uint8_t>((b & 0x0fu) | (v << 4)) : v;  // even k first: sets the byte
        }
      }
    }
  }
  return r;
}

QuantizedMatrix quantized_from_tensors(int bits, int64_t group, Tensor q, Tensor scales, Tensor mins,
                                       const std::string& name) {
  MOE_CHECK(bits == 4 || bits == 8, "quantized weight '", name, "': bits must be 4 or 8, got ", bits);
  check_defined(q, name + ".qweight");
  check_defined(scales, name + ".scales");
  MOE_CHECK(q.dim() == 2, "quantized weight '", name, "': qweight must be 2-D, got shape ",
            shape_str(q.shape()));
  q.check_dtype(bits == 8 ? DType::I8 : DType::U8, (name + ".qweight").c_str());
  const int64_t N = q.size(0), K = bits == 8 ? q.size(1) : 2 * q.size(1);
  check_format(bits, K, group, name);
  scales.check_dtype(DType::F16, (name + ".scales").c_str());
  check_shape(scales, {N, K / group}, name + ".scales");
  if (bits == 4) {
    check_defined(mins, name + ".mins");
    mins.check_dtype(DType::F16, (name + ".mins").c_str());
    check_shape(mins, {N, K / group}, name + ".mins");
  } else {
    MOE_CHECK(!mins.defined(), "quantized weight '", name, "': int8 weights have no mins");
  }
  QuantizedMatrix r;
  r.bits = bits;
  r.N = N;
  r.K = K;
  r.group = group;
  r.q = q.contiguous();
  r.scales = scales.contiguous();
  if (bits == 4) r.mins = mins.contiguous();
  for (const Tensor* t : {&r.scales, &r.mins}) {
    if (!t->defined()) continue;
    const uint16_t* h = static_cast<const uint16_t*>(t->raw());
    for (int64_t i = 0; i < t->numel(); ++i)
      MOE_CHECK(f16_finite(h[i]), "quantized weight '", name, "': ", t == &r.scales ? "scales" : "mins",
                " hold a non-finite value at index ", i);
  }
  return r;
}

void dequantize_matrix(const QuantWeight& W, float* out) {
  const int64_t ng = W.group > 0 ? W.K / W.group : 0;
  for (int64_t n = 0; n < W.N; ++n) {
    for (int64_t k = 0; k < W.K; ++k) {
      const int64_t g = n * ng + k / W.group;
      const float s = f16_to_f32(W.scales[g]);
      out[n * W.K + k] =
          W.bits == 8 ? quant::dequant8(static_cast<int8_t>(W.q[n * W.K + k]), s)
                      : quant::dequant4(quant::int4_at(W.q + n * (W.K / 2), k), s, f16_to_f32(W.mins[g]));
    }
  }
}

}  // namespace moe::kernels
