// grouped_gemm_w (moe/kernels/weights.h): every format on every instruction set of this machine
// against the reference, bit-identical results for any thread count, and the WeightView checks.
// (The harness cases of test_ops_cases_weights.cpp cover the features on the default instruction set.)
//
// Tolerance: the bound of test_ops_cases_weights.cpp, |cpu - ref| <= terms · 2^-24 · S with
// S = Σ_k |a_k · w_k| + |beta · c| (a rounded to bf16 with bf16 weights), terms = K + 6 for f32 and
// bf16 (a sequential sum per K block), K / 8 + 10 for int8 / int4 (>= 8 lanes and a tree).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "kernels/cpu/wgemm/quant_rows.h"
#include "kernels/quant_format.h"
#include "moe/core/dtype.h"
#include "moe/core/error.h"
#include "moe/core/parallel.h"
#include "moe/kernels/isa.h"
#include "moe/kernels/ops_bf16.h"
#include "moe/kernels/ops_quant.h"
#include "moe/kernels/weights.h"

namespace moe {
namespace {

using kernels::Backend;
using kernels::WeightFormat;

struct Lcg {
  uint64_t s;
  explicit Lcg(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
  uint32_t next() {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<uint32_t>(s >> 33);
  }
  float uniform() { return static_cast<float>(next()) * (2.0f / 2147483648.0f) - 1.0f; }
};

struct Shape {
  std::vector<int32_t> counts;  // rows per expert
  int64_t N = 0, K = 0;
  bool gather = true, scatter = false;
  float beta = 0;
};

// One call's buffers in one format; Wd the dequantised weights (E, N, K) for the bound.
struct Data {
  WeightFormat format;
  Shape s;
  int64_t E = 0, rows = 0, lda = 0, ldc = 0;
  std::vector<int32_t> offsets, gather, out_row;
  std::vector<float> A, C0, scale, Wd;
  std::vector<uint8_t> data;
  std::vector<uint16_t> scales, mins;

  Data(WeightFormat f, const Shape& shape, uint64_t seed) : format(f), s(shape) {
    E = static_cast<int64_t>(s.counts.size());
    offsets.push_back(0);
    for (int32_t c : s.counts) offsets.push_back(offsets.back() + c);
    rows = offsets.back();
    lda = s.K + 3;
    ldc = s.N + 2;
    Lcg r(seed);
    const int64_t a_rows = s.gather ? rows / 2 + 1 : rows;
    for (int64_t i = 0; i < a_rows * lda; ++i) A.push_back(r.uniform());
    for (int64_t p = 0; p < rows; ++p) {
      gather.push_back(static_cast<int32_t>(r.next() % static_cast<uint32_t>(a_rows)));
      out_row.push_back(static_cast<int32_t>(rows - 1 - p));
      scale.push_back(r.uniform());
    }
    for (int64_t i = 0; i < rows * ldc; ++i) C0.push_back(r.uniform());
    Wd.resize(static_cast<size_t>(E * s.N * s.K));
    for (int64_t e = 0; e < E; ++e) {
      std::vector<float> w(static_cast<size_t>(s.N * s.K));
      for (float& v : w) v = r.uniform();
      store(e, w);
    }
  }
  void store(int64_t e, const std::vector<float>& w) {
    float* wd = Wd.data() + e * s.N * s.K;
    if (kernels::is_quantized(format)) {
      const int bits = format == WeightFormat::Int8 ? 8 : 4;
      const kernels::QuantizedMatrix q = kernels::quantize_matrix(w.data(), s.N, s.K, bits, 64, "W");
      kernels::dequantize_matrix(q.view(), wd);
      const auto* qb = static_cast<const uint8_t*>(q.q.raw());
      data.insert(data.end(), qb, qb + q.q.nbytes());
      const auto* sc = static_cast<const uint16_t*>(q.scales.raw());
      scales.insert(scales.end(), sc, sc + q.scales.numel());
      if (bits == 4) {
        const auto* mn = static_cast<const uint16_t*>(q.mins.raw());
        mins.insert(mins.end(), mn, mn + q.mins.numel());
      }
      return;
    }
    if (format == WeightFormat::Int8Packed) {  // the int8 format, packed
      const kernels::QuantizedMatrix q = kernels::quantize_matrix(w.data(), s.N, s.K, 8, 64, "W");
      kernels::dequantize_matrix(q.view(), wd);
      const size_t at = data.size();
      data.resize(at + static_cast<size_t>(kernels::packed_int8_bytes(s.N, s.K, 64)));
      kernels::pack_int8_weights({.format = WeightFormat::Int8,
                                  .N = s.N,
                                  .K = s.K,
                                  .data = q.q.raw(),
                                  .scales = static_cast<const uint16_t*>(q.scales.raw()),
                                  .group = 64},
                                 1, data.data() + at);
      return;
    }
    if (format == WeightFormat::Int4Packed) {  // the int4 format, packed
      const kernels::QuantizedMatrix q = kernels::quantize_matrix(w.data(), s.N, s.K, 4, 64, "W");
      kernels::dequantize_matrix(q.view(), wd);
      const size_t at = data.size();
      data.resize(at + static_cast<size_t>(kernels::packed_int4_bytes(s.N, s.K, 64)));
      kernels::pack_int4_weights({.format = WeightFormat::Int4,
                                  .N = s.N,
                                  .K = s.K,
                                  .data = q.q.raw(),
                                  .scales = static_cast<const uint16_t*>(q.scales.raw()),
                                  .mins = static_cast<const uint16_t*>(q.mins.raw()),
                                  .group = 64},
                                 1, data.data() + at);
      return;
    }
    if (format == WeightFormat::Bf16Packed) {  // packed from the f32 values (rounded as it packs)
      const size_t at = data.size();
      data.resize(at + static_cast<size_t>(kernels::packed_bf16_bytes(s.N, s.K)));
      kernels::pack_bf16_weights({.format = WeightFormat::F32, .N = s.N, .K = s.K, .data = w.data()}, 1,
                                 data.data() + at);
      for (int64_t i = 0; i < s.N * s.K; ++i) wd[i] = bf16_to_f32(f32_to_bf16(w[static_cast<size_t>(i)]));
      return;
    }
    for (int64_t i = 0; i < s.N * s.K; ++i) {
      float v = w[static_cast<size_t>(i)];
      if (format == WeightFormat::Bf16) {
        const uint16_t h = f32_to_bf16(v);
        data.push_back(static_cast<uint8_t>(h & 0xff));
        data.push_back(static_cast<uint8_t>(h >> 8));
        v = bf16_to_f32(h);
      } else {
        uint8_t b[4];
        std::memcpy(b, &v, 4);
        data.insert(data.end(), b, b + 4);
      }
      wd[i] = v;
    }
  }
  kernels::GroupedGemmWArgs args(std::vector<float>& C) const {
    kernels::GroupedGemmWArgs g;
    g.E = E, g.offsets = offsets.data(), g.A = A.data(), g.lda = lda;
    g.gather = s.gather ? gather.data() : nullptr;
    g.W.format = format, g.W.N = s.N, g.W.K = s.K, g.W.data = data.data();
    if (kernels::is_quantized(format)) g.W.scales = scales.data();
    if (kernels::has_groups(format)) g.W.group = 64;
    if (format == WeightFormat::Int4) g.W.mins = mins.data();
    g.C = C.data(), g.ldc = ldc, g.beta = s.beta;
    if (s.scatter) g.scale = scale.data(), g.out_row = out_row.data();
    return g;
  }
  std::vector<float> run(Backend b) const {
    std::vector<float> C = C0;
    if (s.beta == 0) {
      for (int64_t p = 0; p < rows; ++p)
        for (int64_t n = 0; n < s.N; ++n) C[p * ldc + n] = std::numeric_limits<float>::quiet_NaN();
    }
    kernels::grouped_gemm_w(b, args(C));
    return C;
  }
  double bound(int64_t e, int64_t p, int64_t n) const {
    const float* a = A.data() + (s.gather ? gather[static_cast<size_t>(p)] : p) * lda;
    double S = std::fabs(static_cast<double>(s.beta) * C0[p * ldc + n]), amax = 0;
    for (int64_t k = 0; k < s.K; ++k) amax = std::max(amax, std::fabs(double(a[k])));
    for (int64_t k = 0; k < s.K; ++k) {
      double av = kernels::is_bf16(format) ? bf16_to_f32(f32_to_bf16(a[k])) : a[k];
      if (kernels::is_int_packed(format)) av = std::fabs(av) + amax / 254;  // >= |q_k · s_p|
      S += std::fabs(av * Wd[(e * s.N + n) * s.K + k]);
    }
    // int8-packed: one FMA per group of 64 and the scale's multiply (and the add of beta · c);
    // int4-packed: two per group (the weight q · scale + min is rounded in the reference, too).
    const double terms = format == WeightFormat::Int8Packed   ? s.K / 64.0 + 4
                         : format == WeightFormat::Int4Packed ? s.K / 32.0 + 6
                         : kernels::is_quantized(format)      ? s.K / 8.0 + 10
                                                              : s.K + 6.0;
    return (s.scatter ? std::fabs(scale[static_cast<size_t>(p)]) : 1.0) * terms * std::ldexp(S, -24);
  }
};

const WeightFormat kFormats[] = {WeightFormat::F32,       WeightFormat::Bf16,       WeightFormat::Int8,
                                 WeightFormat::Int4,      WeightFormat::Bf16Packed, WeightFormat::Int8Packed,
                                 WeightFormat::Int4Packed};

// Restores the default: every family at its best instruction set (and the tiles on the hardware).
struct CapGuard {
  ~CapGuard() {
    kernels::set_amx_emulation(false);
    kernels::reset_cpu_isa();
  }
};

TEST(WeightGemm, EveryFormatOnEveryInstructionSetMatchesRef) {
  CapGuard guard;
  if (!kernels::cpu_isa_supported("amx")) kernels::set_amx_emulation(true);  // the tile code, emulated
  const std::vector<Shape> shapes = {
      {{3, 0, 70, 9}, 37, 128, true, false, 0.0f},  // an empty expert, > 64 rows, <= 8 and > 8 rows
      {{5, 12}, 50, 192, true, true, 0.0f},         // scale and out_row
      {{1, 2}, 33, 64, false, false, 0.5f},         // beta, rows in place
      {{17}, 70, 256, true, false, 1.0f},
  };
  uint64_t seed = 1;
  int ran = 0;
  for (const std::string& cap : kernels::cpu_isa_names()) {
    if (!kernels::cpu_isa_supported(cap)) continue;
    kernels::set_cpu_isa(cap);
    for (WeightFormat f : kFormats) {
      for (const Shape& s : shapes) {
        const Data d(f, s, ++seed);
        const std::vector<float> ref = d.run(Backend::Ref), got = d.run(Backend::Cpu);
        for (int64_t e = 0; e < d.E; ++e) {
          for (int64_t p = d.offsets[static_cast<size_t>(e)]; p < d.offsets[static_cast<size_t>(e) + 1];
               ++p) {
            const int64_t row = s.scatter ? d.out_row[static_cast<size_t>(p)] : p;
            for (int64_t n = 0; n < s.N; ++n) {
              const float r = ref[row * d.ldc + n], g = got[row * d.ldc + n];
              ASSERT_TRUE(std::isfinite(g)) << cap << " " << kernels::weight_format_name(f);
              ASSERT_LE(std::fabs(double(g) - r), d.bound(e, p, n))
                  << cap << " " << kernels::weight_format_name(f) << " row " << p << " col " << n;
            }
          }
        }
        ++ran;
      }
    }
  }
  EXPECT_GT(ran, 0);
}

TEST(WeightGemm, BitIdenticalForAnyThreadCount) {
  const int saved = num_threads();
  for (WeightFormat f : kFormats) {
    for (bool scatter : {false, true}) {
      const Data d(f, {{1, 0, 200, 6, 90}, 300, 256, true, scatter, scatter ? 0.0f : 1.0f}, 7);
      set_num_threads(1);
      const std::vector<float> one = d.run(Backend::Cpu);
      for (int t : {2, 3, 5}) {
        set_num_threads(t);
        EXPECT_EQ(std::memcmp(one.data(), d.run(Backend::Cpu).data(), one.size() * sizeof(float)), 0)
            << kernels::weight_format_name(f) << " threads " << t;
      }
    }
  }
  set_num_threads(saved);
}

TEST(WeightGemm, ViewErrors) {
  const Data d(WeightFormat::Int8, {{2}, 8, 64}, 3);
  std::vector<float> C(d.C0);
  auto expect = [&](kernels::GroupedGemmWArgs g, const std::vector<std::string>& parts) {
    for (Backend b : {Backend::Ref, Backend::Cpu}) {
      try {
        kernels::grouped_gemm_w(b, g);
        ADD_FAILURE() << "no error for " << parts.back();
      } catch (const Error& e) {
        for (const std::string& p : parts)
          EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
      }
    }
  };
  kernels::GroupedGemmWArgs g = d.args(C);
  g.W.trans = true;
  expect(g, {"grouped_gemm_w", "W.trans", "int8"});
  g = d.args(C), g.W.group = 48;
  expect(g, {"grouped_gemm_w", "W.group", "48"});
  g = d.args(C), g.W.scales = nullptr;
  expect(g, {"grouped_gemm_w", "W.scales is null"});
  g = d.args(C), g.W.format = WeightFormat::Int4;
  expect(g, {"grouped_gemm_w", "W.mins is null"});
  g = d.args(C), g.W.format = WeightFormat::Bf16;
  expect(g, {"grouped_gemm_w", "W.scales and W.mins must be null", "bf16"});
  g = d.args(C), g.W.data_stride = 10;
  expect(g, {"grouped_gemm_w", "W.data_stride = 10"});
  g = d.args(C), g.scale = d.scale.data(), g.beta = 1;
  expect(g, {"grouped_gemm_w", "beta must be 0"});
}

// ---------------------------------------------------------------------------------------------
// bf16-packed: the packing, and the kernels that read it.

// Shapes with every edge of the packed kernels: rows below and above a register tile and an AMX
// block (1, 5, 13, 17, 31, 33, 70 rows), N not a multiple of 16 or of a kernel's panels, K not a
// multiple of 32 (odd too), K across several K blocks (600), an empty expert.
std::vector<Shape> packed_shapes() {
  return {
      {{1, 0, 5}, 40, 70, true, false, 0.0f},  {{13, 17, 31}, 100, 33, true, true, 0.0f},
      {{33, 70}, 16, 600, false, false, 0.5f}, {{64, 2}, 130, 256, true, false, 1.0f},
      {{40}, 7, 31, true, true, 0.0f},
  };
}

TEST(WeightGemm, PackingGivesOneLayoutFromEverySource) {
  const int64_t E = 2, N = 37, K = 45;
  Lcg r(11);
  std::vector<float> f(static_cast<size_t>(E * N * K));
  for (float& v : f) v = r.uniform();
  std::vector<uint16_t> nk(f.size()), kn(f.size());  // bf16 (E, N, K) and (E, K, N)
  for (int64_t e = 0; e < E; ++e)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) {
        const uint16_t h = f32_to_bf16(f[static_cast<size_t>((e * N + n) * K + k)]);
        nk[static_cast<size_t>((e * N + n) * K + k)] = h;
        kn[static_cast<size_t>((e * K + k) * N + n)] = h;
      }
  const int64_t bytes = E * kernels::packed_bf16_bytes(N, K);
  EXPECT_EQ(kernels::packed_bf16_bytes(N, K), 3 * 32 * 16 * 4);  // 3 panels, K padded to 64: 32 pairs
  std::vector<uint8_t> a(static_cast<size_t>(bytes)), b(a.size()), c(a.size());
  const kernels::WeightView v = kernels::pack_bf16_weights(
      {.format = WeightFormat::F32, .N = N, .K = K, .data = f.data()}, E, a.data());
  kernels::pack_bf16_weights({.format = WeightFormat::Bf16, .N = N, .K = K, .data = nk.data()}, E, b.data());
  kernels::pack_bf16_weights({.format = WeightFormat::Bf16, .N = N, .K = K, .trans = true, .data = kn.data()},
                             E, c.data());
  EXPECT_EQ(a, b);
  EXPECT_EQ(a, c);
  EXPECT_EQ(v.format, WeightFormat::Bf16Packed);
  EXPECT_EQ(v.expert_data_bytes(), bytes / E);
  // Word (q, j) of panel P: op(W)[2q, 16P + j] low, op(W)[2q + 1, 16P + j] high; zero padding.
  const auto* words = reinterpret_cast<const uint32_t*>(a.data());
  const int64_t kp = kernels::packed_bf16_pairs(K);
  for (int64_t e = 0; e < E; ++e)
    for (int64_t P = 0; P < 3; ++P)
      for (int64_t q = 0; q < kp; ++q)
        for (int64_t j = 0; j < 16; ++j) {
          const uint32_t w = words[((e * 3 + P) * kp + q) * 16 + j];
          const int64_t n = 16 * P + j;
          auto at = [&](int64_t k) -> uint32_t {
            return n < N && k < K ? nk[static_cast<size_t>((e * N + n) * K + k)] : 0u;
          };
          ASSERT_EQ(w, at(2 * q) | (at(2 * q + 1) << 16))
              << "e " << e << " P " << P << " q " << q << " j " << j;
        }
  EXPECT_THROW(kernels::pack_bf16_weights({.format = WeightFormat::Int8, .N = N, .K = K, .data = f.data()}, E,
                                          a.data()),
               Error);
}

TEST(WeightGemm, PackedBf16GivesThePlainBf16Result) {
  for (const Shape& s : packed_shapes()) {
    const Data plain(WeightFormat::Bf16, s, 21), packed(WeightFormat::Bf16Packed, s, 21);
    const std::vector<float> a = plain.run(Backend::Ref), b = packed.run(Backend::Ref);
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0);  // the same double sums
  }
}

// generic, avx2, avx512 and the amx tiles (emulated) sum in one order with exact products.
TEST(WeightGemm, PackedKernelsAreBitIdenticalAcrossInstructionSets) {
  CapGuard guard;
  const bool hardware = kernels::gemm_bf16_isa_supported("amx");
  if (!hardware) kernels::set_amx_emulation(true);
  uint64_t seed = 40;
  for (const Shape& s : packed_shapes()) {
    const Data d(WeightFormat::Bf16Packed, s, ++seed);
    kernels::set_gemm_bf16_isa("generic");
    const std::vector<float> want = d.run(Backend::Cpu);
    for (const char* isa : {"avx2", "avx512", "amx"}) {
      if (!kernels::gemm_bf16_isa_supported(isa) || (hardware && std::string(isa) == "amx")) continue;
      kernels::set_gemm_bf16_isa(isa);
      const std::vector<float> got = d.run(Backend::Cpu);
      EXPECT_EQ(std::memcmp(want.data(), got.data(), want.size() * sizeof(float)), 0)
          << isa << " differs from generic, shape N " << s.N << " K " << s.K;
    }
  }
}

// Where the CPU has tiles: the hardware within the bound of the emulation (the manual leaves the
// order of the additions and the treatment of denormals to the hardware).
TEST(WeightGemm, AmxTilesMatchTheEmulation) {
  CapGuard guard;
  if (!kernels::gemm_bf16_isa_supported("amx")) GTEST_SKIP() << "no AMX tiles on this CPU (or no permission)";
  uint64_t seed = 60;
  for (const Shape& s : packed_shapes()) {
    const Data d(WeightFormat::Bf16Packed, s, ++seed);
    kernels::set_gemm_bf16_isa("amx");
    const std::vector<float> hw = d.run(Backend::Cpu);
    kernels::set_amx_emulation(true);
    kernels::set_gemm_bf16_isa("amx");
    const std::vector<float> emu = d.run(Backend::Cpu);
    kernels::set_amx_emulation(false);
    for (int64_t e = 0; e < d.E; ++e)
      for (int64_t p = d.offsets[static_cast<size_t>(e)]; p < d.offsets[static_cast<size_t>(e) + 1]; ++p) {
        const int64_t row = s.scatter ? d.out_row[static_cast<size_t>(p)] : p;
        for (int64_t n = 0; n < s.N; ++n)
          ASSERT_LE(std::fabs(double(hw[row * d.ldc + n]) - emu[row * d.ldc + n]), d.bound(e, p, n));
      }
  }
}

TEST(WeightGemm, PackedViewErrors) {
  const Data d(WeightFormat::Bf16Packed, {{2}, 8, 64}, 3);
  std::vector<float> C(d.C0);
  kernels::GroupedGemmWArgs g = d.args(C);
  g.W.trans = true;
  for (Backend b : {Backend::Ref, Backend::Cpu}) {
    try {
      kernels::grouped_gemm_w(b, g);
      ADD_FAILURE() << "no error for trans";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("bf16-packed"), std::string::npos) << e.what();
    }
  }
}

// ---------------------------------------------------------------------------------------------
// int8-packed (W8A8): the activation quantization, against the documented formula.

// int4-packed (W4A8) follows the same formula with the int4 weight q · scale + min: one more FMA per
// group (the min's), and the reference's weight rounded once.
void check_w8a8_formula(WeightFormat format) {
  CapGuard guard;
  const bool int4 = format == WeightFormat::Int4Packed;
  const int64_t N = 21, K = 128, G = 32;
  Lcg r(5);
  std::vector<float> w(static_cast<size_t>(N * K));
  for (float& v : w) v = r.uniform();
  const kernels::QuantizedMatrix q = kernels::quantize_matrix(w.data(), N, K, int4 ? 4 : 8, G, "W");
  std::vector<float> wd(static_cast<size_t>(N * K));
  kernels::dequantize_matrix(q.view(), wd.data());
  std::vector<uint8_t> packed(
      static_cast<size_t>(int4 ? kernels::packed_int4_bytes(N, K, G) : kernels::packed_int8_bytes(N, K, G)));
  const kernels::WeightView src{.format = int4 ? WeightFormat::Int4 : WeightFormat::Int8,
                                .N = N,
                                .K = K,
                                .data = q.q.raw(),
                                .scales = static_cast<const uint16_t*>(q.scales.raw()),
                                .mins = int4 ? static_cast<const uint16_t*>(q.mins.raw()) : nullptr,
                                .group = G};
  const kernels::WeightView v = int4 ? kernels::pack_int4_weights(src, 1, packed.data())
                                     : kernels::pack_int8_weights(src, 1, packed.data());
  const double terms = int4 ? 2.0 * K / G + 5 : K / G + 4.0;
  // Rows: random, zero, one with NaN, one with inf, a large one, one with a single non-zero.
  const int64_t M = 6;
  std::vector<float> A(static_cast<size_t>(M * K));
  for (int64_t k = 0; k < K; ++k) {
    A[static_cast<size_t>(k)] = r.uniform();
    A[static_cast<size_t>(2 * K + k)] = r.uniform();
    A[static_cast<size_t>(3 * K + k)] = r.uniform();
    A[static_cast<size_t>(4 * K + k)] = 1e30f * r.uniform();
  }
  A[static_cast<size_t>(2 * K + 7)] = std::numeric_limits<float>::quiet_NaN();
  A[static_cast<size_t>(3 * K + 100)] = -std::numeric_limits<float>::infinity();
  A[static_cast<size_t>(5 * K + 33)] = -2.5f;
  const int32_t offsets[2] = {0, static_cast<int32_t>(M)};
  for (const std::string isa : {"generic", "avx512"}) {
    if (!kernels::gemm_quant_isa_supported(isa)) continue;
    kernels::set_gemm_quant_isa(isa);
    for (Backend b : {Backend::Ref, Backend::Cpu}) {
      std::vector<float> C(static_cast<size_t>(M * N), -1.0f);
      kernels::GroupedGemmWArgs g;
      g.E = 1, g.offsets = offsets, g.A = A.data(), g.lda = K, g.W = v, g.C = C.data(), g.ldc = N;
      kernels::grouped_gemm_w(b, g);
      for (int64_t m = 0; m < M; ++m) {
        const float* a = A.data() + m * K;
        double amax = 0;
        bool finite = true;
        for (int64_t k = 0; k < K; ++k) {
          finite = finite && std::isfinite(a[k]);
          amax = std::max(amax, double(std::fabs(a[k])));
        }
        for (int64_t n = 0; n < N; ++n) {
          const float c = C[static_cast<size_t>(m * N + n)];
          SCOPED_TRACE(isa + " " + kernels::backend_name(b) + " row " + std::to_string(m));
          if (!finite) {
            ASSERT_TRUE(std::isnan(c));
            continue;
          }
          if (amax == 0) {
            ASSERT_EQ(c, 0.0f);
            continue;
          }
          const float s = static_cast<float>(amax) / 127.0f, inv = 127.0f / static_cast<float>(amax);
          double want = 0, S = 0, qerr = 0;
          for (int64_t k = 0; k < K; ++k) {
            const double qa = std::nearbyint(a[k] * inv), wk = wd[static_cast<size_t>(n * K + k)];
            want += qa * wk;
            S += std::fabs(qa * wk);
            qerr += 0.5 * s * std::fabs(wk);  // |a - q s| <= s / 2
          }
          want *= s;
          ASSERT_LE(std::fabs(c - want), terms * std::ldexp(S * s, -24)) << "col " << n;
          // and within the quantization error of the f32 product with the dequantised weights
          double f32 = 0;
          for (int64_t k = 0; k < K; ++k) f32 += double(a[k]) * wd[static_cast<size_t>(n * K + k)];
          ASSERT_LE(std::fabs(c - f32), qerr * 1.0001 + terms * std::ldexp(S * s, -24)) << "col " << n;
        }
      }
    }
  }
}

TEST(WeightGemm, Int8PackedFollowsTheW8A8Formula) { check_w8a8_formula(WeightFormat::Int8Packed); }
TEST(WeightGemm, Int4PackedFollowsTheW4A8Formula) { check_w8a8_formula(WeightFormat::Int4Packed); }

// vpdpbusd, the AMX tiles (emulated where the CPU has none) and the portable kernel: the same integer
// sums and the same fp32 order.
TEST(WeightGemm, Int8PackedKernelsAreBitIdentical) {
  CapGuard guard;
  if (!kernels::gemm_quant_isa_supported("avx512")) GTEST_SKIP() << "no avx512";
  if (!kernels::gemm_quant_isa_supported("amx")) kernels::set_amx_emulation(true);
  const std::vector<Shape> shapes = {{{1, 0, 5, 13}, 40, 64, true, false, 0.0f},
                                     {{7, 50}, 100, 192, true, true, 0.0f},
                                     {{33}, 16, 640, false, false, 0.5f},
                                     {{49, 2}, 130, 128, true, false, 1.0f}};
  uint64_t seed = 80;
  for (const Shape& s : shapes) {
    const Data d(WeightFormat::Int8Packed, s, ++seed);
    kernels::set_gemm_quant_isa("generic");
    const std::vector<float> want = d.run(Backend::Cpu);
    for (const char* isa : {"avx512", "amx"}) {
      kernels::set_gemm_quant_isa(isa);
      const std::vector<float> got = d.run(Backend::Cpu);
      EXPECT_EQ(std::memcmp(want.data(), got.data(), want.size() * sizeof(float)), 0)
          << isa << ": N " << s.N << " K " << s.K;
    }
  }
}

// vpdpbusd on the nibbles and the portable kernel: the same integer sums and the same fp32 order.
TEST(WeightGemm, Int4PackedKernelsAreBitIdentical) {
  CapGuard guard;
  if (!kernels::gemm_quant_isa_supported("avx512")) GTEST_SKIP() << "no avx512";
  const std::vector<Shape> shapes = {{{1, 0, 5, 13}, 40, 64, true, false, 0.0f},
                                     {{7, 50}, 100, 192, true, true, 0.0f},
                                     {{33}, 16, 640, false, false, 0.5f},
                                     {{49, 2}, 130, 128, true, false, 1.0f}};
  uint64_t seed = 90;
  for (const Shape& s : shapes) {
    const Data d(WeightFormat::Int4Packed, s, ++seed);
    kernels::set_gemm_quant_isa("generic");
    const std::vector<float> want = d.run(Backend::Cpu);
    kernels::set_gemm_quant_isa("avx512");
    const std::vector<float> got = d.run(Backend::Cpu);
    EXPECT_EQ(std::memcmp(want.data(), got.data(), want.size() * sizeof(float)), 0)
        << "N " << s.N << " K " << s.K;
  }
}

TEST(WeightGemm, Int4PackingErrors) {
  std::vector<float> w(64 * 64, 0.5f);
  const kernels::QuantizedMatrix q = kernels::quantize_matrix(w.data(), 64, 64, 4, 64, "W");
  std::vector<uint8_t> dst(static_cast<size_t>(kernels::packed_int4_bytes(64, 64, 64)));
  auto msg = [&](kernels::WeightView src) {
    try {
      kernels::pack_int4_weights(src, 1, dst.data(), "experts");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(msg({.format = WeightFormat::Int8, .N = 64, .K = 64, .data = q.q.raw()}).find("expected int4"),
            std::string::npos);
  EXPECT_NE(msg({.format = WeightFormat::Int4,
                 .N = 64,
                 .K = 64,
                 .data = q.q.raw(),
                 .scales = static_cast<const uint16_t*>(q.scales.raw()),
                 .group = 64})
                .find("W.mins is null"),
            std::string::npos);
  const Data d(WeightFormat::Int4Packed, {{2}, 8, 64}, 3);
  std::vector<float> C(d.C0);
  kernels::GroupedGemmWArgs g = d.args(C);
  g.W.mins = reinterpret_cast<const uint16_t*>(d.data.data());
  try {
    kernels::grouped_gemm_w(Backend::Cpu, g);
    ADD_FAILURE() << "no error for mins";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("int4-packed"), std::string::npos) << e.what();
  }
}

// The AVX-512 activation quantizer against the portable one: the same scale and bytes for ties at .5,
// codes clamped at +-127, tails shorter than a vector, zero, NaN and inf rows; and its group sums.
TEST(WeightGemm, Avx512ActivationQuantizerMatchesThePortableOne) {
  if (!kernels::cpu_isa_supported("avx512") || !__builtin_cpu_supports("avx512bw") ||
      !__builtin_cpu_supports("avx512vl"))
    GTEST_SKIP() << "no avx512 bw/vl";
  Lcg r(11);
  for (int64_t K : {1, 15, 16, 33, 64, 200}) {
    for (int kind = 0; kind < 5; ++kind) {
      std::vector<float> a(static_cast<size_t>(K));
      for (float& v : a) v = r.uniform();
      if (kind == 1) {  // ties: codes of k + 0.5 after scaling by 127 / 127.0 (amax = 127)
        for (int64_t k = 0; k < K; ++k) a[static_cast<size_t>(k)] = static_cast<float>(k % 40) - 19.5f;
        a[0] = 127.0f;
      }
      if (kind == 2) std::fill(a.begin(), a.end(), 0.0f);
      if (kind == 3) a[static_cast<size_t>(K / 2)] = std::numeric_limits<float>::quiet_NaN();
      if (kind == 4) a[static_cast<size_t>(K - 1)] = -std::numeric_limits<float>::infinity();
      std::vector<uint8_t> want(static_cast<size_t>(K)), got(static_cast<size_t>(K) + 1, 0xee);
      const float sw = kernels::quant::quantize_act_row(a.data(), K, want.data());
      const float sg = kernels::cpu::wgemm::quantize_row_avx512(a.data(), K, 128, got.data());
      SCOPED_TRACE("K " + std::to_string(K) + " kind " + std::to_string(kind));
      EXPECT_TRUE(sw == sg || (std::isnan(sw) && std::isnan(sg)));
      EXPECT_EQ(std::memcmp(want.data(), got.data(), static_cast<size_t>(K)), 0);
      EXPECT_EQ(got[static_cast<size_t>(K)], 0xee) << "wrote past the row";
      if (K % 32 != 0) continue;
      std::vector<uint8_t> s8(static_cast<size_t>(K));
      std::vector<float> gs(static_cast<size_t>(K / 32), -1.0f);
      kernels::cpu::wgemm::quantize_row_avx512(a.data(), K, 0, s8.data(), 32, gs.data());
      for (int64_t g = 0; g < K / 32; ++g) {
        int32_t sum = 0;
        for (int64_t k = g * 32; k < (g + 1) * 32; ++k) {
          EXPECT_EQ(static_cast<uint8_t>(s8[static_cast<size_t>(k)] ^ 0x80u), want[static_cast<size_t>(k)]);
          sum += static_cast<int8_t>(s8[static_cast<size_t>(k)]);
        }
        EXPECT_EQ(gs[static_cast<size_t>(g)], static_cast<float>(sum));
      }
    }
  }
}

TEST(WeightGemm, Int8PackingErrors) {
  std::vector<float> w(64 * 64, 0.5f);
  const kernels::QuantizedMatrix q = kernels::quantize_matrix(w.data(), 64, 64, 8, 64, "W");
  std::vector<uint8_t> dst(static_cast<size_t>(kernels::packed_int8_bytes(64, 64, 64)));
  auto msg = [&](kernels::WeightView src) {
    try {
      kernels::pack_int8_weights(src, 1, dst.data(), "experts");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(msg({.format = WeightFormat::Bf16, .N = 64, .K = 64, .data = w.data()}).find("expected int8"),
            std::string::npos);
  EXPECT_NE(msg({.format = WeightFormat::Int8, .N = 64, .K = 64, .data = q.q.raw(), .group = 64})
                .find("W.scales is null"),
            std::string::npos);
  const Data d(WeightFormat::Int8Packed, {{2}, 8, 64}, 3);
  std::vector<float> C(d.C0);
  kernels::GroupedGemmWArgs g = d.args(C);
  g.W.group = 2048;  // K is 64: not a multiple either, the first check names the group
  EXPECT_THROW(kernels::grouped_gemm_w(Backend::Cpu, g), Error);
  g = d.args(C), g.W.scales = reinterpret_cast<const uint16_t*>(d.data.data());
  EXPECT_THROW(kernels::grouped_gemm_w(Backend::Ref, g), Error);
}

}  // namespace
}  // namespace moe
