// Op cases of the weight-format GEMMs: grouped_gemm_w over every format (moe/kernels/weights.h), and
// the format-specific ops that call it, grouped_gemm_bf16w, gemm_bf16w (moe/kernels/ops_bf16.h) and
// gemm_qw (moe/kernels/ops_quant.h), in the consistency harness beside the f32 ops (every backend,
// thread-count determinism). Instruction-set sweeps and format details stay in test_ops_bf16.cpp and
// test_quant.cpp.
//
// Tolerances (the principles of test_ops_bf16.cpp and test_quant.cpp):
//  * f32 weights: the f32 engine sums each K block in order: |cpu - ref| <= (K + 4) 2^-24 S.
//  * bf16 weights: activations are rounded to bf16 as they are read, and a product of two bf16
//    values is exact in fp32, so only the K additions (and beta * c) round, each within 2^-24 of a
//    partial sum bounded by S = sum |bf16(a) w| + |beta c|: |cpu - ref| <= (K + 4) 2^-24 S.
//  * int8/int4 weights: both backends multiply the same fp32 dequantised weights; the Cpu kernel sums
//    in >= 8 lanes then a tree of <= 4 additions, the portable path also rounds each product:
//    |cpu - ref| <= (K / 8 + 8) 2^-24 S with S = sum |a w| + |beta c|.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "moe/core/dtype.h"
#include "moe/core/error.h"
#include "moe/kernels/ops_quant.h"
#include "moe/kernels/weights.h"
#include "op_cases.h"

namespace moe::ops_test {

namespace {

double bf16_round(double v) { return bf16_to_f32(f32_to_bf16(static_cast<float>(v))); }

// ---------------------------------------------------------------------------------------------
// grouped_gemm_bf16w: experts over routed rows (gather = token rows), bf16 weights.

struct Bf16Shape {
  int64_t T, E, k;
  Pattern pattern = Pattern::Random;
  int64_t N = 0, K = 0;
  bool gather = true, trans_w = false;
  double beta = 0;
  int64_t pad = 0;
};

class Bf16GroupedCase : public OpCase {
 public:
  explicit Bf16GroupedCase(Bf16Shape s) : s_(s) {}
  std::string op() const override { return "grouped_gemm_bf16w"; }
  bool is_double() const override { return false; }
  std::string name() const override {
    return cat(op(), "(T=", s_.T, ",E=", s_.E, ",k=", s_.k, ",", pattern_name(s_.pattern), ",N=", s_.N,
               ",K=", s_.K, s_.gather ? ",gather" : ",gather=null", s_.trans_w ? ",trans_w" : "",
               ",beta=", s_.beta, s_.pad ? ",padded" : "", ")");
  }
  int64_t lda() const { return s_.K + s_.pad; }
  int64_t ldc() const { return s_.N + s_.pad; }
  Buffers make(uint64_t seed) const override {
    const Routing rt = make_routing(Rng(seed), s_.T, s_.E, s_.k, s_.pattern, 0.0);
    const Rng rng(seed);
    Buffers b;
    b.add<int32_t>("offsets", s_.E + 1);
    b.add<int32_t>("gather", s_.gather ? rt.rows() : 0);
    b.add<float>("A", (s_.gather ? s_.T : rt.rows()) * lda());
    b.add<uint16_t>("W", s_.E * s_.N * s_.K);  // bf16 (E, N, K) or (E, K, N)
    b.add<float>("C", rt.rows() * ldc(), s_.beta == 0 ? Role::Out : Role::InOut);
    std::copy(rt.offsets.begin(), rt.offsets.end(), b.host<int32_t>(kOffsets));
    for (int64_t p = 0; s_.gather && p < rt.rows(); ++p) {
      b.host<int32_t>(kGather)[p] = rt.perm[p] / static_cast<int32_t>(s_.k);
    }
    fill_values(rng.fork(1), b.host<float>(kA), b[kA].count);  // not bf16-exact: the packing rounds
    std::vector<float> w(static_cast<size_t>(b[kW].count));
    fill_values(rng.fork(2), w.data(), b[kW].count);
    for (int64_t i = 0; i < b[kW].count; ++i)
      b.host<uint16_t>(kW)[i] = f32_to_bf16(w[static_cast<size_t>(i)]);
    if (s_.beta != 0) fill_values(rng.fork(3), b.host<float>(kC), b[kC].count);
    return b;
  }
  template <class F>
  decltype(auto) with_args(Buffers& b, F&& f) const {
    kernels::GroupedGemmBf16Args g;
    g.E = s_.E, g.N = s_.N, g.K = s_.K, g.offsets = b.arg<int32_t>(kOffsets);
    g.A = b.arg<float>(kA), g.lda = lda(), g.gather = s_.gather ? b.arg<int32_t>(kGather) : nullptr;
    g.W = b.arg<uint16_t>(kW), g.trans_w = s_.trans_w;
    g.C = b.arg<float>(kC), g.ldc = ldc(), g.beta = static_cast<float>(s_.beta);
    return f(g);
  }
  MOE_OP_CASE_ARGS
  std::vector<double> tolerance(const Buffers& in, int id) const override {
    std::vector<double> tol(static_cast<size_t>(in[id].count), kNotCompared);  // padding stays out
    const int32_t* off = in.host<int32_t>(kOffsets);
    for (int64_t e = 0; e < s_.E; ++e) {
      for (int64_t p = off[e]; p < off[e + 1]; ++p) {
        const int64_t row = s_.gather ? in.host<int32_t>(kGather)[p] : p;
        for (int64_t n = 0; n < s_.N; ++n) {
          double mag = s_.beta != 0 ? std::fabs(s_.beta * in[kC].get(p * ldc() + n)) : 0.0;
          for (int64_t k = 0; k < s_.K; ++k) {
            const int64_t wi = e * s_.N * s_.K + (s_.trans_w ? k * s_.N + n : n * s_.K + k);
            const double w = bf16_to_f32(static_cast<uint16_t>(in[kW].get(wi)));
            mag += std::fabs(bf16_round(in[kA].get(row * lda() + k)) * w);
          }
          tol[static_cast<size_t>(p * ldc() + n)] = static_cast<double>(s_.K + 4) * std::ldexp(mag, -24);
        }
      }
    }
    return tol;
  }
  double flops() const override { return 2.0 * s_.T * s_.k * s_.N * s_.K; }
  double bytes() const override { return 4.0 * s_.T * s_.k * (s_.K + s_.N) + 2.0 * s_.E * s_.N * s_.K; }

 private:
  enum { kOffsets, kGather, kA, kW, kC };
  Bf16Shape s_;
};

// ---------------------------------------------------------------------------------------------
// gemm_bf16w (dense) and gemm_qw (int8 / int4, rows gathered or not): C (M, N) = beta C + A W^T.

struct DenseShape {
  int64_t M, N, K;
  int bits = 16;  // 16: bf16 (gemm_bf16w); 8, 4: gemm_qw
  int64_t group = 64;
  bool gather = false;   // gemm_qw only
  bool trans_w = false;  // gemm_bf16w only
  double beta = 0;
};

class DenseWeightCase : public OpCase {
 public:
  explicit DenseWeightCase(DenseShape s) : s_(s) {}
  std::string op() const override { return s_.bits == 16 ? "gemm_bf16w" : "gemm_qw"; }
  bool is_double() const override { return false; }
  std::string name() const override {
    return cat(op(), "(M=", s_.M, ",N=", s_.N, ",K=", s_.K,
               s_.bits == 16 ? "" : cat(",int", s_.bits, ",group=", s_.group), s_.gather ? ",gather" : "",
               s_.trans_w ? ",trans_w" : "", ",beta=", s_.beta, ")");
  }
  int64_t lda() const { return s_.K + 3; }
  int64_t ldc() const { return s_.N + 2; }
  int64_t a_rows() const { return s_.gather ? s_.M + 5 : s_.M; }
  Buffers make(uint64_t seed) const override {
    const Rng rng(seed);
    Buffers b;
    b.add<float>("A", a_rows() * lda());
    b.add<int32_t>("gather", s_.gather ? s_.M : 0);
    b.add<float>("C", s_.M * ldc(), s_.beta == 0 ? Role::Out : Role::InOut);
    b.add<float>("W (dequantised, for the tolerance)", s_.N * s_.K);
    fill_values(rng.fork(1), b.host<float>(kA), b[kA].count);
    for (int64_t m = 0; m < s_.M && s_.gather; ++m) {
      b.host<int32_t>(kGather)[m] =
          static_cast<int32_t>(rng.below(static_cast<uint64_t>(m), static_cast<uint64_t>(a_rows())));
    }
    if (s_.beta != 0) fill_values(rng.fork(2), b.host<float>(kC), b[kC].count);
    std::vector<float> w(static_cast<size_t>(s_.N * s_.K));
    fill_values(rng.fork(3), w.data(), s_.N * s_.K);
    if (s_.bits == 16) {
      const int wi = b.add<uint16_t>("W (bf16)", s_.N * s_.K);
      for (int64_t n = 0; n < s_.N; ++n) {
        for (int64_t k = 0; k < s_.K; ++k) {
          const uint16_t v = f32_to_bf16(w[static_cast<size_t>(n * s_.K + k)]);
          b.host<uint16_t>(wi)[s_.trans_w ? k * s_.N + n : n * s_.K + k] = v;
          b.host<float>(kWd)[n * s_.K + k] = bf16_to_f32(v);
        }
      }
      return b;
    }
    const kernels::QuantizedMatrix q = kernels::quantize_matrix(w.data(), s_.N, s_.K, s_.bits, s_.group, "W");
    kernels::dequantize_matrix(q.view(), b.host<float>(kWd));  // before the adds below move buffers
    const int qi = b.add<uint8_t>("W.q", static_cast<int64_t>(q.q.nbytes()));
    const int si = b.add<uint16_t>("W.scales", q.scales.numel());
    const int mi = b.add<uint16_t>("W.mins", s_.bits == 4 ? q.mins.numel() : 0);
    std::copy_n(static_cast<const uint8_t*>(q.q.raw()), q.q.nbytes(), b.host<uint8_t>(qi));
    std::copy_n(static_cast<const uint16_t*>(q.scales.raw()), q.scales.numel(), b.host<uint16_t>(si));
    if (s_.bits == 4)
      std::copy_n(static_cast<const uint16_t*>(q.mins.raw()), q.mins.numel(), b.host<uint16_t>(mi));
    return b;
  }
  template <class F>
  decltype(auto) with_args(Buffers& b, F&& f) const {
    if (s_.bits == 16) {
      kernels::GemmBf16Args g;
      g.M = s_.M, g.N = s_.N, g.K = s_.K, g.A = b.arg<float>(kA), g.lda = lda();
      g.W = b.arg<uint16_t>(kW0), g.trans_w = s_.trans_w;
      g.C = b.arg<float>(kC), g.ldc = ldc(), g.beta = static_cast<float>(s_.beta);
      return f(g);
    }
    kernels::GemmQuantArgs g;
    g.M = s_.M, g.A = b.arg<float>(kA), g.lda = lda(),
    g.gather = s_.gather ? b.arg<int32_t>(kGather) : nullptr;
    g.W.bits = s_.bits, g.W.N = s_.N, g.W.K = s_.K, g.W.group = s_.group;
    g.W.q = b.arg<uint8_t>(kW0), g.W.scales = b.arg<uint16_t>(kW0 + 1);
    g.W.mins = s_.bits == 4 ? b.arg<uint16_t>(kW0 + 2) : nullptr;
    g.C = b.arg<float>(kC), g.ldc = ldc(), g.beta = static_cast<float>(s_.beta);
    return f(g);
  }
  MOE_OP_CASE_ARGS
  std::vector<double> tolerance(const Buffers& in, int id) const override {
    std::vector<double> tol(static_cast<size_t>(in[id].count), kNotCompared);  // padding stays out
    for (int64_t m = 0; m < s_.M; ++m) {
      const int64_t row = s_.gather ? in.host<int32_t>(kGather)[m] : m;
      for (int64_t n = 0; n < s_.N; ++n) {
        double mag = s_.beta != 0 ? std::fabs(s_.beta * in[kC].get(m * ldc() + n)) : 0.0;
        for (int64_t k = 0; k < s_.K; ++k) {
          const double a = in[kA].get(row * lda() + k);
          mag += std::fabs((s_.bits == 16 ? bf16_round(a) : a) * in[kWd].get(n * s_.K + k));
        }
        const double terms =
            s_.bits == 16 ? static_cast<double>(s_.K + 4) : static_cast<double>(s_.K) / 8 + 8;
        tol[static_cast<size_t>(m * ldc() + n)] = terms * std::ldexp(mag, -24);
      }
    }
    return tol;
  }
  double flops() const override { return 2.0 * s_.M * s_.N * s_.K; }
  double bytes() const override { return 4.0 * s_.M * (s_.K + s_.N) + s_.N * s_.K * s_.bits / 8.0; }

 private:
  enum { kA, kGather, kC, kWd, kW0 };
  DenseShape s_;
};

// ---------------------------------------------------------------------------------------------
// grouped_gemm_w: experts over routed rows in any weight format, with every feature of the op
// (gather, trans, beta, scale + out_row, a_preact).

using kernels::Activation;
using kernels::WeightFormat;

struct WShape {
  int64_t T, E, k;
  Pattern pattern = Pattern::Random;
  int64_t N = 0, K = 0;
  WeightFormat format = WeightFormat::Bf16;
  int64_t group = 0;  // int8 / int4
  bool gather = true, trans = false;
  double beta = 0;
  bool scatter = false;  // scale and out_row (beta 0)
  bool preact = false;   // A as pre-activations of act
  Activation act = Activation::SwiGLU;
  int64_t pad = 0;
};

class WGroupedCase : public OpCase {
 public:
  explicit WGroupedCase(WShape s) : s_(s) {}
  std::string op() const override { return "grouped_gemm_w"; }
  bool is_double() const override { return false; }
  std::string name() const override {
    return cat(op(), "[", kernels::weight_format_name(s_.format), "](T=", s_.T, ",E=", s_.E, ",k=", s_.k, ",",
               pattern_name(s_.pattern), ",N=", s_.N, ",K=", s_.K, s_.group ? cat(",group=", s_.group) : "",
               s_.gather ? ",gather" : "", s_.trans ? ",trans" : "",
               s_.beta != 0 ? cat(",beta=", s_.beta) : "", s_.scatter ? ",scale,out_row" : "",
               s_.preact ? cat(",preact=", kernels::activation_name(s_.act)) : "", s_.pad ? ",padded" : "",
               ")");
  }
  bool swiglu() const { return s_.preact && s_.act == Activation::SwiGLU; }
  int64_t lda() const { return (swiglu() ? 2 * s_.K : s_.K) + s_.pad; }
  int64_t ldc() const { return s_.N + s_.pad; }
  kernels::WeightView view() const {
    return {.format = s_.format, .N = s_.N, .K = s_.K, .trans = s_.trans, .group = s_.group};
  }
  Buffers make(uint64_t seed) const override {
    const Routing rt = make_routing(Rng(seed), s_.T, s_.E, s_.k, s_.pattern, 0.0);
    const Rng rng(seed);
    const kernels::WeightView v = view();
    const int64_t rows = rt.rows();
    Buffers b;
    b.add<int32_t>("offsets", s_.E + 1);
    b.add<int32_t>("gather", s_.gather ? rows : 0);
    b.add<float>("A", (s_.gather ? s_.T : rows) * lda());
    b.add<uint8_t>("W.data", s_.E * v.expert_data_bytes());
    b.add<uint16_t>("W.scales", s_.E * v.expert_params());
    b.add<uint16_t>("W.mins", s_.format == WeightFormat::Int4 ? s_.E * v.expert_params() : 0);
    b.add<float>("W (dequantised (E, N, K), for the tolerance)", s_.E * s_.N * s_.K);
    b.add<float>("scale", s_.scatter ? rows : 0);
    b.add<int32_t>("out_row", s_.scatter ? rows : 0);
    b.add<float>("C", rows * ldc(), s_.beta == 0 ? Role::Out : Role::InOut);
    std::copy(rt.offsets.begin(), rt.offsets.end(), b.host<int32_t>(kOffsets));
    for (int64_t p = 0; s_.gather && p < rows; ++p) {
      b.host<int32_t>(kGather)[p] = rt.perm[p] / static_cast<int32_t>(s_.k);
    }
    for (int64_t p = 0; s_.scatter && p < rows; ++p)
      b.host<int32_t>(kOutRow)[p] = rt.perm[p];  // a permutation
    fill_values(rng.fork(1), b.host<float>(kA), b[kA].count);
    if (s_.scatter) fill_values(rng.fork(4), b.host<float>(kScale), rows);
    if (s_.beta != 0) fill_values(rng.fork(3), b.host<float>(kC), b[kC].count);
    std::vector<float> w(static_cast<size_t>(s_.N * s_.K));
    for (int64_t e = 0; e < s_.E; ++e) {
      fill_values(rng.fork(10 + static_cast<uint64_t>(e)), w.data(), s_.N * s_.K);
      store_expert(b, e, w);
    }
    return b;
  }
  template <class F>
  decltype(auto) with_args(Buffers& b, F&& f) const {
    kernels::GroupedGemmWArgs g;
    g.E = s_.E, g.offsets = b.arg<int32_t>(kOffsets);
    g.A = b.arg<float>(kA), g.lda = lda(), g.gather = s_.gather ? b.arg<int32_t>(kGather) : nullptr;
    g.W = view();
    g.W.data = b.arg<uint8_t>(kData), g.W.scales = b.arg<uint16_t>(kScales),
    g.W.mins = b.arg<uint16_t>(kMins);
    if (!kernels::is_quantized(s_.format)) g.W.scales = nullptr, g.W.mins = nullptr;  // packed: in data
    g.C = b.arg<float>(kC), g.ldc = ldc(), g.beta = static_cast<float>(s_.beta);
    g.scale = s_.scatter ? b.arg<float>(kScale) : nullptr;
    g.out_row = s_.scatter ? b.arg<int32_t>(kOutRow) : nullptr;
    g.a_preact = s_.preact, g.act = s_.act;
    return f(g);
  }
  MOE_OP_CASE_ARGS
  std::vector<double> tolerance(const Buffers& in, int id) const override;
  double flops() const override { return 2.0 * s_.T * s_.k * s_.N * s_.K; }
  double bytes() const override {
    return 4.0 * s_.T * s_.k * (s_.K + s_.N) + static_cast<double>(s_.E) * view().expert_bytes();
  }

 private:
  enum { kOffsets, kGather, kA, kData, kScales, kMins, kWd, kScale, kOutRow, kC };
  // Expert e's weights w (N, K) in the format, and their dequantised values.
  void store_expert(Buffers& b, int64_t e, const std::vector<float>& w) const {
    const kernels::WeightView v = view();
    uint8_t* data = b.host<uint8_t>(kData) + e * v.expert_data_bytes();
    float* wd = b.host<float>(kWd) + e * s_.N * s_.K;  // (N, K)
    if (kernels::is_quantized(s_.format)) {
      const int bits = s_.format == WeightFormat::Int8 ? 8 : 4;
      const kernels::QuantizedMatrix q = kernels::quantize_matrix(w.data(), s_.N, s_.K, bits, s_.group, "W");
      kernels::dequantize_matrix(q.view(), wd);
      std::copy_n(static_cast<const uint8_t*>(q.q.raw()), q.q.nbytes(), data);
      std::copy_n(static_cast<const uint16_t*>(q.scales.raw()), q.scales.numel(),
                  b.host<uint16_t>(kScales) + e * v.expert_params());
      if (bits == 4) {
        std::copy_n(static_cast<const uint16_t*>(q.mins.raw()), q.mins.numel(),
                    b.host<uint16_t>(kMins) + e * v.expert_params());
      }
      return;
    }
    if (s_.format == WeightFormat::Int8Packed) {  // the int8 format, packed
      const kernels::QuantizedMatrix q = kernels::quantize_matrix(w.data(), s_.N, s_.K, 8, s_.group, "W");
      kernels::dequantize_matrix(q.view(), wd);
      const kernels::QuantWeight qv = q.view();
      kernels::pack_int8_weights({.format = WeightFormat::Int8,
                                  .N = s_.N,
                                  .K = s_.K,
                                  .data = qv.q,
                                  .scales = qv.scales,
                                  .group = s_.group},
                                 1, data);
      return;
    }
    if (s_.format == WeightFormat::Int4Packed) {  // the int4 format, packed
      const kernels::QuantizedMatrix q = kernels::quantize_matrix(w.data(), s_.N, s_.K, 4, s_.group, "W");
      kernels::dequantize_matrix(q.view(), wd);
      const kernels::QuantWeight qv = q.view();
      kernels::pack_int4_weights({.format = WeightFormat::Int4,
                                  .N = s_.N,
                                  .K = s_.K,
                                  .data = qv.q,
                                  .scales = qv.scales,
                                  .mins = qv.mins,
                                  .group = s_.group},
                                 1, data);
      return;
    }
    if (s_.format == WeightFormat::Bf16Packed) {
      kernels::pack_bf16_weights({.format = WeightFormat::F32, .N = s_.N, .K = s_.K, .data = w.data()}, 1,
                                 data);
      for (int64_t i = 0; i < s_.N * s_.K; ++i) wd[i] = bf16_to_f32(f32_to_bf16(w[static_cast<size_t>(i)]));
      return;
    }
    for (int64_t n = 0; n < s_.N; ++n) {
      for (int64_t k = 0; k < s_.K; ++k) {
        const int64_t at = s_.trans ? k * s_.N + n : n * s_.K + k;
        const float x = w[static_cast<size_t>(n * s_.K + k)];
        if (kernels::is_bf16(s_.format)) {
          const uint16_t h = f32_to_bf16(x);
          std::memcpy(data + 2 * at, &h, 2);
          wd[n * s_.K + k] = bf16_to_f32(h);
        } else {
          std::memcpy(data + 4 * at, &x, 4);
          wd[n * s_.K + k] = x;
        }
      }
    }
  }
  // Row p's activation value k and a bound on its error (pre-activations: the elementwise chain).
  double a_value(const Buffers& in, int64_t p, int64_t k, double& err) const {
    const int64_t row = s_.gather ? in.host<int32_t>(kGather)[p] : p;
    const float* a = in.host<float>(kA) + row * lda();
    err = 0;
    if (!s_.preact) return kernels::is_bf16(s_.format) ? bf16_round(a[k]) : a[k];
    const double x = a[k], sg = 1.0 / (1.0 + std::exp(-x)), u16 = 16 * unit_roundoff<float>();
    double h = 0;
    if (s_.act == Activation::SwiGLU) {
      h = x * sg * a[s_.K + k];
      err = u16 * (std::fabs(x) + 1) * std::fabs(a[s_.K + k]);
    } else {
      h = s_.act == Activation::Relu   ? std::max(x, 0.0)
          : s_.act == Activation::Silu ? x * sg
                                       : 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0)));
      err = u16 * (std::fabs(x) + 1);
    }
    if (kernels::is_bf16(s_.format)) err += std::ldexp(std::fabs(h), -8);  // may round one bf16 ulp apart
    return h;
  }
  WShape s_;
};

std::vector<double> WGroupedCase::tolerance(const Buffers& in, int id) const {
  std::vector<double> tol(static_cast<size_t>(in[id].count), kNotCompared);  // padding stays out
  const int32_t* off = in.host<int32_t>(kOffsets);
  // int8-packed: one FMA per group into the sum, the row scale's multiply, beta · c; int4-packed: two
  // per group, and the reference's weight rounded once.
  const double terms = s_.format == WeightFormat::Int8Packed ? static_cast<double>(s_.K / s_.group) + 4
                       : s_.format == WeightFormat::Int4Packed
                           ? 2.0 * static_cast<double>(s_.K / s_.group) + 5
                       : kernels::is_quantized(s_.format) ? static_cast<double>(s_.K) / 8 + 10
                                                          : static_cast<double>(s_.K + 6);
  std::vector<double> a(static_cast<size_t>(s_.K)), aerr(static_cast<size_t>(s_.K));
  for (int64_t e = 0; e < s_.E; ++e) {
    for (int64_t p = off[e]; p < off[e + 1]; ++p) {
      for (int64_t k = 0; k < s_.K; ++k)
        a[static_cast<size_t>(k)] = a_value(in, p, k, aerr[static_cast<size_t>(k)]);
      if (kernels::is_int_packed(s_.format)) {  // W8A8 / W4A8: the row quantized with one scale s
        double amax = 0;
        for (double v : a) amax = std::max(amax, std::fabs(v));
        const double sq = amax / 127;
        for (size_t k = 0; k < a.size(); ++k) {
          a[k] = std::fabs(a[k]) + sq / 2;  // >= |q_k · s|
          // a pre-activation one ulp apart may round to the next code: off by s in one term
          aerr[k] = aerr[k] > 0 ? sq * 1.01 : 0.0;
        }
      }
      const int64_t out = s_.scatter ? in.host<int32_t>(kOutRow)[p] : p;
      const double sc = s_.scatter ? std::fabs(in[kScale].get(p)) : 1.0;
      for (int64_t n = 0; n < s_.N; ++n) {
        double mag = s_.beta != 0 ? std::fabs(s_.beta * in[kC].get(p * ldc() + n)) : 0.0, err = 0;
        for (int64_t k = 0; k < s_.K; ++k) {
          const double w = std::fabs(in[kWd].get((e * s_.N + n) * s_.K + k));
          mag += std::fabs(a[static_cast<size_t>(k)]) * w;
          err += aerr[static_cast<size_t>(k)] * w;
        }
        tol[static_cast<size_t>(out * ldc() + n)] = sc * (terms * std::ldexp(mag, -24) + err);
      }
    }
  }
  return tol;
}

}  // namespace

void add_weight_format_cases(CaseList& out) {
  // bf16 grouped: experts with no rows, one expert with all rows, k = E, E = 1, K across blocks,
  // several row and column tiles, padded strides, accumulation into C, K = 0.
  for (bool gather : {true, false}) {
    for (bool trans_w : {false, true}) {
      out.push_back(
          std::make_unique<Bf16GroupedCase>(Bf16Shape{17, 4, 2, Pattern::Random, 37, 29, gather, trans_w}));
      out.push_back(std::make_unique<Bf16GroupedCase>(
          Bf16Shape{50, 8, 1, Pattern::AllToOne, 70, 301, gather, trans_w}));
    }
  }
  out.push_back(std::make_unique<Bf16GroupedCase>(Bf16Shape{45, 16, 2, Pattern::EvenOnly, 65, 513}));
  out.push_back(std::make_unique<Bf16GroupedCase>(Bf16Shape{9, 4, 4, Pattern::Random, 17, 2}));
  out.push_back(std::make_unique<Bf16GroupedCase>(Bf16Shape{5, 1, 1, Pattern::Random, 1, 1, false}));
  out.push_back(std::make_unique<Bf16GroupedCase>(Bf16Shape{300, 3, 2, Pattern::Random, 70, 520}));
  out.push_back(std::make_unique<Bf16GroupedCase>(Bf16Shape{8, 3, 1, Pattern::Random, 1100, 40}));
  out.push_back(
      std::make_unique<Bf16GroupedCase>(Bf16Shape{31, 6, 2, Pattern::Random, 33, 45, true, false, 0.0, 3}));
  out.push_back(
      std::make_unique<Bf16GroupedCase>(Bf16Shape{31, 6, 2, Pattern::Random, 37, 29, true, true, 1.0, 2}));
  out.push_back(
      std::make_unique<Bf16GroupedCase>(Bf16Shape{12, 4, 2, Pattern::Random, 9, 0, true, false, 0.5}));
  out.push_back(std::make_unique<Bf16GroupedCase>(Bf16Shape{0, 4, 2, Pattern::Random, 8, 8}));
  // grouped_gemm_w, every format: experts with no rows (EvenOnly), one expert with all rows, gather or
  // not, padded strides, beta, scale + out_row, pre-activations, odd K (f32, bf16), group sizes and
  // the register / buffer paths of int8 / int4 (<= 8 and > 8 rows per expert), K = 0, no rows.
  using WF = WeightFormat;
  for (WF f : {WF::F32, WF::Bf16, WF::Int8, WF::Int4, WF::Bf16Packed, WF::Int8Packed, WF::Int4Packed}) {
    const bool q = kernels::has_groups(f);
    const int64_t g = q ? 32 : 0, K = q ? 64 : 29, K2 = q ? 256 : 301;
    auto add = [&](WShape s) {
      s.format = f;
      if (q) s.group = s.group ? s.group : g;
      out.push_back(std::make_unique<WGroupedCase>(s));
    };
    for (bool gather : {true, false}) {
      add({.T = 17, .E = 4, .k = 2, .N = 37, .K = K, .gather = gather});
      add({.T = 50, .E = 8, .k = 1, .pattern = Pattern::AllToOne, .N = 70, .K = K2, .gather = gather});
    }
    add({.T = 45, .E = 16, .k = 2, .pattern = Pattern::EvenOnly, .N = 65, .K = q ? 512 : 513});
    add({.T = 31, .E = 6, .k = 2, .N = 33, .K = K, .pad = 3});
    add({.T = 31, .E = 6, .k = 2, .N = 37, .K = K, .beta = 1.0, .pad = 2});
    add({.T = 12, .E = 4, .k = 2, .N = 9, .K = K, .beta = 0.5});
    add({.T = 23, .E = 4, .k = 2, .N = 40, .K = K, .scatter = true});
    add({.T = 23, .E = 4, .k = 2, .N = 40, .K = K, .preact = true, .act = Activation::SwiGLU});
    add({.T = 23, .E = 4, .k = 2, .N = 21, .K = K, .scatter = true, .preact = true, .act = Activation::Gelu});
    add({.T = 300, .E = 3, .k = 2, .N = 140, .K = K2});
    add({.T = 12, .E = 4, .k = 2, .N = 9, .K = 0, .beta = 0.5});
    add({.T = 0, .E = 4, .k = 2, .N = 8, .K = K});
    if (f == WF::Bf16Packed) {
      add({.T = 9, .E = 4, .k = 4, .N = 17, .K = 2});
      add({.T = 90, .E = 2, .k = 1, .pattern = Pattern::AllToOne, .N = 70, .K = 96});  // rows > an AMX block
    } else if (!q) {
      add({.T = 17, .E = 4, .k = 2, .N = 37, .K = K, .trans = true});
      add({.T = 31, .E = 6, .k = 2, .N = 37, .K = K, .trans = true, .beta = 1.0, .pad = 2});
      add({.T = 9, .E = 4, .k = 4, .N = 17, .K = 2});
    } else {
      add({.T = 5, .E = 2, .k = 1, .N = 37, .K = 384, .group = 128});
      add({.T = 40, .E = 2, .k = 2, .N = 37, .K = 384, .group = 64, .beta = -0.75});
    }
  }
  // bf16 dense.
  for (bool trans_w : {false, true}) {
    out.push_back(std::make_unique<DenseWeightCase>(DenseShape{7, 65, 513, 16, 0, false, trans_w}));
    out.push_back(std::make_unique<DenseWeightCase>(DenseShape{1, 33, 64, 16, 0, false, trans_w, 0.5}));
  }
  out.push_back(std::make_unique<DenseWeightCase>(DenseShape{0, 5, 8, 16}));
  // int8 / int4: decode (M = 1), small batches, a row buffer's worth, gathered rows, accumulation.
  for (int bits : {8, 4}) {
    for (int64_t group : {32, 64, 128}) {
      out.push_back(std::make_unique<DenseWeightCase>(DenseShape{1, 37, 384, bits, group}));
      out.push_back(std::make_unique<DenseWeightCase>(DenseShape{3, 37, 384, bits, group, true, false, 1.0}));
    }
    out.push_back(std::make_unique<DenseWeightCase>(DenseShape{17, 21, 256, bits, 64, true}));
    out.push_back(std::make_unique<DenseWeightCase>(DenseShape{300, 21, 128, bits, 64, false, false, -0.75}));
    out.push_back(std::make_unique<DenseWeightCase>(DenseShape{2, 1, 32, bits, 32}));
    out.push_back(std::make_unique<DenseWeightCase>(DenseShape{0, 4, 64, bits, 64}));
  }
}

}  // namespace moe::ops_test
