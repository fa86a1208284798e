// Expert merging: the assignment solver against brute force, hidden-unit alignment recovering a
// known permutation, experts that are permutations of each other merging into exactly that expert,
// usage-weighted averages of weights and router rows, group-limited routing keeping groups, the
// calibration pass (rows sampled, usage unchanged, executors removed) and bad requests as errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "model/assignment.h"
#include "model_testutil.h"
#include "moe/core/error.h"
#include "moe/infer/calibrate.h"
#include "moe/infer/merge_calibrate.h"
#include "moe/model/merge.h"
#include "moe/model/prune.h"
#include "moe/model/transformer.h"

using namespace moe;
using namespace moe::model;
using moe::model::testing::random_tokens;
using moe::model::testing::tiny_config;

namespace {

// The least cost over all permutations, by enumeration.
double brute_force_cost(const std::vector<double>& cost, int64_t n) {
  std::vector<int64_t> p(static_cast<size_t>(n));
  std::iota(p.begin(), p.end(), 0);
  double best = INFINITY;
  do best = std::min(best, assignment_cost(cost, n, p));
  while (std::next_permutation(p.begin(), p.end()));
  return best;
}

// The message of the moe::Error that f throws ("" when it throws none).
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// A model of config c in f64 whose weights are f32 values (so that shares like 0.75 and 0.25 scale
// them exactly).
Transformer f32_valued_model(const ModelConfig& c, uint64_t seed) {
  Transformer m(c, DType::F64);
  m.init_params(seed);
  m.load_hf_state_dict(m.hf_state_dict());  // hf_state_dict() is f32
  return m;
}

// Expert `dst` of layer ml becomes expert `src` with its hidden units permuted (unit i of dst = unit
// perm[i] of src) and scaled by `scale`; its router row becomes src's.
void set_permuted_expert(MoELayer& ml, int64_t src, int64_t dst, const std::vector<int64_t>& perm,
                         double scale) {
  MoEParams& p = ml.params();
  const int64_t F = ml.config().d_ff, d = ml.config().d_model;
  for (int64_t i = 0; i < F; ++i)
    for (int64_t k = 0; k < d; ++k) {
      p.w_gate.set((dst * F + i) * d + k, scale * p.w_gate.get((src * F + perm[i]) * d + k));
      p.w_up.set((dst * F + i) * d + k, scale * p.w_up.get((src * F + perm[i]) * d + k));
      p.w_down.set((dst * d + k) * F + i, scale * p.w_down.get((src * d + k) * F + perm[i]));
    }
  for (int64_t k = 0; k < d; ++k) p.router_w.set(dst * d + k, p.router_w.get(src * d + k));
}

std::vector<int64_t> random_perm(int64_t n, uint64_t seed) {
  std::vector<int64_t> p(static_cast<size_t>(n));
  std::iota(p.begin(), p.end(), 0);
  std::mt19937_64 g(seed);
  std::shuffle(p.begin(), p.end(), g);
  return p;
}

std::vector<LayerRows> random_rows(const Transformer& m, int64_t n, uint64_t seed) {
  std::vector<LayerRows> out;
  std::mt19937_64 g(seed);
  std::normal_distribution<float> nd;
  for (int64_t l = 0; l < m.config().num_hidden_layers; ++l) {
    if (!m.moe_layer(l)) continue;
    LayerRows r{.layer = l, .n = n, .d = m.config().hidden_size, .x = {}};
    for (int64_t i = 0; i < n * r.d; ++i) r.x.push_back(nd(g));
    out.push_back(std::move(r));
  }
  return out;
}

ExpertUsage usage_of(const Transformer& m, const std::vector<double>& weight) {
  ExpertUsage u;
  u.tokens = 10;
  for (int64_t l = 0; l < m.config().num_hidden_layers; ++l)
    if (m.moe_layer(l)) u.layers.push_back({l, std::vector<int64_t>(weight.size(), 1), weight});
  return u;
}

// Expert e of a stacked (E, a, b) tensor as a vector.
std::vector<double> expert_values(const Tensor& t, int64_t e) { return t.slice(0, e, e + 1).to_vector(); }

// ---- the assignment solver ----

TEST(Assignment, EqualsBruteForceOnRandomMatrices) {
  std::mt19937_64 g(7);
  for (int64_t n = 1; n <= 7; ++n)
    for (int trial = 0; trial < 40; ++trial) {
      SCOPED_TRACE(::testing::Message() << "n = " << n << ", trial " << trial);
      std::vector<double> cost(static_cast<size_t>(n * n));
      // Half the trials on small integers (many ties), half on reals of both signs.
      for (double& c : cost)
        c = trial % 2 ? std::uniform_real_distribution<double>(-5, 5)(g)
                      : static_cast<double>(std::uniform_int_distribution<int>(0, 3)(g));
      const std::vector<int64_t> col = solve_assignment(cost, n);
      std::vector<int64_t> sorted = col;
      std::sort(sorted.begin(), sorted.end());
      for (int64_t i = 0; i < n; ++i) ASSERT_EQ(sorted[i], i);  // a permutation
      EXPECT_NEAR(assignment_cost(cost, n, col), brute_force_cost(cost, n), 1e-9);
    }
}

TEST(Assignment, EdgeCasesAndBadInput) {
  EXPECT_TRUE(solve_assignment({}, 0).empty());
  EXPECT_EQ(solve_assignment({0, 1, 1, 0}, 2), (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(solve_assignment({1, 0, 0, 1}, 2), (std::vector<int64_t>{1, 0}));
  EXPECT_NE(error_of([] { solve_assignment({1, 2, 3}, 2); }).find("expected 2 x 2"), std::string::npos);
  EXPECT_NE(error_of([] { solve_assignment({1, NAN, 3, 4}, 2); }).find("(0, 1)"), std::string::npos);
}

// ---- alignment and merging ----

TEST(Merge, AlignmentRecoversAPermutation) {
  const ModelConfig c = tiny_config(Arch::Mixtral);
  Transformer m = f32_valued_model(c, 5);
  MoELayer& ml = *m.mutable_moe_layer(0);
  const int64_t F = ml.config().d_ff;
  const std::vector<int64_t> perm = random_perm(F, 11);
  set_permuted_expert(ml, 0, 1, perm, 1.0);
  // Unit i of expert 0 is unit q[i] of expert 1, where perm[q[i]] = i.
  const std::vector<int64_t> q = align_units(ml, 0, 1);
  for (int64_t i = 0; i < F; ++i) EXPECT_EQ(perm[q[i]], i);
  std::vector<int64_t> identity(static_cast<size_t>(F));
  std::iota(identity.begin(), identity.end(), 0);
  EXPECT_EQ(align_units(ml, 2, 2), identity);  // an expert with itself
}

// The test: experts that are permutations of each other merge into one exact expert.
TEST(Merge, PermutedExpertsMergeIntoExactlyThatExpert) {
  ModelConfig c = tiny_config(Arch::Mixtral);  // 4 experts, top-2, 2 MoE layers
  Transformer m = f32_valued_model(c, 21);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    MoELayer& ml = *m.mutable_moe_layer(l);
    set_permuted_expert(ml, 0, 1, random_perm(ml.config().d_ff, 100 + l), 1.0);
    set_permuted_expert(ml, 2, 3, random_perm(ml.config().d_ff, 200 + l), 1.0);
  }
  // Pivots 0 and 2 (the largest weights); shares 0.75 / 0.25 in both groups.
  const ExpertUsage u = usage_of(m, {3.0, 1.0, 1.5, 0.5});
  const MergePlan plan = plan_merge(m, u, random_rows(m, 40, 3), 2);
  ASSERT_EQ(plan.layers.size(), 2u);
  for (const LayerMerge& lm : plan.layers) {
    EXPECT_EQ(lm.groups, (std::vector<std::vector<int64_t>>{{0, 1}, {2, 3}}));
    EXPECT_DOUBLE_EQ(lm.shares[0][0], 0.75);
    EXPECT_DOUBLE_EQ(lm.shares[0][1], 0.25);
    EXPECT_DOUBLE_EQ(lm.shares[1][0], 0.75);
    EXPECT_DOUBLE_EQ(lm.shares[1][1], 0.25);
    EXPECT_NEAR(lm.similarity[1], 1.0, 1e-5);  // same outputs, same router column
    EXPECT_NEAR(lm.similarity[3], 1.0, 1e-5);
  }
  const Transformer merged = merge_experts(m, plan);
  EXPECT_EQ(merged.config().num_experts, 2);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const MoEParams& a = m.moe_layer(l)->params();
    const MoEParams& b = merged.moe_layer(l)->params();
    for (int64_t j = 0; j < 2; ++j) {
      const int64_t pivot = 2 * j;
      EXPECT_EQ(expert_values(b.w_gate, j), expert_values(a.w_gate, pivot))
          << "layer " << l << " expert " << j;
      EXPECT_EQ(expert_values(b.w_up, j), expert_values(a.w_up, pivot));
      EXPECT_EQ(expert_values(b.w_down, j), expert_values(a.w_down, pivot));
      EXPECT_EQ(expert_values(b.router_w, j), expert_values(a.router_w, pivot));
    }
  }
}

TEST(Merge, RefitKeepsAnExactMergeExact) {
  // Members that are permutations of their pivot: the merged gate and up are the pivot's, every
  // member's output is the pivot's, so the refit's least squares has its zero at the pivot's down.
  ModelConfig c = tiny_config(Arch::Mixtral);
  Transformer m = f32_valued_model(c, 23);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    MoELayer& ml = *m.mutable_moe_layer(l);
    set_permuted_expert(ml, 0, 1, random_perm(ml.config().d_ff, 110 + l), 1.0);
    set_permuted_expert(ml, 2, 3, random_perm(ml.config().d_ff, 210 + l), 1.0);
  }
  MergeOptions o;
  o.refit_damping = 0.1;
  const std::vector<LayerRows> rows = random_rows(m, 60, 5);
  const MergePlan plan = plan_merge(m, usage_of(m, {3.0, 1.0, 1.5, 0.5}), rows, 2, o);
  const Transformer merged = merge_experts(m, plan, &rows);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l)
    for (int64_t j = 0; j < 2; ++j) {
      const std::vector<double> a = expert_values(m.moe_layer(l)->params().w_down, 2 * j);
      const std::vector<double> b = expert_values(merged.moe_layer(l)->params().w_down, j);
      for (size_t i = 0; i < a.size(); ++i)
        ASSERT_NEAR(b[i], a[i], 1e-9 * (1 + std::fabs(a[i]))) << l << " " << j;
    }
  EXPECT_NE(error_of([&] { merge_experts(m, plan); }), "");  // a refit without rows
}

TEST(Merge, RefitLowersTheMembersOutputError) {
  // Random experts: on the calibration rows, Σ_a w_a |f_merged(x_a) − f_e(x_a)|² over the
  // assignments to a group's members is lower after the refit than for the plain average.
  const ModelConfig c = tiny_config(Arch::Mixtral);
  const Transformer m = f32_valued_model(c, 41);
  const std::vector<LayerRows> rows = random_rows(m, 200, 9);
  MergeOptions o;
  const MergePlan plain_plan = plan_merge(m, usage_of(m, {3.0, 1.0, 1.5, 0.5}), rows, 2, o);
  o.refit_damping = 0.01;
  const MergePlan refit_plan = plan_merge(m, usage_of(m, {3.0, 1.0, 1.5, 0.5}), rows, 2, o);
  const Transformer plain = merge_experts(m, plain_plan), refit = merge_experts(m, refit_plan, &rows);
  // f(x) of expert e of a layer's (E, F, d) / (E, d, F) tensors, SwiGLU, in double.
  auto ffn = [](const MoEParams& p, int64_t e, const float* x, int64_t d, int64_t F) {
    const std::vector<double> g = expert_values(p.w_gate, e), u = expert_values(p.w_up, e),
                              dn = expert_values(p.w_down, e);
    std::vector<double> h(static_cast<size_t>(F)), y(static_cast<size_t>(d), 0.0);
    for (int64_t i = 0; i < F; ++i) {
      double a = 0, b = 0;
      for (int64_t k = 0; k < d; ++k) a += g[i * d + k] * x[k], b += u[i * d + k] * x[k];
      h[i] = a / (1 + std::exp(-a)) * b;
    }
    for (int64_t k = 0; k < d; ++k)
      for (int64_t i = 0; i < F; ++i) y[k] += dn[k * F + i] * h[i];
    return y;
  };
  for (size_t li = 0; li < rows.size(); ++li) {
    const int64_t l = rows[li].layer, d = c.hidden_size, F = m.moe_layer(l)->config().d_ff;
    const MoEParams& p = m.moe_layer(l)->params();
    const Tensor x =
        Tensor::from(std::vector<double>(rows[li].x.begin(), rows[li].x.end()), {rows[li].n, d}, DType::F64);
    const Routing r = m.moe_layer(l)->forward(x, {}).routing;  // the original router's choices
    double err_plain = 0, err_refit = 0;
    for (int64_t a = 0; a < r.n_assign; ++a) {
      const int64_t e = r.expert.data<int32_t>()[a], t = r.token.data<int32_t>()[a];
      const double w = r.weight.to(DType::F64).data<double>()[a];
      int64_t j = 0;
      for (; j < 2; ++j) {
        const std::vector<int64_t>& g = refit_plan.layers[li].groups[j];
        if (std::find(g.begin(), g.end(), e) != g.end()) break;
      }
      const float* xt = rows[li].x.data() + t * d;
      const std::vector<double> want = ffn(p, e, xt, d, F);
      const std::vector<double> a0 = ffn(plain.moe_layer(l)->params(), j, xt, d, F);
      const std::vector<double> a1 = ffn(refit.moe_layer(l)->params(), j, xt, d, F);
      for (int64_t k = 0; k < d; ++k) {
        err_plain += w * (a0[k] - want[k]) * (a0[k] - want[k]);
        err_refit += w * (a1[k] - want[k]) * (a1[k] - want[k]);
      }
    }
    EXPECT_LT(err_refit, 0.9 * err_plain) << "layer " << l;
  }
}

TEST(Merge, UsageSharesWeightTheAverageAndTheRouterRows) {
  const ModelConfig c = tiny_config(Arch::Mixtral);
  Transformer m = f32_valued_model(c, 31);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    MoELayer& ml = *m.mutable_moe_layer(l);
    set_permuted_expert(ml, 0, 1, random_perm(ml.config().d_ff, 300 + l), 2.0);  // expert 1 = 2 · P(expert 0)
  }
  const ExpertUsage u = usage_of(m, {3.0, 1.0, 2.0, 2.0});
  MergePlan plan;
  plan.config = plan_prune(c, u, 2).config;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l)
    plan.layers.push_back({.layer = l,
                           .groups = {{0, 1}, {2, 3}},
                           .shares = {{0.75, 0.25}, {0.5, 0.5}},
                           .similarity = {1, 1, 1, 1},
                           .weight_share = 0.5});
  for (MergeRouter router : {MergeRouter::Pivot, MergeRouter::Average}) {
    plan.options.router = router;
    const Transformer merged = merge_experts(m, plan);
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
      const MoEParams& a = m.moe_layer(l)->params();
      const MoEParams& b = merged.moe_layer(l)->params();
      // Group 0: aligned, 0.75 · W0 + 0.25 · 2 · W0 = 1.25 · W0 (exact for f32-valued W0).
      for (const auto& [from, to] :
           {std::pair{&a.w_gate, &b.w_gate}, {&a.w_up, &b.w_up}, {&a.w_down, &b.w_down}}) {
        const std::vector<double> w0 = expert_values(*from, 0), m0 = expert_values(*to, 0);
        for (size_t i = 0; i < w0.size(); ++i) ASSERT_EQ(m0[i], 1.25 * w0[i]);
      }
      // Router rows: the pivots', or 0.75 · r0 + 0.25 · r1 (= r0 here) and 0.5 · (r2 + r3).
      const std::vector<double> r0 = expert_values(a.router_w, 0), r2 = expert_values(a.router_w, 2),
                                r3 = expert_values(a.router_w, 3);
      EXPECT_EQ(expert_values(b.router_w, 0), r0);
      const std::vector<double> m1 = expert_values(b.router_w, 1);
      for (size_t k = 0; k < r2.size(); ++k)
        EXPECT_EQ(m1[k], router == MergeRouter::Pivot ? r2[k] : 0.5 * r2[k] + 0.5 * r3[k]);
    }
  }
  // Without alignment group 1 is the plain average 0.5 · (W2 + W3).
  plan.options.align = MergeAlign::None;
  const Transformer plain = merge_experts(m, plan);
  const MoEParams& a = m.moe_layer(0)->params();
  const std::vector<double> g2 = expert_values(a.w_gate, 2), g3 = expert_values(a.w_gate, 3);
  const std::vector<double> g = expert_values(plain.moe_layer(0)->params().w_gate, 1);
  for (size_t i = 0; i < g.size(); ++i) EXPECT_EQ(g[i], 0.5 * g2[i] + 0.5 * g3[i]);
}

TEST(Merge, SharesByUsageOrByUsageTimesSimilarity) {
  const ModelConfig c = tiny_config(Arch::Mixtral);  // 4 experts, top-2
  Transformer m(c);
  m.init_params(71);
  const ExpertUsage u = usage_of(m, {3.0, 1.0, 2.0, 0.5});  // pivots 0 and 2
  const std::vector<LayerRows> rows = random_rows(m, 30, 72);
  MergeOptions opt;
  const MergePlan by_usage = plan_merge(m, u, rows, 2, opt);
  opt.shares = MergeShares::UsageSimilarity;
  const MergePlan by_sim = plan_merge(m, u, rows, 2, opt);
  for (size_t i = 0; i < by_usage.layers.size(); ++i) {
    const LayerMerge &a = by_usage.layers[i], &b = by_sim.layers[i];
    ASSERT_EQ(a.groups, b.groups);
    for (size_t j = 0; j < a.groups.size(); ++j) {
      double wu = 0, ws = 0;
      for (int64_t e : a.groups[j])
        wu += u.layers[i].weight[e], ws += u.layers[i].weight[e] * std::max(0.0, a.similarity[e]);
      for (size_t k = 0; k < a.groups[j].size(); ++k) {
        const int64_t e = a.groups[j][k];
        EXPECT_NEAR(a.shares[j][k], u.layers[i].weight[e] / wu, 1e-15);
        EXPECT_NEAR(b.shares[j][k], u.layers[i].weight[e] * std::max(0.0, a.similarity[e]) / ws, 1e-15);
      }
    }
  }
}

TEST(Merge, GroupLimitedRoutingKeepsMembersInTheirGroup) {
  ModelConfig c = tiny_config(Arch::DeepseekV3);
  c.num_experts = 8;  // 2 groups of 4, top-2 of 1 group: K = 4 keeps the groups
  Transformer m(c);
  m.init_params(41);
  const ExpertUsage u = infer::measure_expert_usage(m, random_tokens(64, c.vocab_size, 42), 16);
  const MergePlan plan = plan_merge(m, u, random_rows(m, 50, 43), 4);
  ASSERT_FALSE(plan.groups_reset);
  for (const LayerMerge& lm : plan.layers) {
    ASSERT_EQ(lm.groups.size(), 4u);
    int64_t members = 0;
    for (const auto& g : lm.groups) {
      members += static_cast<int64_t>(g.size());
      for (int64_t e : g) EXPECT_EQ(e / 4, g[0] / 4) << "layer " << lm.layer;
      double s = 0;
      for (double x : lm.shares[&g - lm.groups.data()]) s += x;
      EXPECT_NEAR(s, 1.0, 1e-12);
    }
    EXPECT_EQ(members, 8);
  }
  const Transformer merged = merge_experts(m, plan);
  const std::vector<int32_t> tok = random_tokens(12, c.vocab_size, 44);
  const StepResult r = merged.evaluate(tok.data(), tok.data(), 1, 12);
  EXPECT_TRUE(std::isfinite(r.mean_loss()));
}

TEST(Merge, BadRequestsAreClearErrors) {
  const ModelConfig c = tiny_config(Arch::Mixtral);  // 4 experts, top-2, 2 MoE layers
  Transformer m(c);
  m.init_params(51);
  const ExpertUsage u = usage_of(m, {1, 2, 3, 4});
  const std::vector<LayerRows> rows = random_rows(m, 10, 52);
  EXPECT_NE(error_of([&] { plan_merge(m, u, rows, 4); }).find("must be below the model's 4 experts"),
            std::string::npos);
  EXPECT_NE(error_of([&] { plan_merge(m, u, rows, 9); }).find("must be below"), std::string::npos);
  EXPECT_NE(error_of([&] { plan_merge(m, u, rows, 1); }).find("below the experts per token"),
            std::string::npos);
  ModelConfig hash = c;
  hash.router_extra.routing = RouterType::Hash;
  Transformer mh(hash);
  EXPECT_NE(error_of([&] { plan_merge(mh, u, rows, 3); }).find("needs token_choice routing"),
            std::string::npos);
  std::vector<LayerRows> short_rows = rows;
  short_rows.pop_back();
  EXPECT_NE(error_of([&] { plan_merge(m, u, short_rows, 3); }).find("rows for 1 layers"), std::string::npos);
  std::vector<LayerRows> narrow = rows;
  narrow[0].d = 3;
  EXPECT_NE(error_of([&] { plan_merge(m, u, narrow, 3); }).find("d = 8"), std::string::npos);
  MergeOptions bad;
  bad.routing_weight = 1.5;
  EXPECT_NE(error_of([&] { plan_merge(m, u, rows, 3, bad); }).find("[0, 1]"), std::string::npos);
  // A plan for another model.
  ModelConfig other = c;
  other.num_hidden_layers = 3;
  Transformer m3(other);
  m3.init_params(53);
  EXPECT_THROW(merge_experts(m3, plan_merge(m, u, rows, 3)), Error);
}

// ---- calibration ----

TEST(MergeCalibration, SamplesRowsAndMeasuresTheSameUsage) {
  const ModelConfig c = tiny_config(Arch::Qwen3Moe);  // one MoE layer (layer 1)
  Transformer m(c);
  m.init_params(61);
  const std::vector<int32_t> tok = random_tokens(37, c.vocab_size, 62);
  const infer::ExpertUsage plain = infer::measure_expert_usage(m, tok, 8);
  const infer::MergeCalibration cal = infer::measure_merge_calibration(m, tok, 8, 10);
  ASSERT_EQ(cal.rows.size(), plain.layers.size());
  for (size_t i = 0; i < cal.rows.size(); ++i) {
    EXPECT_EQ(cal.rows[i].layer, plain.layers[i].layer);
    EXPECT_EQ(cal.rows[i].n, 10);  // tokens 0, 4, ..., 36
    EXPECT_EQ(cal.rows[i].d, c.hidden_size);
    EXPECT_EQ(static_cast<int64_t>(cal.rows[i].x.size()), 10 * c.hidden_size);
    EXPECT_EQ(cal.usage.layers[i].count, plain.layers[i].count);
    for (size_t e = 0; e < plain.layers[i].weight.size(); ++e)
      EXPECT_NEAR(cal.usage.layers[i].weight[e], plain.layers[i].weight[e], 1e-4);
    EXPECT_EQ(m.moe_layer(cal.rows[i].layer)->expert_executor(), nullptr);  // removed again
  }
  // The whole pass with the merge on top: the merged model runs.
  const Transformer merged = merge_experts(m, plan_merge(m, cal.usage, cal.rows, 3));
  EXPECT_EQ(merged.config().num_experts, 3);
  const StepResult r = merged.evaluate(tok.data(), tok.data(), 1, 16);
  EXPECT_TRUE(std::isfinite(r.mean_loss()));

  Transformer m64(c, DType::F64);
  m64.init_params(63);
  EXPECT_NE(error_of([&] { infer::measure_merge_calibration(m64, tok, 8, 10); }).find("must be f32"),
            std::string::npos);
  EXPECT_THROW(infer::measure_merge_calibration(m, tok, 8, 0), Error);
}

}  // namespace
