// Dynamic expert skipping (RouterConfig::skip_threshold) and the routed weight statistics of the
// MoE layer: threshold 0 is bit-identical to no skipping, a threshold above every weight leaves
// the shared experts only, and a middle threshold matches a forward computed by hand.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "layer_testutil.h"
#include "model_testutil.h"
#include "moe/core/error.h"
#include "moe/model/transformer.h"
#include "moe/moe/layer.h"

namespace moe {
namespace {

using testing::random_tensor;
using testing::small_config;

// A layer with one shared expert, random weights.
MoELayer shared_layer(DType dt, uint64_t seed, int64_t E = 5, int k = 3) {
  MoEConfig c = small_config(8, 6, E, k);
  c.n_shared_experts = 1;
  c.d_ff_shared = 4;
  c.router.normalize = true;
  MoELayer L(c, dt);
  L.init_params(seed);
  return L;
}

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.dtype() == b.dtype() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

TEST(ExpertSkip, ThresholdZeroIsBitIdentical) {
  MoELayer a = shared_layer(DType::F32, 11), b = shared_layer(DType::F32, 11);
  b.set_skip_threshold(0.4);
  b.set_skip_threshold(0.0);
  const Tensor x = random_tensor({13, 8}, DType::F32, 12);
  const MoEForward fa = a.forward(x), fb = b.forward(x);
  EXPECT_TRUE(same_bits(fa.y, fb.y));
  EXPECT_EQ(fb.stats.skipped, 0);
  EXPECT_EQ(fb.stats.tokens_per_expert, fa.stats.tokens_per_expert);
  EXPECT_THROW(b.set_skip_threshold(-0.1), Error);
  EXPECT_THROW(b.set_skip_threshold(NAN), Error);
}

TEST(ExpertSkip, ThresholdAboveEveryWeightLeavesSharedExpertsOnly) {
  MoELayer L = shared_layer(DType::F32, 21);
  const int64_t T = 9;
  const Tensor x = random_tensor({T, 8}, DType::F32, 22);
  // Reference: the same layer with zero routed down projections (routed contribution exactly 0).
  MoELayer ref = shared_layer(DType::F32, 21);
  ref.params().w_down.fill(0.0);
  const MoEForward fr = ref.forward(x);
  L.set_skip_threshold(1.5);  // normalised weights are <= 1
  MoEForward f = L.forward(x);
  EXPECT_TRUE(same_bits(f.y, fr.y));
  EXPECT_EQ(f.stats.skipped, T * 3);
  EXPECT_EQ(f.stats.dropped, 0);
  for (int64_t c : f.stats.tokens_per_expert) EXPECT_EQ(c, 0);
  int64_t routed = 0;
  for (int64_t c : f.stats.routed_per_expert) routed += c;
  EXPECT_EQ(routed, T * 3);  // chosen before skipping
  // Training forwards never skip.
  ForwardOptions train;
  train.training = true;
  f = L.forward(x, train);
  EXPECT_EQ(f.stats.skipped, 0);
  EXPECT_FALSE(same_bits(f.y, L.forward(x, {}).y));
}

// y_t = Σ_{j: w_tj >= θ} w_tj · FFN_e(x_t) + shared(x_t), in double from the parameters.
TEST(ExpertSkip, MiddleThresholdMatchesAHandComputedForward) {
  MoELayer L = shared_layer(DType::F64, 31, 6, 3);
  const MoEConfig& c = L.config();
  const int64_t T = 11, d = c.d_model, F = c.d_ff, Fs = c.shared_width();
  const Tensor x = random_tensor({T, d}, DType::F64, 32);
  const MoEForward f0 = L.forward(x);  // threshold 0: the routing
  const Routing& r = f0.routing;
  // A threshold between the weights so that some, not all, are skipped.
  std::vector<double> w = r.weight.to_vector();
  std::vector<double> sorted = w;
  std::sort(sorted.begin(), sorted.end());
  const double thr = 0.5 * (sorted[sorted.size() / 2] + sorted[sorted.size() / 2 + 1]);
  ASSERT_LT(sorted[sorted.size() / 2], thr);
  L.set_skip_threshold(thr);
  const MoEForward f = L.forward(x);

  const MoEParams& P = L.params();
  auto silu = [](double z) { return z / (1.0 + std::exp(-z)); };
  auto ffn = [&](const Tensor& Wg, const Tensor& Wu, const Tensor& Wd, int64_t e, int64_t width, int64_t t,
                 double* out) {
    std::vector<double> h(static_cast<size_t>(width));
    const int64_t og = e * width * d, od = e * d * width;
    for (int64_t i = 0; i < width; ++i) {
      double g = 0, u = 0;
      for (int64_t j = 0; j < d; ++j) {
        g += Wg.get(og + i * d + j) * x.get(t * d + j);
        u += Wu.get(og + i * d + j) * x.get(t * d + j);
      }
      h[i] = silu(g) * u;
    }
    for (int64_t o = 0; o < d; ++o) {
      double s = 0;
      for (int64_t i = 0; i < width; ++i) s += Wd.get(od + o * width + i) * h[i];
      out[o] = s;
    }
  };
  int64_t skipped = 0;
  std::vector<double> ref(static_cast<size_t>(T * d), 0.0), tmp(static_cast<size_t>(d));
  for (int64_t a = 0; a < r.n_assign; ++a) {
    if (w[a] < thr) {
      ++skipped;
      continue;
    }
    const int64_t t = r.token.data<int32_t>()[a], e = r.expert.data<int32_t>()[a];
    ffn(P.w_gate, P.w_up, P.w_down, e, F, t, tmp.data());
    for (int64_t o = 0; o < d; ++o) ref[t * d + o] += w[a] * tmp[o];
  }
  for (int64_t t = 0; t < T; ++t) {
    ffn(P.shared_w_gate, P.shared_w_up, P.shared_w_down, 0, Fs, t, tmp.data());
    for (int64_t o = 0; o < d; ++o) ref[t * d + o] += tmp[o];
  }
  ASSERT_GT(skipped, 0);
  ASSERT_LT(skipped, r.n_assign);
  EXPECT_EQ(f.stats.skipped, skipped);
  double err = 0, scale = 0;
  for (int64_t i = 0; i < T * d; ++i) {
    const double v = f.y.get(i);
    ASSERT_FALSE(std::isnan(v));
    err = std::max(err, std::abs(v - ref[i]));
    scale = std::max(scale, std::abs(ref[i]));
  }
  EXPECT_LT(err, 1e-12 * std::max(scale, 1.0));  // f64: rounding of a few hundred terms
  int64_t computed = 0;
  for (int64_t n : f.stats.tokens_per_expert) computed += n;
  EXPECT_EQ(computed, r.n_assign - skipped);
}

// routed_weight_per_expert sums the combine weights of all chosen assignments, before capacity.
TEST(ExpertSkip, RoutedWeightsAreSummedBeforeCapacity) {
  MoEConfig c = small_config(8, 6, 4, 2);
  c.router.normalize = true;
  c.router.capacity_factor = 0.5;  // drops some
  MoELayer L(c, DType::F64);
  L.init_params(41);
  const int64_t T = 20;
  const MoEForward f = L.forward(random_tensor({T, 8}, DType::F64, 42));
  ASSERT_GT(f.stats.dropped, 0);
  std::vector<double> ref(4, 0.0);
  for (int64_t a = 0; a < f.routing.n_assign; ++a)
    ref[f.routing.expert.data<int32_t>()[a]] += f.routing.weight.data<double>()[a];
  double total = 0;
  for (int64_t e = 0; e < 4; ++e) {
    EXPECT_DOUBLE_EQ(f.stats.routed_weight_per_expert[e], ref[e]);
    total += f.stats.routed_weight_per_expert[e];
  }
  EXPECT_NEAR(total, static_cast<double>(T), 1e-12 * T);  // normalised: each token's weights sum to 1
}

TEST(ExpertSkip, TransformerSetterAppliesToEveryMoeLayer) {
  using namespace model;
  const ModelConfig cfg = model::testing::tiny_config(Arch::Mixtral);
  Transformer m(cfg);
  m.init_params(51);
  const std::vector<int32_t> tok = model::testing::random_tokens(14, cfg.vocab_size, 52);
  std::vector<int32_t> tgt(tok.size(), -1);
  const Tensor l0 = m.logits(tok.data(), 2, 7);
  m.set_expert_skip_threshold(0.0);
  EXPECT_TRUE(same_bits(m.logits(tok.data(), 2, 7), l0));
  m.set_expert_skip_threshold(2.0);  // above every renormalised weight
  const StepResult r = m.evaluate(tok.data(), tgt.data(), 2, 7);
  ASSERT_EQ(r.stats.size(), 2u);
  for (const MoEStats& s : r.stats) EXPECT_EQ(s.skipped, 14 * cfg.num_experts_per_tok);
  EXPECT_FALSE(same_bits(m.logits(tok.data(), 2, 7), l0));
  EXPECT_THROW(m.set_expert_skip_threshold(-1.0), Error);
}

TEST(ExpertSkip, ConfigJsonRoundTrip) {
  MoEConfig c = small_config();
  c.router.skip_threshold = 0.125;
  const MoEConfig back = moe_config_from_json(to_json(c));
  EXPECT_EQ(back.router.skip_threshold, 0.125);
  EXPECT_EQ(to_json(small_config()).find("skip_threshold"), std::string::npos);  // written only when on
  EXPECT_THROW(
      moe_config_from_json(R"({"d_model": 8, "d_ff": 6, "n_experts": 4, "router": {"skip_threshold": -1}})"),
      Error);
}

}  // namespace
}  // namespace moe
