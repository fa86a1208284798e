// Reference GEMM over stored weight formats (moe/kernels/weights.h): one dot product per output
// element of the activation row (bf16-rounded with bf16 weights) with the weight column, dequantised
// by its format (quant_format.h for int8 / int4), accumulated in double in index order.
#include <cstdint>
#include <vector>

#include "kernels/quant_format.h"
#include "kernels/ref/ref.h"
#include "moe/core/dtype.h"
#include "moe/kernels/weights.h"

namespace moe::kernels::ref {

namespace {}  // namespace

// op(W)[k, n] of one expert's view, as fp32.
float weight_at(const WeightView& W, int64_t k, int64_t n) {
  const int64_t at = W.trans ? k * W.N + n : n * W.K + k;  // element of the stored matrix
  switch (W.format) {
    case WeightFormat::F32:
      return static_cast<const float*>(W.data)[at];
    case WeightFormat::Bf16:
      return bf16_to_f32(static_cast<const uint16_t*>(W.data)[at]);
    case WeightFormat::Bf16Packed: {  // word (k / 2, n % 16) of panel n / 16, half k % 2
      const int64_t word =
          (n / kPackedPanel * packed_bf16_pairs(W.K) + k / 2) * kPackedPanel + n % kPackedPanel;
      return bf16_to_f32(static_cast<const uint16_t*>(W.data)[2 * word + k % 2]);
    }
    case WeightFormat::Int8Packed: {  // byte k % 4 of word (k / 4, n % 16) of panel n / 16; the group's scale
      const int64_t P = n / kPackedPanel, j = n % kPackedPanel, ng = W.K / W.group;
      const auto* base = static_cast<const uint8_t*>(W.data);
      const auto q = static_cast<int8_t>(
          base[P * kPackedPanel * W.K + (k / 4 * kPackedPanel + j) * 4 + k % 4] ^ 0x80u);  // stored q + 128
      const auto* scales = reinterpret_cast<const uint16_t*>(base + packed_int8_words_bytes(W.N, W.K));
      return static_cast<float>(q) * f16_to_f32(scales[(P * ng + k / W.group) * kPackedPanel + j]);  // exact
    }
    case WeightFormat::Int4Packed: {  // nibble (k % 8 >= 4) of byte k % 4 of word (k / 8, n % 16) of panel
                                      // n / 16; the group's scale and min
      const int64_t P = n / kPackedPanel, j = n % kPackedPanel, ng = W.K / W.group;
      const auto* base = static_cast<const uint8_t*>(W.data);
      const uint8_t b = base[P * kPackedPanel * W.K / 2 + (k / 8 * kPackedPanel + j) * 4 + k % 4];
      const auto q = static_cast<uint8_t>(k % 8 >= 4 ? b >> 4 : b & 15u);
      const auto* scales = reinterpret_cast<const uint16_t*>(base + packed_int4_words_bytes(W.N, W.K));
      const uint16_t* mins = scales + packed_group_param_bytes(W.N, W.K, W.group) / 2;
      const int64_t s = (P * ng + k / W.group) * kPackedPanel + j;
      return quant::dequant4(q, f16_to_f32(scales[s]), f16_to_f32(mins[s]));
    }
    case WeightFormat::Int8:
    case WeightFormat::Int4:
      break;
  }
  const int64_t s = n * (W.K / W.group) + k / W.group;  // the group's scale (and min)
  const float scale = f16_to_f32(W.scales[s]);
  const auto* q = static_cast<const uint8_t*>(W.data);
  if (W.format == WeightFormat::Int8) return quant::dequant8(static_cast<int8_t>(q[n * W.K + k]), scale);
  return quant::dequant4(quant::int4_at(q + n * (W.K / 2), k), scale, f16_to_f32(W.mins[s]));
}

namespace {

// a (rows, K) = the activation rows of rows [p0, p1) of the call, as the format reads them; with
// int8-packed weights the quantized integers, and rs the rows' scales (else 1).
void activation_rows(const GroupedGemmWArgs& g, int64_t p0, int64_t p1, std::vector<float>& a,
                     std::vector<float>& rs) {
  const int64_t K = g.W.K;
  a.resize(static_cast<size_t>((p1 - p0) * K));
  rs.assign(static_cast<size_t>(p1 - p0), 1.0f);
  std::vector<uint8_t> q(static_cast<size_t>(is_int_packed(g.W.format) ? K : 0));
  for (int64_t p = p0; p < p1; ++p) {
    const float* src = g.A + (g.gather ? g.gather[p] : p) * g.lda;  // (K), or [G | U] (2K)
    float* dst = a.data() + (p - p0) * K;
    if (g.a_preact) {
      preact_row(g.act, src, K, 1.0f, dst);
    } else {
      for (int64_t k = 0; k < K; ++k) dst[k] = src[k];
    }
    if (is_int_packed(g.W.format)) {
      rs[static_cast<size_t>(p - p0)] = quant::quantize_act_row(dst, K, q.data());
      for (int64_t k = 0; k < K; ++k)
        dst[k] = static_cast<float>(static_cast<int32_t>(q[static_cast<size_t>(k)]) - 128);
    }
    if (!is_bf16(g.W.format)) continue;
    for (int64_t k = 0; k < K; ++k) dst[k] = bf16_to_f32(f32_to_bf16(dst[k]));
  }
}

}  // namespace

void grouped_gemm_w(const GroupedGemmWArgs& g) {
  const int64_t N = g.W.N, K = g.W.K;
  std::vector<float> a, rs;
  std::vector<double> w(static_cast<size_t>(K));  // one column of op(W_e)
  for (int64_t e = 0; e < g.E; ++e) {
    const int64_t p0 = g.offsets[e], p1 = g.offsets[e + 1];
    if (p0 == p1) continue;
    const WeightView We = g.W.expert(e);
    activation_rows(g, p0, p1, a, rs);
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t k = 0; k < K; ++k) w[static_cast<size_t>(k)] = weight_at(We, k, n);
      for (int64_t p = p0; p < p1; ++p) {
        const float* ap = a.data() + (p - p0) * K;  // (K)
        double acc = 0;
        for (int64_t k = 0; k < K; ++k) acc += static_cast<double>(ap[k]) * w[static_cast<size_t>(k)];
        acc *= rs[static_cast<size_t>(p - p0)];
        if (g.scale || g.out_row) {  // beta == 0 here
          const float s = g.scale ? g.scale[p] : 1.0f;
          g.C[(g.out_row ? g.out_row[p] : p) * g.ldc + n] = s * static_cast<float>(acc);
          continue;
        }
        float& c = g.C[p * g.ldc + n];
        if (g.beta != 0.0f) acc += static_cast<double>(g.beta) * static_cast<double>(c);
        c = static_cast<float>(acc);
      }
    }
  }
}

}  // namespace moe::kernels::ref
