// The bf16-expert-weight inference path of the MoE layer.
#include <gtest/gtest.h>

#include <cstring>

#include "layer_testutil.h"

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

}  // namespace
}  // namespace moe::testing
