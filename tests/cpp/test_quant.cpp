// Group-wise quantized weights (moe/kernels/ops_quant.h): quantize/dequantize round trip, gemm_qw Cpu
// vs Ref on every instruction set of this machine, row and thread-count invariance, errors.
//
// Tolerances.
//  - Round trip: every weight is within half a step of its dequantised value (the parameters are
//    rounded outwards to f16, quant.cpp), plus one fp32 rounding of q · scale + min: |w - deq| <=
//    scale / 2 + 2^-24 · |deq|.
//  - gemm_qw: both backends multiply the same fp32 dequantised weights. The Cpu kernel sums each
//    output in L >= 8 lanes (K / L additions per lane), then a tree of log2 L <= 4 additions, then
//    beta · c; the portable path also rounds each product. Every rounding is within 2^-24 of a
//    partial sum bounded by S = Σ_k |a_k · w_k| + |beta · c|, and the Ref result is rounded to fp32
//    once: |cpu - ref| <= (K / 8 + 8) · 2^-24 · S.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "moe/core/dtype.h"
#include "moe/core/error.h"
#include "moe/core/parallel.h"
#include "moe/kernels/ops_quant.h"

namespace moe {
namespace {

using kernels::Backend;
using kernels::QuantizedMatrix;

const char* const kIsas[] = {"generic", "avx2", "avx512"};
const float kNaN = std::numeric_limits<float>::quiet_NaN();

struct ThreadsGuard {
  int saved = num_threads();
  ~ThreadsGuard() { set_num_threads(saved); }
};
struct IsaGuard {
  std::string saved = kernels::gemm_quant_isa();
  ~IsaGuard() { kernels::set_gemm_quant_isa(saved); }
};

// Uniform in [-1, 1), deterministic per seed.
struct Lcg {
  uint64_t s;
  explicit Lcg(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
  uint32_t next() {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<uint32_t>(s >> 33);
  }
  float uniform() { return static_cast<float>(next()) * (2.0f / 2147483648.0f) - 1.0f; }
};

// (N, K) weights: each row has its own magnitude (10^-4 .. 10^2) and offset, some groups are constant.
std::vector<float> random_weights(int64_t N, int64_t K, uint64_t seed) {
  Lcg r(seed);
  std::vector<float> w(static_cast<size_t>(N * K));
  for (int64_t n = 0; n < N; ++n) {
    const float mag = std::pow(10.0f, 3.0f * r.uniform() - 1.0f), off = mag * r.uniform() * 0.5f;
    for (int64_t k = 0; k < K; ++k) w[n * K + k] = off + mag * r.uniform();
    if (n % 7 == 3 && K >= 32) {
      for (int64_t k = 0; k < 32; ++k) w[n * K + k] = off;  // a constant group
    }
    if (n % 11 == 5 && K > 0) w[n * K + K / 2] = 20 * mag;  // an outlier
  }
  return w;
}

std::vector<float> random_vector(int64_t n, uint64_t seed) {
  Lcg r(seed);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = r.uniform();
  return v;
}

std::vector<float> dequant(const QuantizedMatrix& q) {
  std::vector<float> out(static_cast<size_t>(q.N * q.K), kNaN);
  kernels::dequantize_matrix(q.view(), out.data());
  return out;
}

// ---- quantization ----

TEST(Quant, RoundTripWithinHalfAStep) {
  for (int bits : {8, 4}) {
    for (int64_t group : {32, 64, 128}) {
      const int64_t N = 29, K = 256;
      const auto w = random_weights(N, K, static_cast<uint64_t>(bits * 1000 + group));
      const QuantizedMatrix q = kernels::quantize_matrix(w.data(), N, K, bits, group, "w");
      ASSERT_EQ(q.q.dtype(), bits == 8 ? DType::I8 : DType::U8);
      ASSERT_EQ(q.q.shape(), (Shape{N, bits == 8 ? K : K / 2}));
      ASSERT_EQ(q.scales.shape(), (Shape{N, K / group}));
      ASSERT_EQ(q.mins.defined(), bits == 4);
      EXPECT_EQ(q.bytes(), N * K * bits / 8 + N * (K / group) * (bits == 4 ? 4 : 2));
      const auto d = dequant(q);
      const uint16_t* sc = static_cast<const uint16_t*>(q.scales.raw());
      double worst = 0;
      for (int64_t n = 0; n < N; ++n) {
        for (int64_t k = 0; k < K; ++k) {
          const float s = f16_to_f32(sc[n * (K / group) + k / group]);
          const double err = std::fabs(static_cast<double>(w[n * K + k]) - d[n * K + k]);
          const double bound = 0.5 * s + std::ldexp(std::fabs(d[n * K + k]), -24);
          ASSERT_LE(err, bound) << "bits " << bits << " group " << group << " at (" << n << ", " << k << ")";
          if (s > 0) worst = std::max(worst, err / s);
        }
      }
      EXPECT_GT(worst, 0.3) << "rounding should use most of the half step";
      // int4: a constant group whose value is exact in f16 comes back exactly (scale 0, min = the value).
      if (bits == 4) {
        const std::vector<float> flat(static_cast<size_t>(2 * group), 0.375f);
        const auto dz = dequant(kernels::quantize_matrix(flat.data(), 2, group, bits, group, "flat"));
        for (float v : dz) EXPECT_EQ(v, 0.375f);
      }
    }
  }
}

TEST(Quant, ParametersAreRoundedOutwards) {
  // max|w| / 127 and (max - min) / 15 fall between f16 values here: the stored scale must cover the
  // range, so q stays within its format (no clamping error at the ends).
  std::vector<float> w(64);
  for (int k = 0; k < 64; ++k) w[k] = -0.7f + 1.4003f * static_cast<float>(k) / 63.0f;
  for (int bits : {8, 4}) {
    const QuantizedMatrix q = kernels::quantize_matrix(w.data(), 1, 64, bits, 32, "w");
    const auto d = dequant(q);
    for (int k = 0; k < 64; ++k) {
      const float s = f16_to_f32(static_cast<const uint16_t*>(q.scales.raw())[k / 32]);
      EXPECT_LE(std::fabs(w[k] - d[k]), 0.5f * s + std::ldexp(std::fabs(d[k]), -24)) << bits << " " << k;
    }
  }
}

TEST(Quant, FromTensorsRoundTrip) {
  const int64_t N = 5, K = 128;
  const auto w = random_weights(N, K, 3);
  for (int bits : {8, 4}) {
    const QuantizedMatrix q = kernels::quantize_matrix(w.data(), N, K, bits, 64, "w");
    const QuantizedMatrix r = kernels::quantized_from_tensors(bits, 64, q.q, q.scales, q.mins, "w");
    EXPECT_EQ(r.N, N);
    EXPECT_EQ(r.K, K);
    EXPECT_EQ(dequant(r), dequant(q));
  }
}

TEST(Quant, Errors) {
  const auto w = random_weights(2, 128, 1);
  auto expect = [](auto&& fn, const std::vector<std::string>& parts) {
    try {
      fn();
      ADD_FAILURE() << "no moe::Error (expected '" << parts[0] << "')";
    } catch (const Error& e) {
      for (const auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
    }
  };
  expect([&] { kernels::quantize_matrix(w.data(), 2, 128, 3, 64, "layer.w1"); },
         {"layer.w1", "bits must be 4 or 8", "3"});
  expect([&] { kernels::quantize_matrix(w.data(), 2, 128, 4, 48, "layer.w1"); },
         {"layer.w1", "multiple of 32", "48"});
  expect([&] { kernels::quantize_matrix(w.data(), 2, 96, 4, 64, "layer.w1"); }, {"K = 96", "group size 64"});
  auto bad = w;
  bad[130] = kNaN;
  expect([&] { kernels::quantize_matrix(bad.data(), 2, 128, 8, 64, "layer.w2"); },
         {"layer.w2", "non-finite", "(1, 2)"});
  bad[130] = std::numeric_limits<float>::infinity();
  expect([&] { kernels::quantize_matrix(bad.data(), 2, 128, 4, 64, "layer.w2"); },
         {"layer.w2", "non-finite"});
  auto huge = w;
  huge[0] = 3e7f;
  expect([&] { kernels::quantize_matrix(huge.data(), 2, 128, 8, 64, "big"); }, {"big", "f16 range"});
  huge[0] = -1e5f;
  expect([&] { kernels::quantize_matrix(huge.data(), 2, 128, 4, 64, "big"); },
         {"big", "below the f16 range"});

  const QuantizedMatrix q4 = kernels::quantize_matrix(w.data(), 2, 128, 4, 64, "w");
  const QuantizedMatrix q8 = kernels::quantize_matrix(w.data(), 2, 128, 8, 64, "w");
  expect([&] { kernels::quantized_from_tensors(8, 64, q4.q, q4.scales, Tensor(), "x.w1"); },
         {"x.w1.qweight", "i8"});
  expect([&] { kernels::quantized_from_tensors(4, 64, q8.q, q8.scales, q4.mins, "x.w1"); },
         {"x.w1.qweight", "u8"});
  expect([&] { kernels::quantized_from_tensors(4, 64, q4.q.to(DType::F32), q4.scales, q4.mins, "x"); },
         {"x.qweight"});
  expect([&] { kernels::quantized_from_tensors(4, 32, q4.q, q4.scales, q4.mins, "x.w3"); },
         {"x.w3.scales", "(2, 4)"});
  expect([&] { kernels::quantized_from_tensors(4, 64, q4.q, q4.scales.to(DType::F32), q4.mins, "x"); },
         {"x.scales", "f16"});
  expect([&] { kernels::quantized_from_tensors(4, 64, q4.q, q4.scales, Tensor(), "x.w2"); }, {"x.w2.mins"});
  expect([&] { kernels::quantized_from_tensors(8, 64, q8.q, q8.scales, q4.mins, "x.w2"); },
         {"x.w2", "no mins"});
  expect([&] { kernels::quantized_from_tensors(6, 64, q8.q, q8.scales, Tensor(), "x"); },
         {"bits must be 4 or 8"});
  expect([&] { kernels::quantized_from_tensors(8, 64, q8.q.reshape({256}), q8.scales, Tensor(), "x"); },
         {"2-D"});
  Tensor inf_scales = q8.scales.clone();
  static_cast<uint16_t*>(inf_scales.raw())[3] = 0x7c00;
  expect([&] { kernels::quantized_from_tensors(8, 64, q8.q, inf_scales, Tensor(), "x.w1"); },
         {"x.w1", "non-finite", "3"});
}

// ---- gemm_qw ----

struct GemmCase {
  int bits = 4;
  int64_t group = 64, M = 1, N = 37, K = 256;
  bool gather = false;
  float beta = 0;
  std::string name() const {
    return "bits=" + std::to_string(bits) + " group=" + std::to_string(group) + " M=" + std::to_string(M) +
           " N=" + std::to_string(N) + " K=" + std::to_string(K) + " gather=" + std::to_string(gather) +
           " beta=" + std::to_string(beta);
  }
};

struct GemmData {
  QuantizedMatrix W;
  std::vector<float> A, C0, Wd;  // A (rows, lda), C0 (M, ldc), Wd dequantised (N, K)
  std::vector<int32_t> gather;
  int64_t lda = 0, ldc = 0;

  GemmData(const GemmCase& c, uint64_t seed) {
    const auto w = random_weights(c.N, c.K, seed);
    W = kernels::quantize_matrix(w.data(), c.N, c.K, c.bits, c.group, "w");
    Wd = dequant(W);
    lda = c.K + 3;
    ldc = c.N + 2;
    const int64_t rows = c.gather ? c.M + 5 : c.M;
    A = random_vector(rows * lda, seed + 1);
    C0 = random_vector(c.M * ldc, seed + 2);
    if (c.gather) {
      Lcg r(seed + 3);
      for (int64_t m = 0; m < c.M; ++m) gather.push_back(static_cast<int32_t>(r.next() % rows));
    }
  }
  kernels::GemmQuantArgs args(const GemmCase& c, std::vector<float>& C) const {
    kernels::GemmQuantArgs g;
    g.M = c.M, g.A = A.data(), g.lda = lda, g.gather = c.gather ? gather.data() : nullptr, g.W = W.view();
    g.C = C.data(), g.ldc = ldc, g.beta = c.beta;
    return g;
  }
  std::vector<float> run(Backend b, const GemmCase& c) const {
    std::vector<float> C = C0;
    if (c.beta == 0.0f) {
      for (int64_t m = 0; m < c.M; ++m)
        for (int64_t n = 0; n < c.N; ++n) C[m * ldc + n] = kNaN;  // must be overwritten, not read
    }
    kernels::gemm_qw(b, args(c, C));
    return C;
  }
  // The bound of the file comment for element (m, n).
  double bound(const GemmCase& c, int64_t m, int64_t n) const {
    const float* a = A.data() + (c.gather ? gather[m] : m) * lda;
    double S = std::fabs(static_cast<double>(c.beta) * C0[m * ldc + n]);
    for (int64_t k = 0; k < c.K; ++k) S += std::fabs(static_cast<double>(a[k]) * Wd[n * c.K + k]);
    return (static_cast<double>(c.K) / 8 + 8) * std::ldexp(S, -24);
  }
};

void expect_close(const GemmCase& c, const GemmData& d, const std::vector<float>& ref,
                  const std::vector<float>& got, const std::string& what) {
  for (int64_t m = 0; m < c.M; ++m) {
    for (int64_t n = 0; n < c.N; ++n) {
      const float r = ref[m * d.ldc + n], g = got[m * d.ldc + n];
      ASSERT_TRUE(std::isfinite(g)) << what << " " << c.name() << " at (" << m << ", " << n << ")";
      ASSERT_LE(std::fabs(static_cast<double>(g) - r), d.bound(c, m, n))
          << what << " " << c.name() << " at (" << m << ", " << n << "): " << g << " vs " << r;
    }
    // Padding columns of C are untouched.
    for (int64_t n = c.N; n < d.ldc; ++n) ASSERT_EQ(got[m * d.ldc + n], d.C0[m * d.ldc + n]);
  }
}

TEST(QuantGemm, RefMatchesDequantisedDot) {
  // The reference against a direct double dot product over dequantize_matrix's weights.
  for (int bits : {8, 4}) {
    GemmCase c;
    c.bits = bits, c.M = 3, c.N = 9, c.K = 128, c.gather = true, c.beta = 0.5f;
    GemmData d(c, 11);
    const auto got = d.run(Backend::Ref, c);
    for (int64_t m = 0; m < c.M; ++m) {
      for (int64_t n = 0; n < c.N; ++n) {
        const float* a = d.A.data() + d.gather[m] * d.lda;
        double acc = 0;
        for (int64_t k = 0; k < c.K; ++k) acc += static_cast<double>(a[k]) * d.Wd[n * c.K + k];
        acc += 0.5 * d.C0[m * d.ldc + n];
        EXPECT_EQ(got[m * d.ldc + n], static_cast<float>(acc));
      }
    }
  }
}

TEST(QuantGemm, EveryInstructionSetMatchesRef) {
  IsaGuard isa_guard;
  ThreadsGuard threads_guard;
  set_num_threads(2);
  int ran = 0;
  uint64_t seed = 100;
  for (int bits : {8, 4}) {
    for (int64_t group : {32, 64, 128}) {
      for (int64_t M : {1, 3, 17, 300}) {
        for (bool gather : {false, true}) {
          for (float beta : {0.0f, 1.0f, -0.75f}) {
            if (beta == -0.75f && M != 3) continue;
            GemmCase c;
            c.bits = bits, c.group = group, c.M = M, c.N = M == 300 ? 21 : 37, c.K = 384, c.gather = gather;
            c.beta = beta;
            const GemmData d(c, ++seed);
            const auto ref = d.run(Backend::Ref, c);
            for (const char* isa : kIsas) {
              if (!kernels::gemm_quant_isa_supported(isa)) continue;
              kernels::set_gemm_quant_isa(isa);
              expect_close(c, d, ref, d.run(Backend::Cpu, c), isa);
              if (HasFatalFailure()) return;
              ++ran;
            }
          }
        }
      }
    }
  }
  EXPECT_GT(ran, 0);
}

TEST(QuantGemm, EdgeShapes) {
  IsaGuard isa_guard;
  for (const char* isa : kIsas) {
    if (!kernels::gemm_quant_isa_supported(isa)) continue;
    kernels::set_gemm_quant_isa(isa);
    for (int bits : {8, 4}) {
      // N = 1, N below and above a column block, K = one group; M around the register and buffer paths.
      for (int64_t N : {1, 15, 16, 17, 33}) {
        for (int64_t M : {1, 2, 4, 5, 8, 9, 64, 65}) {
          GemmCase c;
          c.bits = bits, c.group = 32, c.M = M, c.N = N, c.K = 32;
          const GemmData d(c, static_cast<uint64_t>(N * 100 + M));
          expect_close(c, d, d.run(Backend::Ref, c), d.run(Backend::Cpu, c), isa);
          if (HasFatalFailure()) return;
        }
      }
      // K = 0: C = beta · C (zero when beta == 0, even over NaN).
      GemmCase c;
      c.bits = bits, c.M = 3, c.N = 5, c.K = 0;
      const GemmData d(c, 5);
      for (float v : d.run(Backend::Cpu, c)) EXPECT_FALSE(std::isnan(v));
    }
  }
}

// A row's result is the same alone (M = 1) and inside any batch, bit for bit.
TEST(QuantGemm, RowInvariance) {
  IsaGuard isa_guard;
  for (const char* isa : kIsas) {
    if (!kernels::gemm_quant_isa_supported(isa)) continue;
    kernels::set_gemm_quant_isa(isa);
    for (int bits : {8, 4}) {
      GemmCase big;
      big.bits = bits, big.M = 37, big.N = 45, big.K = 256, big.gather = true;
      const GemmData d(big, static_cast<uint64_t>(bits) + 7);
      const auto all = d.run(Backend::Cpu, big);
      for (int64_t M : {1, 3, 4, 5, 8, 9, 16}) {
        for (int64_t m0 = 0; m0 + M <= big.M; m0 += 9) {
          std::vector<float> C(static_cast<size_t>(M * d.ldc), kNaN);
          kernels::GemmQuantArgs g = d.args(big, C);
          g.M = M, g.gather = d.gather.data() + m0, g.C = C.data(), g.beta = 0;
          kernels::gemm_qw(Backend::Cpu, g);
          for (int64_t m = 0; m < M; ++m)
            ASSERT_EQ(std::memcmp(&C[m * d.ldc], &all[(m0 + m) * d.ldc], sizeof(float) * big.N), 0)
                << isa << " bits " << bits << ": row " << m0 + m << " alone in a call of M = " << M
                << " differs from the M = 37 call";
        }
      }
    }
  }
}

TEST(QuantGemm, ThreadCountInvariance) {
  ThreadsGuard guard;
  IsaGuard isa_guard;
  for (const char* isa : kIsas) {
    if (!kernels::gemm_quant_isa_supported(isa)) continue;
    kernels::set_gemm_quant_isa(isa);
    for (int bits : {8, 4}) {
      for (int64_t M : {1, 6, 70}) {
        GemmCase c;
        // Large enough that every thread gets column blocks (the kernel runs small calls on one thread).
        c.bits = bits, c.M = M, c.N = 1000, c.K = 1024, c.group = 128, c.beta = 1;
        const GemmData d(c, static_cast<uint64_t>(M * 3 + bits));
        set_num_threads(1);
        const auto one = d.run(Backend::Cpu, c);
        for (int t : {2, 3, 5}) {
          set_num_threads(t);
          EXPECT_EQ(std::memcmp(one.data(), d.run(Backend::Cpu, c).data(), one.size() * sizeof(float)), 0)
              << isa << " bits " << bits << " M " << M << " threads " << t;
        }
      }
    }
  }
}

TEST(QuantGemm, Errors) {
  const auto w = random_weights(4, 64, 2);
  const QuantizedMatrix q = kernels::quantize_matrix(w.data(), 4, 64, 4, 32, "w");
  std::vector<float> A(2 * 64, 1.0f), C(2 * 4, 0.0f);
  auto base = [&] {
    kernels::GemmQuantArgs g;
    g.M = 2, g.A = A.data(), g.lda = 64, g.W = q.view(), g.C = C.data(), g.ldc = 4;
    return g;
  };
  auto expect = [&](kernels::GemmQuantArgs g, const std::vector<std::string>& parts) {
    for (Backend b : {Backend::Ref, Backend::Cpu, Backend::Cuda}) {
      try {
        kernels::gemm_qw(b, g);
        ADD_FAILURE() << "no moe::Error on " << kernels::backend_name(b) << " (expected '" << parts[0]
                      << "')";
      } catch (const Error& e) {
        if (b == Backend::Cuda) continue;
        for (const auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
      }
    }
  };
  auto g = base();
  g.W.bits = 5;
  expect(g, {"gemm_qw", "bits", "5"});
  g = base();
  g.W.group = 40;
  expect(g, {"gemm_qw", "group", "40"});
  g = base();
  g.W.K = 80;
  g.lda = 80;
  expect(g, {"gemm_qw", "K = 80"});
  g = base();
  g.W.mins = nullptr;
  expect(g, {"gemm_qw", "W.mins is null"});
  g = base();
  g.lda = 10;
  expect(g, {"gemm_qw", "lda = 10"});
  g = base();
  g.ldc = 3;
  expect(g, {"gemm_qw", "ldc = 3"});
  g = base();
  g.A = nullptr;
  expect(g, {"gemm_qw", "A is null"});
  const int32_t bad_rows[2] = {0, -4};
  g = base();
  g.gather = bad_rows;
  expect(g, {"gemm_qw", "gather[1] = -4"});
  g = base();
  g.M = -1;
  expect(g, {"gemm_qw", "M must be >= 0"});
  try {
    kernels::gemm_qw(Backend::Cuda, base());
    ADD_FAILURE() << "cuda should throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not implemented on cuda"), std::string::npos) << e.what();
  }
  EXPECT_THROW(kernels::set_gemm_quant_isa("sse9"), Error);
  for (const char* isa : kIsas) {
    if (!kernels::gemm_quant_isa_supported(isa)) {
      EXPECT_THROW(kernels::set_gemm_quant_isa(isa), Error) << isa;
    }
  }
  EXPECT_TRUE(kernels::gemm_quant_isa_supported("generic"));
}

}  // namespace
}  // namespace moe
