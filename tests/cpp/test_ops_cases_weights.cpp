// Op cases of the weight-format GEMMs: grouped_gemm_bf16w, gemm_bf16w (moe/kernels/ops_bf16.h) and
// gemm_qw (moe/kernels/ops_quant.h), in the consistency harness beside the f32 ops (every backend,
// thread-count determinism). Instruction-set sweeps and format details stay in test_ops_bf16.cpp and
// test_quant.cpp.
//
// Tolerances (the principles of test_ops_bf16.cpp and test_quant.cpp):
//  * bf16 weights: activations are rounded to bf16 as they are read, and a product of two bf16
//    values is exact in fp32, so only the K additions (and beta * c) round, each within 2^-24 of a
//    partial sum bounded by S = sum |bf16(a) w| + |beta c|: |cpu - ref| <= (K + 4) 2^-24 S.
//  * int8/int4 weights: both backends multiply the same fp32 dequantised weights; the Cpu kernel sums
//    in >= 8 lanes then a tree of <= 4 additions, the portable path also rounds each product:
//    |cpu - ref| <= (K / 8 + 8) 2^-24 S with S = sum |a w| + |beta c|.
#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "moe/core/dtype.h"
#include "moe/core/error.h"
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
