// The bf16 paths of the MoE layer: bf16 expert weights for inference, and bf16 compute in training.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "layer_testutil.h"
#include "moe/kernels/ops_bf16.h"

namespace moe::testing {
namespace {

MoEConfig bf16_config() {
  MoEConfig c = small_config(48, 40, 8, 2);
  c.n_shared_experts = 1;
  c.d_ff_shared = 24;
  c.router.normalize = true;
  return c;
}

// bf16 on the Cpu backend against bf16 on the Ref backend: both multiply the same bf16-rounded
// operands; they differ only in fp32 vs double accumulation (≈ sqrt(K)·2^-24 relative) and, where
// that moves an fp32 hidden value across a bf16 rounding boundary, by one bf16 ulp (2^-8) of a single
// term of the down projection's sum. 1e-3 of the output scale bounds both with room.
TEST(LayerBf16, CpuMatchesRefOnTheSameRoundedWeights) {
  const MoEConfig c = bf16_config();
  MoELayer cpu(c, DType::F32, kernels::Backend::Cpu), ref(c, DType::F32, kernels::Backend::Ref);
  cpu.init_params(5);
  ref.init_params(5);
  cpu.set_bf16_expert_weights(true);
  ref.set_bf16_expert_weights(true);
  const Tensor x = random_tensor({61, 48}, DType::F32, 6);
  const MoEForward fc = cpu.forward(x), fr = ref.forward(x);
  EXPECT_LT(rel_err(fc.y, fr.y), 1e-3);
}

// bf16 against f32 weights: every product a·w has both factors rounded to bf16 (relative error
// ≤ 2^-9 each), so each of the three chained dot products is off by at most ≈ 2^-8·Σ|a·w|; with
// Σ|a·w| a few times |Σ a·w| for random data, 2^-5 of the output scale is a safe bound while a
// wrong weight or indexing error is O(1).
TEST(LayerBf16, CloseToTheF32Layer) {
  const MoEConfig c = bf16_config();
  MoELayer layer(c, DType::F32);
  layer.init_params(7);
  const Tensor x = random_tensor({61, 48}, DType::F32, 8);
  const MoEForward f32 = layer.forward(x);
  layer.set_bf16_expert_weights(true);
  ASSERT_TRUE(layer.has_bf16_expert_weights());
  const MoEForward b16 = layer.forward(x);
  const double err = rel_err(b16.y, f32.y);
  EXPECT_LT(err, 1.0 / 32);
  EXPECT_GT(err, 0.0);  // the bf16 path really ran
  EXPECT_EQ(std::memcmp(b16.routing.expert.raw(), f32.routing.expert.raw(), b16.routing.expert.nbytes()), 0);
  // Switching back gives the f32 results bit for bit.
  layer.set_bf16_expert_weights(false);
  const MoEForward again = layer.forward(x);
  EXPECT_EQ(std::memcmp(again.y.raw(), f32.y.raw(), f32.y.nbytes()), 0);
}

TEST(LayerBf16, PlainFfnExperts) {
  MoEConfig c = bf16_config();
  c.activation = kernels::Activation::Gelu;
  MoELayer layer(c, DType::F32);
  layer.init_params(9);
  const Tensor x = random_tensor({17, 48}, DType::F32, 10);
  const MoEForward f32 = layer.forward(x);
  layer.set_bf16_expert_weights(true);
  EXPECT_LT(rel_err(layer.forward(x).y, f32.y), 1.0 / 32);
}

TEST(LayerBf16, InferenceOnlyAndF32Only) {
  MoELayer layer(bf16_config(), DType::F32);
  layer.init_params(1);
  layer.set_bf16_expert_weights(true);
  const Tensor x = random_tensor({5, 48}, DType::F32, 2);
  const MoEForward f = layer.forward(x);
  EXPECT_THROW(layer.backward(f, random_tensor({5, 48}, DType::F32, 3)), Error);
  MoELayer f64(bf16_config(), DType::F64);
  EXPECT_THROW(f64.set_bf16_expert_weights(true), Error);
  // Zero tokens still work.
  EXPECT_EQ(layer.forward(Tensor::zeros({0, 48})).y.shape(), (Shape{0, 48}));
}

// ---------------------------------------------------------------------------------------------
// bf16 compute (training): forward, input-gradient and down-backward GEMMs on packed bf16 copies.

// Every gradient of a forward+backward (routed and shared experts, router, dx).
std::vector<std::pair<const char*, Tensor>> grads_of(MoELayer& L, const Tensor& x, const Tensor& dy) {
  const MoEForward f = L.forward(x);
  const MoEGrads g = L.backward(f, dy);
  return {{"y", f.y},
          {"dx", g.dx},
          {"w_gate", g.w_gate},
          {"w_up", g.w_up},
          {"w_down", g.w_down},
          {"shared_w_gate", g.shared_w_gate},
          {"shared_w_up", g.shared_w_up},
          {"shared_w_down", g.shared_w_down},
          {"router_w", g.router_w}};
}

// Against the f32 layer: each GEMM of the chain rounds both of its operands to bf16 (the weight
// gradients read f32 rows but receive bf16-computed dh / dG / dU), so every output and gradient is
// within a few 2^-8 of its scale (0.2-0.5% measured); 2^-5 leaves room for the chained products
// while an indexing error is O(1). Ref and Cpu in bf16 compute agree far closer (only fp32 vs double
// sums, and bf16 boundary crossings of single terms; below 1e-6 measured): 1e-3 as above, except the
// expert weight gradients where the CPU computes them on AMX tiles with bf16 operands (the reference
// keeps them in fp32; 0.25-0.4% measured): 2^-5 there.
TEST(LayerBf16, ComputeInTrainingIsCloseToF32AndRefMatchesCpu) {
  const MoEConfig c = bf16_config();
  const Tensor x = random_tensor({61, 48}, DType::F32, 11), dy = random_tensor({61, 48}, DType::F32, 12);
  MoELayer f32(c, DType::F32), cpu(c, DType::F32), ref(c, DType::F32, kernels::Backend::Ref);
  for (MoELayer* L : {&f32, &cpu, &ref}) L->init_params(9);
  cpu.set_bf16_compute(true);
  ref.set_bf16_compute(true);
  ASSERT_TRUE(cpu.bf16_routed().defined() && cpu.bf16_shared().defined());
  const auto want = grads_of(f32, x, dy), got = grads_of(cpu, x, dy), r = grads_of(ref, x, dy);
  for (size_t i = 0; i < want.size(); ++i) {
    SCOPED_TRACE(want[i].first);
    const double e = rel_err(got[i].second, want[i].second);
    EXPECT_LT(e, 1.0 / 32);
    if (std::string(want[i].first) != "router_w") {
      EXPECT_GT(e, 0.0);  // the bf16 path really ran
    }
    const std::string name = want[i].first;
    const bool tiles_wgrad = std::string(kernels::gemm_bf16_isa()) == "amx" &&
                             name.find("w_") != std::string::npos && name != "router_w";
    EXPECT_LT(rel_err(got[i].second, r[i].second), tiles_wgrad ? 1.0 / 32 : 1e-3);
  }
  // Off again: the f32 results bit for bit.
  cpu.set_bf16_compute(false);
  const auto again = grads_of(cpu, x, dy);
  for (size_t i = 0; i < want.size(); ++i)
    EXPECT_EQ(std::memcmp(again[i].second.raw(), want[i].second.raw(), want[i].second.nbytes()), 0)
        << want[i].first;
}

// The copies follow the weights only when refreshed; f64 layers refuse bf16 compute.
TEST(LayerBf16, ComputeCopiesAreRefreshedAndF32Only) {
  const MoEConfig c = bf16_config();
  MoELayer L(c, DType::F32);
  L.init_params(3);
  L.set_bf16_compute(true);
  const Tensor x = random_tensor({7, 48}, DType::F32, 4);
  const Tensor y0 = L.forward(x).y;
  float* wd = L.params().w_down.data<float>();
  for (int64_t i = 0; i < L.params().w_down.numel(); ++i) wd[i] *= 2.0f;   // every routed expert's output x2
  EXPECT_EQ(std::memcmp(L.forward(x).y.raw(), y0.raw(), y0.nbytes()), 0);  // stale copies
  L.refresh_bf16_compute();
  EXPECT_GT(rel_err(L.forward(x).y, y0), 0.1);
  MoELayer f64(c, DType::F64);
  EXPECT_THROW(f64.set_bf16_compute(true), Error);
}

}  // namespace
}  // namespace moe::testing
