// Adaptive-k (top-p) routing (RouterConfig::top_p, docs/MOE_LAYER.md section 2): the limits p -> 0
// (top-1) and p = 1 (every candidate), the mass rule on hand-made scores, min_k, what the statistics
// and balancing losses count, capacity, the entropy loss, config errors, and the model-level switch.
#include <gtest/gtest.h>

#include <cmath>

#include "layer_testutil.h"
#include "moe/moe/balance.h"
#include "moe/moe/router.h"

namespace moe::testing {
namespace {

// Logits (T, E) whose softmax rows are the given probabilities (log p).
Tensor logits_of(const std::vector<std::vector<double>>& probs) {
  const int64_t T = static_cast<int64_t>(probs.size()), E = static_cast<int64_t>(probs[0].size());
  Tensor l = Tensor::empty({T, E}, DType::F64, "logits");
  for (int64_t t = 0; t < T; ++t)
    for (int64_t e = 0; e < E; ++e) l.set(t * E + e, std::log(probs[t][e]));
  return l;
}

MoEConfig top_p_config(int64_t E, int k, double p, bool normalize = true) {
  MoEConfig c = small_config(8, 6, E, k);
  c.router.top_p = p;
  c.router.normalize = normalize;
  return c;
}

std::vector<int> selected(const Routing& r, int64_t t, int k) {
  std::vector<int> out;
  for (int j = 0; j < k; ++j)
    if (assignment_active(r, t * k + j)) out.push_back(r.expert.data<int32_t>()[t * k + j]);
  return out;
}

TEST(RouterTopP, MassRuleOnKnownScores) {
  // Scores 0.5, 0.3, 0.15, 0.05 (experts 2, 0, 3, 1): the experts are taken until their mass
  // reaches p.
  const Tensor l = logits_of({{0.3, 0.05, 0.5, 0.15}});
  const std::vector<std::pair<double, std::vector<int>>> want = {
      {0.4, {2}}, {0.5, {2}}, {0.6, {2, 0}}, {0.8, {2, 0}}, {0.85, {2, 0, 3}}, {0.99, {2, 0, 3, 1}}};
  for (const auto& [p, experts] : want) {
    const Routing r = route(top_p_config(4, 4, p), l, Tensor(), nullptr, kernels::Backend::Ref);
    EXPECT_EQ(selected(r, 0, 4), experts) << "p = " << p;
    EXPECT_EQ(r.n_active, static_cast<int64_t>(experts.size()));
    // Renormalised over the selected: weights sum to 1 (scaling 1), 0 for the others.
    double sum = 0;
    for (int j = 0; j < 4; ++j) sum += r.weight.get(j);
    EXPECT_NEAR(sum, 1.0, 1e-12) << "p = " << p;
    for (int j = static_cast<int>(experts.size()); j < 4; ++j) {
      EXPECT_EQ(r.weight.get(j), 0.0);
      EXPECT_EQ(r.kept.data<uint8_t>()[j], 0);
    }
  }
  // min_k and the most k (top_k) bound the count.
  MoEConfig c = top_p_config(4, 3, 0.99);
  EXPECT_EQ(route(c, l, Tensor(), nullptr, kernels::Backend::Ref).n_active, 3);
  c = top_p_config(4, 4, 0.1);
  c.router.min_k = 3;
  EXPECT_EQ(selected(route(c, l, Tensor(), nullptr, kernels::Backend::Ref), 0, 4),
            (std::vector<int>{2, 0, 3}));
  // Without normalize the selected weights are the scores themselves.
  const Routing r = route(top_p_config(4, 4, 0.6, false), l, Tensor(), nullptr, kernels::Backend::Ref);
  EXPECT_NEAR(r.weight.get(0), 0.5, 1e-12);
  EXPECT_NEAR(r.weight.get(1), 0.3, 1e-12);
  EXPECT_EQ(r.weight.get(2), 0.0);
}

// p -> 0 is top-1 routing and p = 1 with top_k = E is every expert: outputs, losses and gradients
// equal those of the fixed-k layer.
void expect_same_layer(MoEConfig adaptive, MoEConfig fixed, const std::string& what) {
  for (kernels::Backend be : {kernels::Backend::Ref, kernels::Backend::Cpu}) {
    const DType dt = be == kernels::Backend::Ref ? DType::F64 : DType::F32;
    MoELayer a(adaptive, dt, be), f(fixed, dt, be);
    a.init_params(3);
    f.init_params(3);
    const Tensor x = random_tensor({23, 8}, dt, 4), dy = random_tensor({23, 8}, dt, 5);
    const MoEForward fa = a.forward(x), ff = f.forward(x);
    EXPECT_LT(rel_err(fa.y, ff.y), 1e-6) << what;
    EXPECT_NEAR(fa.stats.total_loss(), ff.stats.total_loss(), 1e-6) << what;
    EXPECT_EQ(fa.stats.routed_per_expert, ff.stats.routed_per_expert) << what;
    EXPECT_DOUBLE_EQ(fa.stats.mean_k, ff.stats.mean_k) << what;
    const MoEGrads ga = a.backward(fa, dy), gf = f.backward(ff, dy);
    EXPECT_LT(rel_err(ga.dx, gf.dx), 1e-6) << what;
    EXPECT_LT(rel_err(ga.router_w, gf.router_w), 1e-6) << what;
    EXPECT_LT(rel_err(ga.w_down, gf.w_down), 1e-6) << what;
  }
}

TEST(RouterTopP, TinyPIsTop1AndPOneIsEveryExpert) {
  MoEConfig top1 = small_config(8, 6, 4, 1);
  top1.router.normalize = true;
  top1.balance.aux_coef = 0.2;
  MoEConfig tiny = top_p_config(4, 3, 1e-9);
  tiny.balance.aux_coef = 0.2;
  expect_same_layer(tiny, top1, "p -> 0");

  MoEConfig all = small_config(8, 6, 4, 4);
  all.router.normalize = true;
  all.balance.aux_coef = 0.2;
  all.balance.z_coef = 0.01;
  MoEConfig one = top_p_config(4, 4, 1.0);
  one.balance.aux_coef = 0.2;
  one.balance.z_coef = 0.01;
  expect_same_layer(one, all, "p = 1");
}

TEST(RouterTopP, StatisticsAndLossesCountOnlySelectedExperts) {
  MoEConfig c = top_p_config(8, 6, 0.5);
  c.balance.aux_coef = 1.0;
  MoELayer layer(c, DType::F64, kernels::Backend::Ref);
  layer.init_params(7);
  // Larger router weights: peaked scores, so tokens select different numbers of experts.
  Rng(8).fill_normal(layer.params().router_w, 0.0, 1.5);
  const Tensor x = random_tensor({41, 8}, DType::F64, 9);
  const MoEForward f = layer.forward(x);
  const Routing& r = f.routing;
  int64_t n_sel = 0, min_n = 99, max_n = 0;
  std::vector<int64_t> counts(8, 0);
  for (int64_t t = 0; t < 41; ++t) {
    const std::vector<int> s = selected(r, t, 6);
    n_sel += static_cast<int64_t>(s.size());
    min_n = std::min<int64_t>(min_n, static_cast<int64_t>(s.size()));
    max_n = std::max<int64_t>(max_n, static_cast<int64_t>(s.size()));
    for (int e : s) ++counts[e];
  }
  ASSERT_LT(min_n, max_n) << "the case should select different k per token";
  EXPECT_EQ(r.n_active, n_sel);
  EXPECT_DOUBLE_EQ(f.stats.mean_k, static_cast<double>(n_sel) / 41.0);
  EXPECT_EQ(f.stats.routed_per_expert, counts);
  EXPECT_EQ(f.stats.tokens_per_expert, counts);  // dropless: every selected one computed
  EXPECT_EQ(f.stats.dropped, 0);
  // aux = α · E / (k̄ · T) · Σ_e c_e · P_e with k̄ the mean k (f_e = c_e / selected assignments).
  const std::vector<double> s = r.scores.to_vector();
  double sum = 0;
  for (int64_t e = 0; e < 8; ++e) {
    double P = 0;
    for (int64_t t = 0; t < 41; ++t) P += s[t * 8 + e];
    sum += static_cast<double>(counts[e]) * P / 41.0;
  }
  EXPECT_NEAR(f.stats.aux_loss, 8.0 / static_cast<double>(n_sel) * sum, 1e-12);
  EXPECT_NEAR(balance_losses(c, r, nullptr).aux, f.stats.aux_loss, 1e-12);
  // The f32 CPU path selects the same experts.
  MoELayer cpu(c, DType::F32, kernels::Backend::Cpu);
  cpu.params().router_w.copy_from(layer.params().router_w);
  const MoEForward fc = cpu.forward(x.to(DType::F32));
  EXPECT_EQ(fc.stats.routed_per_expert, counts);
  EXPECT_NEAR(fc.stats.aux_loss, f.stats.aux_loss, 1e-5);
}

TEST(RouterTopP, CapacityCountsOnlySelectedExperts) {
  // Every token selects only its best expert (p tiny), all on expert 2: with capacity C the first C
  // tokens are kept; the unselected candidates take no capacity and are not "dropped".
  MoEConfig c = top_p_config(4, 3, 1e-9);
  c.router.capacity_factor = 1.0;  // C = ceil(1.0 · T · k / E) = ceil(6 · 3 / 4) = 5
  const Tensor l = logits_of(std::vector<std::vector<double>>(6, {0.1, 0.1, 0.7, 0.1}));
  const Routing r = route(c, l, Tensor(), nullptr, kernels::Backend::Ref);
  EXPECT_EQ(r.capacity, 5);
  int kept = 0;
  for (int64_t a = 0; a < r.n_assign; ++a) kept += r.kept.data<uint8_t>()[a];
  EXPECT_EQ(kept, 5);
  EXPECT_EQ(r.n_active, 6);
}

TEST(RouterTopP, EntropyLossAndGradient) {
  MoEConfig c = small_config(8, 6, 4, 2);
  c.balance.entropy_coef = 0.5;
  const Tensor l = logits_of({{0.25, 0.25, 0.25, 0.25}, {0.7, 0.1, 0.1, 0.1}});
  const Routing r = route(c, l, Tensor(), nullptr, kernels::Backend::Ref);
  std::vector<double> dl(8, 0.0);
  const BalanceLosses b = balance_losses(c, r, dl.data());
  const double h0 = std::log(4.0), h1 = -(0.7 * std::log(0.7) + 3 * 0.1 * std::log(0.1));
  EXPECT_NEAR(b.entropy, 0.5 * (h0 + h1) / 2, 1e-12);
  // The uniform row is a maximum of the entropy: zero gradient there.
  for (int e = 0; e < 4; ++e) EXPECT_NEAR(dl[e], 0.0, 1e-12);
  // Finite differences on the second row's logits.
  for (int e = 0; e < 4; ++e) {
    Tensor lp = l.clone(), lm = l.clone();
    lp.set(4 + e, l.get(4 + e) + 1e-6);
    lm.set(4 + e, l.get(4 + e) - 1e-6);
    const double fd =
        (balance_losses(c, route(c, lp, Tensor(), nullptr, kernels::Backend::Ref), nullptr).entropy -
         balance_losses(c, route(c, lm, Tensor(), nullptr, kernels::Backend::Ref), nullptr).entropy) /
        2e-6;
    EXPECT_NEAR(dl[4 + e], fd, 1e-8) << "e = " << e;
  }
}

TEST(RouterTopP, ConfigErrorsAndJson) {
  MoEConfig c = top_p_config(4, 2, 1.5);
  EXPECT_THROW(c.validate(), Error);
  c = top_p_config(4, 2, 0.5);
  c.router.score = ScoreFn::Sigmoid;
  try {
    c.validate();
    FAIL() << "sigmoid scores with top_p accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("softmax"), std::string::npos) << e.what();
  }
  c = top_p_config(4, 2, 0.5);
  c.router.min_k = 3;
  EXPECT_THROW(c.validate(), Error);
  c = top_p_config(4, 2, 0.5);
  c.router.routing = RouterType::ExpertChoice;
  EXPECT_THROW(c.validate(), Error);
  c = top_p_config(4, 3, 0.7);
  c.router.min_k = 2;
  c.balance.entropy_coef = 0.01;
  const MoEConfig back = moe_config_from_json(to_json(c));
  EXPECT_EQ(back.router.top_p, 0.7);
  EXPECT_EQ(back.router.min_k, 2);
  EXPECT_EQ(back.balance.entropy_coef, 0.01);
  // The inference switch refuses a router it cannot apply to, and leaves the layer as it was.
  MoEConfig sig = small_config();
  sig.router.score = ScoreFn::Sigmoid;
  MoELayer layer(sig);
  EXPECT_THROW(layer.set_router_top_p(0.5), Error);
  EXPECT_EQ(layer.config().router.top_p, 0.0);
}

}  // namespace
}  // namespace moe::testing
