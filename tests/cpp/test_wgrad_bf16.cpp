// grouped_gemm_wgrad with bf16 operands (GroupedWgradArgs::bf16) on the AMX tiles and on their
// emulation, against a double reference of the bf16-rounded operands: the only difference is the fp32
// summation order (rows · 2^-24 · sum |products|; the fp32 GEMM of the unrounded inputs is far
// outside it); with the SwiGLU pre-activation (made in fp32, then rounded) 2^-7 relative per product. Skips
// where neither the tiles nor the emulation (which needs AVX-512) run.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "moe/core/dtype.h"
#include "moe/core/rng.h"
#include "moe/kernels/isa.h"
#include "moe/kernels/ops.h"
#include "moe/kernels/ops_bf16.h"

namespace moe {
namespace {

struct IsaReset {
  ~IsaReset() {
    kernels::set_amx_emulation(false);
    kernels::reset_cpu_isa();
  }
};

float bf16_exact(float x) { return bf16_to_f32(f32_to_bf16(x)); }

struct Case {
  std::vector<int32_t> offsets;  // E + 1
  int64_t N, K;
  bool gather, dc_gather, preact;
  float beta;
};

// Runs the case on the current instruction sets with bf16 on, checks it against the double reference.
void check(const Case& c, uint64_t seed) {
  const int64_t E = static_cast<int64_t>(c.offsets.size()) - 1, M = c.offsets.back();
  const int64_t a_cols = c.preact ? 2 * c.K : c.K, src_rows = M + 5;
  Rng rng(seed);
  std::vector<float> dC(static_cast<size_t>(src_rows * c.N)), A(static_cast<size_t>(src_rows * a_cols));
  uint64_t draw = 0;
  for (float& x : dC) x = static_cast<float>(rng.normal(draw++));  // not bf16-exact: the kernel rounds
  for (float& x : A) x = static_cast<float>(rng.normal(draw++));
  std::vector<int32_t> gather(static_cast<size_t>(M)), dc_gather(static_cast<size_t>(M));
  std::vector<float> scale(static_cast<size_t>(M));
  for (int64_t p = 0; p < M; ++p) {
    gather[static_cast<size_t>(p)] = static_cast<int32_t>((p * 7 + 3) % src_rows);
    dc_gather[static_cast<size_t>(p)] = static_cast<int32_t>((p * 5 + 1) % src_rows);
    scale[static_cast<size_t>(p)] = 0.25f + 0.5f * static_cast<float>(p % 3);
  }
  std::vector<float> dW(static_cast<size_t>(E * c.N * c.K));
  for (float& x : dW) x = static_cast<float>(rng.normal(draw++));
  const std::vector<float> dW0 = dW;

  kernels::GroupedWgradArgs<float> g;
  g.E = E;
  g.N = c.N;
  g.K = c.K;
  g.offsets = c.offsets.data();
  g.dC = dC.data();
  g.ldc = c.N;
  g.dC_gather = c.dc_gather ? dc_gather.data() : nullptr;
  g.A = A.data();
  g.lda = a_cols;
  g.gather = c.gather ? gather.data() : nullptr;
  g.dW = dW.data();
  g.beta = c.beta;
  g.a_preact = c.preact;
  g.act = kernels::Activation::SwiGLU;
  g.a_scale = c.preact ? scale.data() : nullptr;
  g.bf16 = true;
  kernels::grouped_gemm_wgrad(kernels::Backend::Cpu, g);

  for (int64_t e = 0; e < E; ++e)
    for (int64_t n = 0; n < c.N; ++n)
      for (int64_t k = 0; k < c.K; ++k) {
        double sum = 0, mag = 0;
        for (int64_t p = c.offsets[static_cast<size_t>(e)]; p < c.offsets[static_cast<size_t>(e) + 1]; ++p) {
          const int64_t cr = c.dc_gather ? dc_gather[static_cast<size_t>(p)] : p;
          const int64_t ar = c.gather ? gather[static_cast<size_t>(p)] : p;
          double a = bf16_exact(A[static_cast<size_t>(ar * a_cols + k)]);
          if (c.preact) {  // scale · silu(g) · u
            const double gv = A[static_cast<size_t>(ar * a_cols + k)],
                         u = A[static_cast<size_t>(ar * a_cols + c.K + k)];
            a = scale[static_cast<size_t>(p)] * gv / (1.0 + std::exp(-gv)) * u;
          }
          const double prod = double(bf16_exact(dC[static_cast<size_t>(cr * c.N + n)])) * a;
          sum += prod;
          mag += std::fabs(prod);
        }
        const size_t i = static_cast<size_t>((e * c.N + n) * c.K + k);
        const double want = c.beta * double(dW0[i]) + sum;
        const double rows = c.offsets[static_cast<size_t>(e) + 1] - c.offsets[static_cast<size_t>(e)];
        const double tol = (c.preact ? std::ldexp(1.0, -7) : (rows + 2) * std::ldexp(1.0, -24)) * mag +
                           4 * std::ldexp(1.0, -24) * std::fabs(want) + 1e-30;
        ASSERT_LE(std::fabs(double(dW[i]) - want), tol)
            << "expert " << e << " n " << n << " k " << k << " got " << dW[i] << " want " << want;
      }
}

const std::vector<Case>& cases() {
  static const std::vector<Case> c = {
      {{0, 37, 37, 107}, 40, 50, false, false, false, 0.0f},  // an empty expert, edges in N, K and rows
      {{0, 32, 64}, 32, 32, false, false, false, 1.0f},       // whole tiles, accumulate
      {{0, 5, 70}, 33, 17, true, true, false, 0.5f},          // gathers, beta
      {{0, 19, 60}, 24, 40, true, true, true, 0.0f},          // W_down's form: dy rows, scale · swiglu
  };
  return c;
}

TEST(WgradBf16, AmxTilesMatchTheReference) {
  IsaReset reset;
  if (!kernels::gemm_bf16_isa_supported("amx") || kernels::amx_emulation())
    GTEST_SKIP() << "no AMX tiles on this CPU (or no permission)";
  kernels::set_gemm_bf16_isa("amx");
  uint64_t seed = 11;
  for (const Case& c : cases()) check(c, ++seed);
}

TEST(WgradBf16, EmulatedTilesMatchTheReference) {
  IsaReset reset;
  kernels::set_amx_emulation(true);
  if (!kernels::gemm_bf16_isa_supported("amx")) GTEST_SKIP() << "the tile emulation needs AVX-512";
  kernels::set_gemm_bf16_isa("amx");
  uint64_t seed = 21;
  for (const Case& c : cases()) check(c, ++seed);
}

}  // namespace
}  // namespace moe
