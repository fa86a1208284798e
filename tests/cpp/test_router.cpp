// Router, capacity and balancing: small hand-computed cases with exact expected answers.
#include <gtest/gtest.h>

#include <cmath>

#include "layer_testutil.h"
#include "moe/moe/balance.h"
#include "moe/moe/router.h"

namespace moe::testing {
namespace {

Tensor logits_of(const std::vector<double>& v, int64_t T, int64_t E) {
  return Tensor::from(v, {T, E}, DType::F64, "logits");
}

std::vector<int32_t> experts(const Routing& r) {
  return std::vector<int32_t>(r.expert.data<int32_t>(), r.expert.data<int32_t>() + r.n_assign);
}
std::vector<int> kept(const Routing& r) {
  return std::vector<int>(r.kept.data<uint8_t>(), r.kept.data<uint8_t>() + r.n_assign);
}

TEST(Router, TopkTiesGoToLowerIndex) {
  const double v[] = {1.0, 3.0, 3.0, -INFINITY, 2.0, 3.0};
  int32_t out[4];
  topk_desc(v, 6, 4, out);
  EXPECT_EQ(out[0], 1);
  EXPECT_EQ(out[1], 2);
  EXPECT_EQ(out[2], 5);
  EXPECT_EQ(out[3], 4);
}

TEST(Router, SoftmaxTopkWeightsAndNormalisation) {
  MoEConfig c = small_config(4, 4, 4, 2);
  const Tensor l = logits_of({0.0, 1.0, 2.0, 0.5}, 1, 4);
  Routing r = route(c, l, Tensor(), nullptr);
  EXPECT_EQ(experts(r), (std::vector<int32_t>{2, 1}));
  const double z = 1 + std::exp(1.0) + std::exp(2.0) + std::exp(0.5);
  EXPECT_NEAR(r.weight.get(0), std::exp(2.0) / z, 1e-15);
  EXPECT_NEAR(r.weight.get(1), std::exp(1.0) / z, 1e-15);
  c.router.normalize = true;
  c.router.scaling = 2.0;
  r = route(c, l, Tensor(), nullptr);
  EXPECT_NEAR(r.weight.get(0), 2.0 * std::exp(2.0) / (std::exp(2.0) + std::exp(1.0)), 1e-15);
  c.router.normalize = false;
  c.router.scaling = 1.0;
  c.router.order = TopkOrder::TopkThenSoftmax;
  r = route(c, l, Tensor(), nullptr);
  EXPECT_NEAR(r.weight.get(0) + r.weight.get(1), 1.0, 1e-15);
}

TEST(Router, BiasSelectsButDoesNotWeight) {
  MoEConfig c = small_config(4, 4, 4, 1);
  c.router.use_bias = true;
  c.router.score = ScoreFn::Sigmoid;
  const Tensor l = logits_of({0.0, 1.0, 2.0, 0.5}, 1, 4);
  const Tensor b = Tensor::from({0.0, 0.0, 0.0, 5.0}, {4}, DType::F64, "bias");
  Routing r = route(c, l, b, nullptr);
  EXPECT_EQ(experts(r), (std::vector<int32_t>{3}));
  EXPECT_NEAR(r.weight.get(0), 1.0 / (1.0 + std::exp(-0.5)), 1e-15);
}

TEST(Router, GroupLimitedPicksInsideBestGroups) {
  // 8 experts in 4 groups of 2; group scores (sum_top2): g0 = 0.9+0.8, g1 = 1.0+0.0, g2 = 0.7+0.6, g3 =
  // 0.1+0.2. Best two groups: g0 (1.7) and g2 (1.3); expert 2 (1.0, in g1) is excluded although it is the top
  // score.
  MoEConfig c = small_config(4, 4, 8, 2);
  c.router.score = ScoreFn::Sigmoid;
  c.router.n_groups = 4;
  c.router.topk_groups = 2;
  std::vector<double> s = {0.9, 0.8, 1.0, 0.0, 0.7, 0.6, 0.1, 0.2};
  // Turn the wanted sigmoid scores into logits.
  std::vector<double> l(8);
  for (int i = 0; i < 8; ++i) l[i] = std::log(std::max(s[i], 1e-9) / std::max(1 - s[i], 1e-9));
  Routing r = route(c, logits_of(l, 1, 8), Tensor(), nullptr);
  EXPECT_EQ(experts(r), (std::vector<int32_t>{0, 1}));
  c.router.group_score = GroupScore::Max;  // g1 (1.0) and g0 (0.9) now win
  r = route(c, logits_of(l, 1, 8), Tensor(), nullptr);
  EXPECT_EQ(experts(r), (std::vector<int32_t>{2, 0}));
}

TEST(Router, CapacityDropsByPositionThenProbs) {
  // 4 tokens, 2 experts, k = 1, cf = 1 -> capacity ceil(4 * 1 / 2) = 2. Everyone prefers expert 0.
  MoEConfig c = small_config(4, 4, 2, 1);
  c.router.capacity_factor = 1.0;
  const Tensor l = logits_of({1.0, 0.0, 3.0, 0.0, 2.0, 0.0, 4.0, 0.0}, 4, 2);
  Routing r = route(c, l, Tensor(), nullptr);
  EXPECT_EQ(r.capacity, 2);
  EXPECT_EQ(kept(r), (std::vector<int>{1, 1, 0, 0}));  // position: the first two tokens stay
  c.router.drop_policy = DropPolicy::Probs;
  r = route(c, l, Tensor(), nullptr);
  EXPECT_EQ(kept(r), (std::vector<int>{0, 1, 0, 1}));  // probs: tokens 3 (4.0) and 1 (3.0) stay
}

TEST(Router, CapacityIsSlotMajor) {
  // 2 tokens, k = 2, 2 experts, cf = 0.5 -> capacity 1. Slot 0 of both tokens is offered first.
  MoEConfig c = small_config(4, 4, 2, 2);
  c.router.capacity_factor = 0.5;
  const Tensor l = logits_of({1.0, 0.0, 0.0, 1.0}, 2, 2);
  Routing r = route(c, l, Tensor(), nullptr);
  EXPECT_EQ(experts(r), (std::vector<int32_t>{0, 1, 1, 0}));
  EXPECT_EQ(kept(r), (std::vector<int>{1, 0, 1, 0}));
}

TEST(Router, ExpertChoiceTakesExactlyCapacityPerExpert) {
  MoEConfig c = small_config(4, 4, 4, 2);
  c.router.routing = RouterType::ExpertChoice;
  const Tensor l = random_tensor({10, 4}, DType::F64, 1);
  Routing r = route(c, l, Tensor(), nullptr);
  EXPECT_EQ(r.capacity, 5);  // ceil(10 * 2 / 4)
  const auto counts = routed_counts(r, 4);
  for (int64_t e = 0; e < 4; ++e) EXPECT_EQ(counts[e], 5);
  // Each expert's tokens are its best by score, in descending order.
  for (int64_t e = 0; e < 4; ++e)
    for (int64_t j = 1; j < 5; ++j)
      EXPECT_GE(r.scores.get(r.token.get(e * 5 + j - 1) * 4 + e),
                r.scores.get(r.token.get(e * 5 + j) * 4 + e));
}

TEST(Router, HashIsDeterministicAndDistinct) {
  MoEConfig c = small_config(4, 4, 8, 3);
  c.router.routing = RouterType::Hash;
  Tensor ids = Tensor::from({5, 5, 17, 0, 123456}, {5}, DType::I32, "ids");
  const Tensor l = random_tensor({5, 8}, DType::F64, 2);
  Routing r = route(c, l, Tensor(), &ids);
  const auto e = experts(r);
  for (int t = 0; t < 5; ++t) {
    EXPECT_NE(e[t * 3], e[t * 3 + 1]);
    EXPECT_NE(e[t * 3], e[t * 3 + 2]);
    EXPECT_NE(e[t * 3 + 1], e[t * 3 + 2]);
  }
  for (int j = 0; j < 3; ++j) EXPECT_EQ(e[j], e[3 + j]);  // same id -> same experts
  // Independent of the logits.
  Routing r2 = route(c, random_tensor({5, 8}, DType::F64, 3), Tensor(), &ids);
  EXPECT_EQ(experts(r2), e);
  EXPECT_EQ(splitmix64(0), 0xE220A8397B1DCDAFull);  // published first output of splitmix64(seed 0)
}

TEST(Router, BalancedIsMoreBalancedThanTokenChoice) {
  MoEConfig c = small_config(4, 4, 8, 1);
  // Logits strongly skewed towards expert 0.
  Tensor l = random_tensor({256, 8}, DType::F64, 4);
  for (int64_t t = 0; t < 256; ++t) l.set(t * 8, l.get(t * 8) + 2.0);
  const auto tc = routed_counts(route(c, l, Tensor(), nullptr), 8);
  c.router.routing = RouterType::Balanced;
  c.router.sinkhorn_iters = 20;
  const auto bc = routed_counts(route(c, l, Tensor(), nullptr), 8);
  const int64_t tc_max = *std::max_element(tc.begin(), tc.end());
  const int64_t bc_max = *std::max_element(bc.begin(), bc.end());
  EXPECT_GT(tc_max, 100);  // token choice piles onto expert 0
  EXPECT_LE(bc_max, 48);   // 32 per expert at perfect balance
}

TEST(Balance, AuxLossEqualsCoefficientAtPerfectBalance) {
  // Uniform logits: P_e = 1/E; with every expert routed equally, aux = α.
  MoEConfig c = small_config(4, 4, 4, 1);
  c.balance.aux_coef = 0.01;
  c.balance.z_coef = 0.1;
  c.router.routing = RouterType::ExpertChoice;  // exactly T*k/E each
  const Tensor l = Tensor::zeros({8, 4}, DType::F64, "logits");
  Routing r = route(c, l, Tensor(), nullptr);
  const BalanceLosses b = balance_losses(c, r, nullptr);
  EXPECT_NEAR(b.aux, 0.01, 1e-15);
  EXPECT_NEAR(b.z, 0.1 * std::log(4.0) * std::log(4.0), 1e-14);  // lse of 4 zeros = log 4
}

TEST(Balance, BiasUpdateMovesTowardsMeanLoad) {
  Tensor b = Tensor::zeros({4}, DType::F32, "bias");
  update_bias(b, {10, 2, 4, 4}, 0.5);  // mean 5
  EXPECT_EQ(b.to_vector(), (std::vector<double>{-0.5, 0.5, 0.5, 0.5}));
  update_bias(b, {5, 5, 5, 5}, 0.5);  // balanced: unchanged
  EXPECT_EQ(b.to_vector(), (std::vector<double>{-0.5, 0.5, 0.5, 0.5}));
}

TEST(Balance, LayerUpdateBiasReducesImbalance) {
  MoEConfig c = small_config(16, 8, 8, 2);
  c.router.use_bias = true;
  c.router.score = ScoreFn::Sigmoid;  // DeepSeek-V3 style: sigmoid scores, bias on the scores
  c.balance.bias_update_rate = 0.01;
  MoELayer layer(c, DType::F32);
  layer.init_params(7);
  // Feature 0 is a constant 1 and expert 0's router row weighs it by 3: expert 0 is favoured by a
  // per-token-constant margin, which a selection bias can undo.
  Tensor x = random_tensor({256, 16}, DType::F32, 8);
  for (int64_t t = 0; t < 256; ++t) x.set(t * 16, 1.0);
  layer.params().router_w.set(0, 3.0);
  const double before = layer.forward(x).stats.imbalance;
  for (int step = 0; step < 60; ++step) layer.update_bias(layer.forward(x).stats);
  const double after = layer.forward(x).stats.imbalance;
  EXPECT_GT(before, 2.0);
  EXPECT_LT(after, 1.3);
  EXPECT_LT(layer.params().router_bias.get(0), -0.1);  // expert 0 pushed down
}

TEST(Stats, CountsAndDropsAddUp) {
  MoEConfig c = small_config(8, 8, 4, 2);
  c.router.capacity_factor = 0.5;
  MoELayer layer(c, DType::F32);
  layer.init_params(1);
  const MoEForward f = layer.forward(random_tensor({50, 8}, DType::F32, 2));
  int64_t routed = 0, computed = 0;
  for (int64_t e = 0; e < 4; ++e) {
    routed += f.stats.routed_per_expert[e];
    computed += f.stats.tokens_per_expert[e];
    EXPECT_LE(f.stats.tokens_per_expert[e], 25);  // capacity ceil(0.5 * 100 / 4) = 13 <= 25
    EXPECT_LE(f.stats.tokens_per_expert[e], f.routing.capacity);
  }
  EXPECT_EQ(routed, 100);
  EXPECT_EQ(computed + f.stats.dropped, 100);
  EXPECT_GT(f.stats.dropped, 0);
}

}  // namespace
}  // namespace moe::testing
