// The bf16-weight GEMMs (moe/kernels/ops_bf16.h): Cpu vs Ref on MoE edge cases for every CPU
// instruction set, thread-count bit-identity, argument errors, and (MOE_OPS_PERF=1) rates next to
// the fp32 grouped_gemm on the same shapes.
//
// Tolerance, from the exact-product argument: a bf16 x bf16 product is exact in fp32, so the only
// roundings are the K additions (and beta * c), each within 2^-24 of the running sum, whose size is
// at most S = Σ_k |a_k·w_k| + |beta·c|: |cpu - ref| <= (K + 4) · 2^-24 · S, with a and w the
// bf16-rounded values (what the Ref backend multiplies, in double).
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "moe/core/dtype.h"
#include "moe/core/error.h"
#include "moe/core/parallel.h"
#include "moe/kernels/isa.h"
#include "moe/kernels/ops.h"
#include "moe/kernels/ops_bf16.h"

namespace moe {
namespace {

using kernels::Backend;

const char* const kIsas[] = {"generic", "avx2", "avx512", "avx512bf16"};

struct ThreadsGuard {
  int saved = num_threads();
  ~ThreadsGuard() { set_num_threads(saved); }
};
struct IsaGuard {
  std::string saved = kernels::gemm_bf16_isa();
  ~IsaGuard() { kernels::set_gemm_bf16_isa(saved); }
};

// A small deterministic generator for the test data (uniform in [-1, 1)).
struct Lcg {
  uint64_t s;
  explicit Lcg(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
  uint32_t next() {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<uint32_t>(s >> 33);
  }
  float uniform() { return static_cast<float>(next()) * (2.0f / 2147483648.0f) - 1.0f; }
};

// One grouped call with its buffers.
struct Case {
  std::vector<int32_t> counts;  // rows per expert
  int64_t N = 0, K = 0;
  bool gather = false, trans_w = false;
  float beta = 0;
  int64_t lda_pad = 0, ldc_pad = 0;

  std::string name() const {
    std::string s = "E=" + std::to_string(counts.size()) + " rows={";
    for (size_t e = 0; e < counts.size(); ++e) s += (e ? "," : "") + std::to_string(counts[e]);
    return s + "} N=" + std::to_string(N) + " K=" + std::to_string(K) + " gather=" + std::to_string(gather) +
           " trans_w=" + std::to_string(trans_w) + " beta=" + std::to_string(beta);
  }
};

struct Data {
  std::vector<int32_t> offsets, gather;
  std::vector<float> A, C0;
  std::vector<uint16_t> W;
  int64_t rows = 0, lda = 0, ldc = 0;
  kernels::GroupedGemmBf16Args args(const Case& c, std::vector<float>& C) const {
    kernels::GroupedGemmBf16Args g;
    g.E = static_cast<int64_t>(c.counts.size()), g.N = c.N, g.K = c.K, g.offsets = offsets.data();
    g.A = A.empty() ? nullptr : A.data(), g.lda = lda, g.gather = c.gather ? gather.data() : nullptr;
    g.W = W.empty() ? nullptr : W.data(), g.trans_w = c.trans_w, g.C = C.data(), g.ldc = ldc, g.beta = c.beta;
    return g;
  }
};

Data make_data(const Case& c, uint64_t seed) {
  Lcg rng(seed);
  Data d;
  const int64_t E = static_cast<int64_t>(c.counts.size());
  d.offsets.assign(static_cast<size_t>(E + 1), 0);
  for (int64_t e = 0; e < E; ++e)
    d.offsets[static_cast<size_t>(e + 1)] =
        d.offsets[static_cast<size_t>(e)] + c.counts[static_cast<size_t>(e)];
  d.rows = d.offsets.back();
  d.lda = c.K + c.lda_pad;
  d.ldc = c.N + c.ldc_pad;
  // With a gather, A has its own rows (tokens), read in a random order, some twice, some never.
  const int64_t src_rows = c.gather ? d.rows / 2 + 3 : d.rows;
  if (c.gather) {
    d.gather.resize(static_cast<size_t>(d.rows));
    for (auto& r : d.gather) r = static_cast<int32_t>(rng.next() % static_cast<uint32_t>(src_rows));
  }
  d.A.resize(static_cast<size_t>(src_rows * d.lda));
  for (auto& v : d.A) v = rng.uniform();  // not bf16-exact: the packing must round
  d.W.resize(static_cast<size_t>(E * c.N * c.K));
  for (auto& v : d.W) v = f32_to_bf16(rng.uniform());
  d.C0.resize(static_cast<size_t>(d.rows * d.ldc));
  for (auto& v : d.C0) v = c.beta == 0.0f ? std::numeric_limits<float>::quiet_NaN() : rng.uniform();
  return d;
}

std::vector<float> run(Backend b, const Case& c, const Data& d) {
  std::vector<float> C = d.C0;
  kernels::grouped_gemm_bf16w(b, d.args(c, C));
  return C;
}

// |got - ref| <= (K + 4) · 2^-24 · (Σ|a·w| + |beta·c|) per element; NaN never passes; the row padding
// of C (columns N .. ldc - 1) is left alone.
testing::AssertionResult within_bound(const Case& c, const Data& d, const std::vector<float>& ref,
                                      const std::vector<float>& got) {
  const int64_t E = static_cast<int64_t>(c.counts.size());
  int bad = 0;
  std::string msg;
  for (int64_t e = 0; e < E; ++e) {
    const uint16_t* w = d.W.data() + e * c.N * c.K;
    for (int64_t p = d.offsets[static_cast<size_t>(e)]; p < d.offsets[static_cast<size_t>(e + 1)]; ++p) {
      const int64_t row = c.gather ? d.gather[static_cast<size_t>(p)] : p;
      const float* a = d.A.data() + row * d.lda;
      for (int64_t n = 0; n < d.ldc; ++n) {
        const size_t at = static_cast<size_t>(p * d.ldc + n);
        if (n >= c.N) {  // padding: untouched
          if (std::memcmp(&got[at], &d.C0[at], 4) != 0 && bad++ < 5)
            msg += " padding changed at p=" + std::to_string(p);
          continue;
        }
        double s = c.beta == 0.0f ? 0.0 : std::fabs(static_cast<double>(c.beta) * d.C0[at]);
        for (int64_t k = 0; k < c.K; ++k) {
          const uint16_t wv = c.trans_w ? w[k * c.N + n] : w[n * c.K + k];
          s += std::fabs(static_cast<double>(bf16_to_f32(f32_to_bf16(a[k]))) * bf16_to_f32(wv));
        }
        const double tol = static_cast<double>(c.K + 4) * std::ldexp(1.0, -24) * s;
        const double err = std::fabs(static_cast<double>(got[at]) - static_cast<double>(ref[at]));
        if (!(err <= tol) && bad++ < 5) {
          msg += " [p=" + std::to_string(p) + " n=" + std::to_string(n) + " got " + std::to_string(got[at]) +
                 " ref " + std::to_string(ref[at]) + " tol " + std::to_string(tol) + "]";
        }
      }
    }
  }
  if (bad == 0) return testing::AssertionSuccess();
  return testing::AssertionFailure() << c.name() << ": " << bad << " bad elements:" << msg;
}

std::vector<Case> edge_cases() {
  std::vector<Case> base = {
      {{0, 5, 0, 13}, 37, 29},   // experts with no rows, odd everything
      {{0, 50, 0}, 70, 301},     // one expert with all rows, K spans two blocks, odd K
      {{7, 9}, 65, 513},         // odd M, N, K; three K blocks
      {{300, 1, 293}, 70, 520},  // several row tiles and K blocks
      {{5, 0, 3}, 1100, 40},     // several column tiles
      {{1}, 1, 1},               // the smallest problem
      {{3, 0, 4}, 17, 2},        // K = one pair
      {{6, 6}, 64, 64},          // whole register tiles only
      {{2, 3}, 9, 0},            // K = 0: C = beta * C
  };
  std::vector<Case> out;
  for (const Case& b : base) {
    for (int variant = 0; variant < 4; ++variant) {
      Case c = b;
      c.gather = variant & 1;
      c.trans_w = (variant >> 1) & 1;
      out.push_back(c);
    }
  }
  Case padded = {{4, 11}, 33, 45};  // row strides larger than the rows
  padded.lda_pad = 3, padded.ldc_pad = 5, padded.gather = true;
  out.push_back(padded);
  for (float beta : {1.0f, 0.5f}) {  // accumulate into C
    for (Case c : {Case{{0, 5, 0, 13}, 37, 29}, Case{{9, 200}, 70, 301}, Case{{2, 3}, 9, 0}}) {
      c.beta = beta;
      c.trans_w = beta == 1.0f;
      c.gather = true;
      c.ldc_pad = 2;
      out.push_back(c);
    }
  }
  return out;
}

TEST(OpsBf16, EveryInstructionSetMatchesRef) {
  IsaGuard guard;
  const std::vector<Case> cases = edge_cases();
  for (const char* isa : kIsas) {
    if (!kernels::gemm_bf16_isa_supported(isa)) {
      std::printf("[ bf16 ] instruction set %s: not supported by this CPU, skipped\n", isa);
      continue;
    }
    kernels::set_gemm_bf16_isa(isa);
    for (const Case& c : cases) {
      for (uint64_t seed : {1u, 2u}) {
        const Data d = make_data(c, seed);
        const std::vector<float> ref = run(Backend::Ref, c, d);
        const std::vector<float> got = run(Backend::Cpu, c, d);
        EXPECT_TRUE(within_bound(c, d, ref, got)) << "instruction set " << isa << ", seed " << seed;
      }
    }
    std::printf("[ bf16 ] instruction set %s: %zu cases\n", isa, cases.size());
  }
}

TEST(OpsBf16, BestInstructionSetIsPickedAndUnknownNamesThrow) {
  const std::string best = kernels::gemm_bf16_isa();
  EXPECT_TRUE(kernels::gemm_bf16_isa_supported(best));
  EXPECT_TRUE(kernels::gemm_bf16_isa_supported("generic"));
  // Tiles where they run; else vdpbf16ps where it is at least as fast as FMA (AMD), else widening on FMA.
  __builtin_cpu_init();
  if (kernels::gemm_bf16_isa_supported("amx")) {
    EXPECT_EQ(best, "amx");
  } else if (kernels::gemm_bf16_isa_supported("avx512bf16")) {
    EXPECT_EQ(best, __builtin_cpu_is("amd") ? "avx512bf16" : "avx512");
  }
  kernels::set_amx_emulation(true);  // the emulation is a test tool, never the default
  // It runs where AVX-512 does (the tile paths' edges use it).
  EXPECT_EQ(kernels::gemm_bf16_isa_supported("amx"), kernels::gemm_bf16_isa_supported("avx512"));
  EXPECT_EQ(kernels::gemm_bf16_isa(), best);
  kernels::set_amx_emulation(false);
  EXPECT_FALSE(kernels::gemm_bf16_isa_supported("sse9"));
  EXPECT_THROW(kernels::set_gemm_bf16_isa("sse9"), Error);
  std::printf("[ bf16 ] instruction set picked: %s\n", best.c_str());
}

// Integer-valued inputs: every partial sum is exact, so every instruction set must agree exactly,
// and the bf16 reference must equal the fp32 grouped_gemm reference on the same values.
TEST(OpsBf16, IntegerInputsAreExact) {
  IsaGuard guard;
  Case c{{5, 0, 20}, 40, 67};
  c.gather = true;
  Data d = make_data(c, 3);
  Lcg rng(11);
  for (auto& v : d.A) v = static_cast<float>(static_cast<int>(rng.next() % 17) - 8);
  for (auto& v : d.W) v = f32_to_bf16(static_cast<float>(static_cast<int>(rng.next() % 9) - 4));
  const std::vector<float> ref = run(Backend::Ref, c, d);
  std::vector<float> w32(d.W.size());
  for (size_t i = 0; i < w32.size(); ++i) w32[i] = bf16_to_f32(d.W[i]);
  std::vector<float> ref32 = d.C0;
  kernels::GroupedGemmArgs<float> g;
  g.E = 3, g.N = c.N, g.K = c.K, g.offsets = d.offsets.data(), g.A = d.A.data(), g.lda = d.lda;
  g.gather = d.gather.data(), g.W = w32.data(), g.C = ref32.data(), g.ldc = d.ldc;
  kernels::grouped_gemm(Backend::Ref, g);
  EXPECT_EQ(ref, ref32);
  for (const char* isa : kIsas) {
    if (!kernels::gemm_bf16_isa_supported(isa)) continue;
    kernels::set_gemm_bf16_isa(isa);
    EXPECT_EQ(run(Backend::Cpu, c, d), ref) << "instruction set " << isa;
  }
}

// A is rounded to nearest even: K = 1 and W = 1 give C = bf16(A).
TEST(OpsBf16, ActivationsAreRoundedToNearestEven) {
  IsaGuard guard;
  const std::vector<float> a = {
      1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f, -(1.0f + 0x1p-8f), 1.0f + 0x1p-8f + 0x1p-20f, 3.0e38f,
      -2.5f,          65504.0f,           1.0f - 0x1p-9f};
  const int64_t M = static_cast<int64_t>(a.size());
  const std::vector<uint16_t> w = {f32_to_bf16(1.0f)};
  for (const char* isa : kIsas) {
    if (!kernels::gemm_bf16_isa_supported(isa)) continue;
    kernels::set_gemm_bf16_isa(isa);
    std::vector<float> C(a.size(), std::numeric_limits<float>::quiet_NaN());
    kernels::GemmBf16Args g;
    g.M = M, g.N = 1, g.K = 1, g.A = a.data(), g.lda = 1, g.W = w.data(), g.C = C.data(), g.ldc = 1;
    kernels::gemm_bf16w(Backend::Cpu, g);
    for (size_t i = 0; i < a.size(); ++i) {
      EXPECT_EQ(C[i], bf16_to_f32(f32_to_bf16(a[i]))) << "instruction set " << isa << ", a = " << a[i];
    }
  }
}

TEST(OpsBf16, DenseGemmMatchesRef) {
  for (bool trans_w : {false, true}) {
    Case c{{45}, 77, 130};
    c.trans_w = trans_w;
    c.ldc_pad = 3;
    const Data d = make_data(c, 4);
    std::vector<float> ref = d.C0, got = d.C0;
    kernels::GemmBf16Args g;
    g.M = 45, g.N = c.N, g.K = c.K, g.A = d.A.data(), g.lda = d.lda, g.W = d.W.data(), g.trans_w = trans_w;
    g.ldc = d.ldc;
    g.C = ref.data();
    kernels::gemm_bf16w(Backend::Ref, g);
    g.C = got.data();
    kernels::gemm_bf16w(Backend::Cpu, g);
    EXPECT_TRUE(within_bound(c, d, ref, got));
  }
}

TEST(OpsBf16, CpuBitIdenticalFor1To4Threads) {
  ThreadsGuard tguard;
  IsaGuard iguard;
  std::vector<Case> cases = {Case{{200, 0, 393, 5}, 1100, 520}, Case{{31, 64}, 513, 129}};
  cases[0].gather = true;
  cases[1].trans_w = true, cases[1].beta = 0.5f;
  for (const char* isa : kIsas) {
    if (!kernels::gemm_bf16_isa_supported(isa)) continue;
    kernels::set_gemm_bf16_isa(isa);
    for (const Case& c : cases) {
      const Data d = make_data(c, 6);
      set_num_threads(1);
      const std::vector<float> one = run(Backend::Cpu, c, d);
      for (int threads : {2, 4}) {
        set_num_threads(threads);
        const std::vector<float> many = run(Backend::Cpu, c, d);
        EXPECT_EQ(std::memcmp(one.data(), many.data(), one.size() * sizeof(float)), 0)
            << c.name() << ", instruction set " << isa << ": 1 and " << threads << " threads differ";
      }
    }
  }
}

// ---- errors ----

template <typename F>
void expect_error(F&& fn, const std::vector<std::string>& parts) {
  for (Backend b : {Backend::Ref, Backend::Cpu}) {
    try {
      fn(b);
      ADD_FAILURE() << "no moe::Error on backend " << kernels::backend_name(b) << " (expected '" << parts[0]
                    << "')";
    } catch (const Error& e) {
      for (const auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
    }
  }
}

// scale / out_row (the down projection's epilogue): row p lands at out_row[p] scaled by scale[p],
// bit-identical to the plain call followed by that scatter, on every instruction set and backend;
// rows not named by out_row are untouched; K = 0 writes zeros there; beta != 0 is refused.
TEST(OpsBf16, ScaleAndOutRowStoreRowsLikeTheScatter) {
  IsaGuard guard;
  for (const Case& c :
       {Case{{5, 0, 17, 3}, 37, 41, true}, Case{{300, 2}, 70, 520, true, true}, Case{{4, 4}, 9, 0}}) {
    const Data d = make_data(c, 11);
    Lcg rng(5);
    std::vector<float> scale(static_cast<size_t>(d.rows));
    for (auto& v : scale) v = rng.uniform();
    // out_row: a permutation of the rows into a C with two spare rows (left untouched).
    std::vector<int32_t> out_row(static_cast<size_t>(d.rows));
    for (int64_t p = 0; p < d.rows; ++p) out_row[static_cast<size_t>(p)] = static_cast<int32_t>(p);
    for (int64_t p = d.rows - 1; p > 0; --p)
      std::swap(out_row[static_cast<size_t>(p)], out_row[rng.next() % static_cast<uint32_t>(p + 1)]);
    for (auto& r : out_row) r += 1;
    for (Backend be : {Backend::Ref, Backend::Cpu}) {
      for (const char* isa : kIsas) {
        if (be == Backend::Cpu && !kernels::gemm_bf16_isa_supported(isa)) continue;
        if (be == Backend::Cpu) kernels::set_gemm_bf16_isa(isa);
        SCOPED_TRACE(c.name() + " " + kernels::backend_name(be) + " " + isa);
        std::vector<float> plain = run(be, c, d);
        std::vector<float> C(static_cast<size_t>((d.rows + 2) * d.ldc), 7.0f);
        kernels::GroupedGemmBf16Args g = d.args(c, C);
        g.scale = scale.data();
        g.out_row = out_row.data();
        kernels::grouped_gemm_bf16w(be, g);
        for (int64_t p = 0; p < d.rows; ++p) {
          for (int64_t n = 0; n < c.N; ++n) {
            const float want = scale[static_cast<size_t>(p)] * plain[static_cast<size_t>(p * d.ldc + n)];
            ASSERT_EQ(C[static_cast<size_t>(out_row[static_cast<size_t>(p)] * d.ldc + n)], want)
                << p << "," << n;
          }
        }
        for (int64_t n = 0; n < c.N; ++n) {  // rows 0 and rows + 1 are no row's output
          ASSERT_EQ(C[static_cast<size_t>(n)], 7.0f);
          ASSERT_EQ(C[static_cast<size_t>((d.rows + 1) * d.ldc + n)], 7.0f);
        }
        if (be == Backend::Ref) break;  // one pass for the reference
      }
    }
    std::vector<float> C(static_cast<size_t>((d.rows + 2) * d.ldc), 7.0f);
    kernels::GroupedGemmBf16Args g = d.args(c, C);
    g.out_row = out_row.data();
    g.beta = 1.0f;
    if (d.rows > 0) {
      EXPECT_THROW(kernels::grouped_gemm_bf16w(Backend::Cpu, g), Error);
    }
  }
}

// a_preact: A given as pre-activations ([G | U] rows for SwiGLU), h made while packing. Every
// instruction set against the reference: the GEMM bound plus, per term, h's own error (a few ulp
// of exp) that may move its bf16 rounding by one bf16 ulp (2^-8 relative).
TEST(OpsBf16, PreActivationRowsMatchRef) {
  IsaGuard guard;
  using kernels::Activation;
  for (Activation act : {Activation::SwiGLU, Activation::Gelu, Activation::Relu, Activation::Silu}) {
    const int64_t K = 300, N = 37, width = act == Activation::SwiGLU ? 2 * K : K;
    const std::vector<int32_t> offsets = {0, 9, 9, 31};
    std::vector<int32_t> gather(31);
    Lcg rng(3);
    for (auto& r : gather) r = static_cast<int32_t>(rng.next() % 20u);
    std::vector<float> A(static_cast<size_t>(20 * width));
    for (auto& v : A) v = 3.0f * rng.uniform();
    std::vector<uint16_t> W(static_cast<size_t>(3 * N * K));
    for (auto& v : W) v = f32_to_bf16(rng.uniform());
    auto run_pre = [&](Backend be) {
      std::vector<float> C(static_cast<size_t>(31 * N), std::numeric_limits<float>::quiet_NaN());
      kernels::GroupedGemmBf16Args g;
      g.E = 3, g.N = N, g.K = K, g.offsets = offsets.data(), g.A = A.data(), g.lda = width;
      g.gather = gather.data(), g.W = W.data(), g.C = C.data(), g.ldc = N;
      g.a_preact = true, g.act = act;
      kernels::grouped_gemm_bf16w(be, g);
      return C;
    };
    const std::vector<float> ref = run_pre(Backend::Ref);
    for (const char* isa : kIsas) {
      if (!kernels::gemm_bf16_isa_supported(isa)) continue;
      kernels::set_gemm_bf16_isa(isa);
      const std::vector<float> got = run_pre(Backend::Cpu);
      for (int64_t p = 0; p < 31; ++p) {
        const int64_t e = p < 9 ? 0 : 2;
        const float* a = A.data() + gather[static_cast<size_t>(p)] * width;
        for (int64_t n = 0; n < N; ++n) {
          double s = 0;
          for (int64_t k = 0; k < K; ++k) {
            const double u = a[k], gv = act == Activation::SwiGLU ? a[k] : 0.0;
            const double h = act == Activation::SwiGLU ? gv / (1 + std::exp(-gv)) * a[K + k]
                             : act == Activation::Relu ? std::max(u, 0.0)
                             : act == Activation::Silu ? u / (1 + std::exp(-u))
                                                       : 0.5 * u * (1 + std::erf(u / std::sqrt(2.0)));
            s += std::fabs(h * bf16_to_f32(W[static_cast<size_t>((e * N + n) * K + k)]));
          }
          const double bound =
              (K + 4) * std::ldexp(1.0, -24) * s + std::ldexp(1.0, -7) * s / std::sqrt(double(K));
          const size_t at = static_cast<size_t>(p * N + n);
          ASSERT_LE(std::fabs(double(got[at]) - double(ref[at])), bound)
              << kernels::activation_name(act) << " " << isa << " row " << p << " col " << n;
        }
      }
    }
  }
}

TEST(OpsBf16, BadInputsThrow) {
  std::vector<float> buf(64, 1.0f);
  std::vector<uint16_t> w(64, f32_to_bf16(1.0f));
  std::vector<int32_t> offsets = {0, 2, 4}, gather = {0, 1, -1, 2};
  kernels::GroupedGemmBf16Args g;
  g.E = 2, g.N = 2, g.K = 3, g.offsets = offsets.data(), g.A = buf.data(), g.lda = 3, g.W = w.data();
  g.C = buf.data(), g.ldc = 2;
  auto call = [&](Backend b) { kernels::grouped_gemm_bf16w(b, g); };
  g.W = nullptr;
  expect_error(call, {"grouped_gemm_bf16w", "W is null"});
  g.W = w.data(), g.N = -1;
  expect_error(call, {"grouped_gemm_bf16w", "N must be >= 0", "-1"});
  g.N = 2, g.lda = 2;
  expect_error(call, {"grouped_gemm_bf16w", "lda = 2"});
  g.lda = 3, g.ldc = 1;
  expect_error(call, {"grouped_gemm_bf16w", "ldc = 1"});
  g.ldc = 2, g.gather = gather.data();
  expect_error(call, {"grouped_gemm_bf16w", "gather[2] = -1"});
  g.gather = nullptr, offsets = {0, 3, 1};
  expect_error(call, {"grouped_gemm_bf16w", "must not decrease"});
  offsets = {1, 2, 4};
  expect_error(call, {"grouped_gemm_bf16w", "offsets[0]"});
  offsets = {0, 2, 4}, g.offsets = nullptr;
  expect_error(call, {"grouped_gemm_bf16w", "offsets is null"});
  g.offsets = offsets.data(), g.A = nullptr;
  expect_error(call, {"grouped_gemm_bf16w", "A is null"});
  g.A = buf.data();
  try {
    kernels::grouped_gemm_bf16w(Backend::Cuda, g);
    ADD_FAILURE() << "no moe::Error on cuda";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not implemented on cuda"), std::string::npos) << e.what();
  }
  kernels::GemmBf16Args d;
  d.M = 2, d.N = 2, d.K = 3, d.A = buf.data(), d.lda = 3, d.W = w.data(), d.C = nullptr, d.ldc = 2;
  expect_error([&](Backend b) { kernels::gemm_bf16w(b, d); }, {"gemm_bf16w", "C is null"});
  EXPECT_THROW(kernels::gemm_bf16w(Backend::Cuda, d), Error);
  // Nothing to do is not an error: no experts, no columns, no rows.
  g.E = 0;
  EXPECT_NO_THROW(kernels::grouped_gemm_bf16w(Backend::Cpu, g));
  offsets = {0, 0, 0}, g.E = 2, g.C = nullptr, g.A = nullptr;
  EXPECT_NO_THROW(kernels::grouped_gemm_bf16w(Backend::Cpu, g));
}

// ---- perf ----

template <typename F>
double seconds_per_call(F&& fn) {
  fn();  // warm-up
  int reps = 1;
  for (;;) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int r = 0; r < reps; ++r) fn();
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (dt > 1.0 || reps >= 1 << 12) return dt / reps;
    reps *= 2;
  }
}

TEST(OpsBf16Perf, Rates) {
  const char* env = std::getenv("MOE_OPS_PERF");
  if (env == nullptr || std::string(env) != "1") GTEST_SKIP() << "set MOE_OPS_PERF=1 to run the perf mode";
  struct Shape {
    const char* name;
    int64_t E, rows, N, K;
  };
  const Shape shapes[] = {{"mixtral-small up", 8, 512, 3584, 1024},
                          {"mixtral-small down", 8, 512, 1024, 3584},
                          {"fine-grained", 64, 256, 512, 1024}};
  std::printf("bf16 instruction set %s, fp32 grouped_gemm on the same shapes, %d threads\n",
              kernels::gemm_bf16_isa(), num_threads());
  std::printf("%-20s %4s %5s %5s %5s %8s  %12s %12s %7s\n", "shape", "E", "rows", "N", "K", "trans_w",
              "fp32 GFLOP/s", "bf16 GFLOP/s", "ratio");
  for (const Shape& s : shapes) {
    for (bool trans_w : {false, true}) {
      const int64_t M = s.E * s.rows;
      Lcg rng(7);
      std::vector<float> A(static_cast<size_t>(M * s.K)), W32(static_cast<size_t>(s.E * s.N * s.K));
      std::vector<uint16_t> W16(W32.size());
      for (auto& v : A) v = rng.uniform();
      for (size_t i = 0; i < W32.size(); ++i) {
        W16[i] = f32_to_bf16(rng.uniform());
        W32[i] = bf16_to_f32(W16[i]);
      }
      std::vector<int32_t> offsets(static_cast<size_t>(s.E + 1)), gather(static_cast<size_t>(M));
      for (int64_t e = 0; e <= s.E; ++e) offsets[static_cast<size_t>(e)] = static_cast<int32_t>(e * s.rows);
      std::iota(gather.begin(), gather.end(), 0);  // a fixed shuffle of the token rows
      for (size_t i = gather.size() - 1; i > 0; --i) std::swap(gather[i], gather[rng.next() % (i + 1)]);
      std::vector<float> C(static_cast<size_t>(M * s.N));
      kernels::GroupedGemmArgs<float> g32;
      g32.E = s.E, g32.N = s.N, g32.K = s.K, g32.offsets = offsets.data(), g32.A = A.data(), g32.lda = s.K;
      g32.gather = gather.data(), g32.W = W32.data(), g32.trans_w = trans_w, g32.C = C.data(), g32.ldc = s.N;
      kernels::GroupedGemmBf16Args g16;
      g16.E = s.E, g16.N = s.N, g16.K = s.K, g16.offsets = offsets.data(), g16.A = A.data(), g16.lda = s.K;
      g16.gather = gather.data(), g16.W = W16.data(), g16.trans_w = trans_w, g16.C = C.data(), g16.ldc = s.N;
      const double flops = 2.0 * static_cast<double>(M) * static_cast<double>(s.N) * static_cast<double>(s.K);
      const double t32 = seconds_per_call([&] { kernels::grouped_gemm(Backend::Cpu, g32); });
      const double t16 = seconds_per_call([&] { kernels::grouped_gemm_bf16w(Backend::Cpu, g16); });
      std::printf("%-20s %4lld %5lld %5lld %5lld %8d  %12.1f %12.1f %6.2fx\n", s.name,
                  static_cast<long long>(s.E), static_cast<long long>(s.rows), static_cast<long long>(s.N),
                  static_cast<long long>(s.K), static_cast<int>(trans_w), flops / t32 * 1e-9,
                  flops / t16 * 1e-9, t32 / t16);
    }
  }
}

}  // namespace
}  // namespace moe
