// Batch invariance: a row's result does not depend on how many other rows are computed with it.
// Decoding runs the GEMMs with one row per sequence, batched serving with many; greedy outputs
// must not change with the batch, so each output element is the same sum, in the same order, for
// any M (the MR-row micro-kernel and the single-row kernel of partial panels agree bit for bit).
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "kernels/cpu/gemm_engine.h"
#include "layer_testutil.h"
#include "moe/core/rng.h"
#include "moe/kernels/ops.h"
#include "moe/moe/layer.h"

namespace moe {
namespace {

struct IsaRestore {
  std::string saved = kernels::cpu::gemm_isa();
  ~IsaRestore() { kernels::cpu::set_gemm_isa(saved); }
};

// C (M, N) = A (M, K) · W (N, K)^T, the layout of every linear layer.
std::vector<float> linear(const std::vector<float>& a, const std::vector<float>& w, int64_t M, int64_t N,
                          int64_t K) {
  std::vector<float> c(static_cast<size_t>(M * N), -7.0f);  // poisoned
  kernels::GemmArgs<float> g;
  g.M = M, g.N = N, g.K = K;
  g.A = a.data(), g.lda = K;
  g.B = w.data(), g.ldb = K, g.trans_b = true;
  g.C = c.data(), g.ldc = N;
  kernels::gemm(kernels::Backend::Cpu, g);
  return c;
}

TEST(BatchInvariance, GemmRowsEqualTheSameRowsAlone) {
  IsaRestore restore;
  // K over two K blocks (kKC = 256), N over two column tiles with a ragged last panel.
  const int64_t K = 300, N = 300;
  const Tensor wt = testing::random_tensor({N, K}, DType::F32, 1),
               at = testing::random_tensor({13, K}, DType::F32, 2);
  const std::vector<float> w(wt.data<float>(), wt.data<float>() + wt.numel());
  const std::vector<float> a(at.data<float>(), at.data<float>() + at.numel());
  for (const char* isa : {"generic", "avx2", "avx512"}) {
    if (!kernels::cpu::gemm_isa_supported(isa)) continue;
    kernels::cpu::set_gemm_isa(isa);
    for (int64_t M : {1, 2, 5, 6, 7, 13}) {
      const std::vector<float> all = linear(a, w, M, N, K);
      for (int64_t i = 0; i < M; ++i) {
        const std::vector<float> row(a.begin() + i * K, a.begin() + (i + 1) * K);
        const std::vector<float> one = linear(row, w, 1, N, K);
        EXPECT_EQ(std::memcmp(one.data(), all.data() + i * N, sizeof(float) * N), 0)
            << isa << ": row " << i << " of M = " << M << " differs from the same row alone";
      }
    }
  }
}

class BatchInvarianceLayer : public ::testing::TestWithParam<bool> {};

TEST_P(BatchInvarianceLayer, MoELayerTokensEqualTheSameTokensAlone) {
  MoEConfig c = testing::small_config(/*d=*/64, /*F=*/96, /*E=*/8, /*k=*/2);
  c.n_shared_experts = 1;
  c.d_ff_shared = 80;
  MoELayer layer(c, DType::F32);
  layer.init_params(3);
  layer.set_bf16_expert_weights(GetParam());
  const int64_t T = 11;
  const Tensor x = testing::random_tensor({T, c.d_model}, DType::F32, 4);
  const Tensor y = layer.forward(x).y;  // (T, d)
  for (int64_t t = 0; t < T; ++t) {
    Tensor xt = Tensor::empty({1, c.d_model}, DType::F32);
    std::memcpy(xt.data<float>(), x.data<float>() + t * c.d_model, sizeof(float) * c.d_model);
    const Tensor yt = layer.forward(xt).y;
    EXPECT_EQ(std::memcmp(yt.data<float>(), y.data<float>() + t * c.d_model, sizeof(float) * c.d_model), 0)
        << "token " << t;
  }
}

INSTANTIATE_TEST_SUITE_P(F32AndBf16Experts, BatchInvarianceLayer, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& i) { return i.param ? "bf16" : "f32"; });

}  // namespace
}  // namespace moe
