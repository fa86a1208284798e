// Expert usage calibration and expert pruning: usage counts and weights add up, the usage JSON
// round-trips and rejects bad files, and a pruned model computes what the original computes with
// the dropped experts masked out of the router (exact for renormalised softmax and for sigmoid
// routing, up to f64 rounding), also after a save and load.
#include <gtest/gtest.h>

#include <unistd.h>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "model_testutil.h"
#include "moe/core/error.h"
#include "moe/infer/calibrate.h"
#include "moe/model/prune.h"
#include "moe/model/transformer.h"

namespace fs = std::filesystem;
using namespace moe;
using namespace moe::model;
using moe::model::testing::random_tokens;
using moe::model::testing::tiny_config;

namespace {

struct TmpDir {
  fs::path p;
  explicit TmpDir(const std::string& name)
      : p(fs::temp_directory_path() / (name + "_" + std::to_string(::getpid()))) {
    fs::remove_all(p);
    fs::create_directories(p);
  }
  ~TmpDir() { fs::remove_all(p); }
};

std::string moe_prefix(const ModelConfig& c, int64_t l) {
  return cat("model.layers.", l, ".", c.arch == Arch::Mixtral ? "block_sparse_moe" : "mlp");
}

// A model of config c in f64 whose weights are f32 values (so f32 checkpoints hold them exactly),
// with a random selection bias where the router has one.
Transformer f32_exact_model(const ModelConfig& c, uint64_t seed) {
  Transformer m(c, DType::F64);
  m.init_params(seed);
  std::map<std::string, Tensor> sd = m.hf_state_dict();  // f32
  const Rng r(seed + 1);
  for (auto& [name, t] : sd)
    if (name.find("e_score_correction_bias") != std::string::npos)
      r.fork(name.size()).fill_normal(t, 0.0, 0.1);
  m.load_hf_state_dict(sd);
  return m;
}

double max_rel_diff(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(a.shape(), b.shape());
  double num = 0, den = 1e-300;
  for (int64_t i = 0; i < a.numel(); ++i) {
    const double x = a.get(i), y = b.get(i);
    if (std::isnan(x) || std::isnan(y)) return INFINITY;
    num = std::max(num, std::abs(x - y));
    den = std::max(den, std::abs(y));
  }
  return num / den;
}

// ---- calibration ----

TEST(Calibrate, CountsAndWeightsAddUp) {
  for (Arch arch : {Arch::Mixtral, Arch::Qwen3Moe, Arch::DeepseekV3}) {
    SCOPED_TRACE(arch_name(arch));
    const ModelConfig c = tiny_config(arch);
    Transformer m(c);
    m.init_params(3);
    const std::vector<int32_t> tok = random_tokens(37, c.vocab_size, 4);
    const infer::ExpertUsage u = infer::measure_expert_usage(m, tok, 8);  // 4 full windows + 5
    EXPECT_EQ(u.tokens, 37);
    int64_t n_moe = 0;
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) n_moe += c.is_moe_layer(l) ? 1 : 0;
    ASSERT_EQ(static_cast<int64_t>(u.layers.size()), n_moe);
    // Every architecture here renormalises the top-k weights, times the routed scaling factor.
    const double per_token = arch == Arch::DeepseekV3 ? c.routed_scaling_factor : 1.0;
    for (const infer::LayerUsage& l : u.layers) {
      EXPECT_TRUE(c.is_moe_layer(l.layer));
      ASSERT_EQ(static_cast<int64_t>(l.count.size()), c.num_experts);
      int64_t n = 0;
      double w = 0;
      for (int64_t e = 0; e < c.num_experts; ++e) n += l.count[e], w += l.weight[e];
      EXPECT_EQ(n, 37 * c.num_experts_per_tok);
      EXPECT_NEAR(w, 37 * per_token, 1e-5 * 37 * per_token);  // f32 weights
    }
  }
}

TEST(Calibrate, OneWindowEqualsTheForwardStatistics) {
  const ModelConfig c = tiny_config(Arch::Mixtral);
  Transformer m(c);
  m.init_params(5);
  const std::vector<int32_t> tok = random_tokens(12, c.vocab_size, 6);
  const infer::ExpertUsage u = infer::measure_expert_usage(m, tok, 12);
  std::vector<int32_t> tgt(12, -1);
  const StepResult r = m.evaluate(tok.data(), tgt.data(), 1, 12);
  ASSERT_EQ(r.stats.size(), u.layers.size());
  for (size_t i = 0; i < r.stats.size(); ++i) {
    EXPECT_EQ(u.layers[i].count, r.stats[i].routed_per_expert);
    EXPECT_EQ(u.layers[i].weight, r.stats[i].routed_weight_per_expert);
  }
}

TEST(Calibrate, BadInputIsAnError) {
  const ModelConfig c = tiny_config(Arch::Mixtral);
  Transformer m(c);
  m.init_params(7);
  EXPECT_THROW(infer::measure_expert_usage(m, {}, 8), Error);
  EXPECT_THROW(infer::measure_expert_usage(m, {1, 2, static_cast<int32_t>(c.vocab_size)}, 8), Error);
  EXPECT_THROW(infer::measure_expert_usage(m, {1, 2}, 0), Error);
  EXPECT_THROW(infer::measure_expert_usage(m, {1, 2}, c.max_position_embeddings + 1), Error);
}

TEST(Calibrate, JsonRoundTrip) {
  TmpDir d("moe_calib_json");
  infer::ExpertUsage u;
  u.tokens = 42;
  u.layers.push_back({1, {3, 0, 5}, {0.25, 0.0, 1.0 / 3.0}});
  u.layers.push_back({4, {1, 7, 0}, {1e-17, 6.5, 0.0}});
  const std::string p = (d.p / "usage.json").string();
  infer::save_expert_usage(u, p);
  const infer::ExpertUsage b = infer::load_expert_usage(p);
  EXPECT_EQ(b.tokens, 42);
  ASSERT_EQ(b.layers.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(b.layers[i].layer, u.layers[i].layer);
    EXPECT_EQ(b.layers[i].count, u.layers[i].count);
    EXPECT_EQ(b.layers[i].weight, u.layers[i].weight);  // doubles are written round-trip exact
  }
}

TEST(Calibrate, BadJsonFilesAreErrorsNamingTheFile) {
  TmpDir d("moe_calib_bad");
  auto write = [&](const std::string& name, const std::string& text) {
    std::ofstream((d.p / name).string()) << text;
    return (d.p / name).string();
  };
  const std::vector<std::string> bad = {
      write("truncated.json", R"({"tokens": 3, "layers": [{"layer": 0, "count": [1)"),
      write("no_layers.json", R"({"tokens": 3})"),
      write("array.json", R"([1, 2])"),
      write("lengths.json", R"({"tokens": 3, "layers": [{"layer": 0, "count": [1, 2], "weight": [0.5]}]})"),
      write("negative.json", R"({"tokens": 3, "layers": [{"layer": 0, "count": [-1], "weight": [0.5]}]})"),
      write("type.json", R"({"tokens": 3, "layers": [{"layer": 0, "count": ["a"], "weight": [0.5]}]})"),
      write("order.json", R"({"tokens": 3, "layers": [{"layer": 2, "count": [1], "weight": [1]},
                                                       {"layer": 1, "count": [1], "weight": [1]}]})"),
      (d.p / "missing.json").string()};
  for (const std::string& p : bad) {
    SCOPED_TRACE(p);
    try {
      infer::load_expert_usage(p);
      ADD_FAILURE() << "no error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(fs::path(p).filename().string()), std::string::npos) << e.what();
    }
  }
}

// ---- pruning ----

// Prunes m to `keep` experts per layer on calibration tokens; checks the pruned model against the
// original whose router cannot select the dropped experts (selection bias -inf), which is the
// router with their logits set to -inf before top-k when the weights are renormalised (softmax) or
// do not depend on the other experts (sigmoid).
void check_prune_equivalence(const ModelConfig& c, int64_t keep, bool expect_groups_reset) {
  const Transformer m = f32_exact_model(c, 11);
  const std::vector<int32_t> calib = random_tokens(50, c.vocab_size, 12);
  const infer::ExpertUsage u = infer::measure_expert_usage(m, calib, 16);
  const PrunePlan plan = plan_prune(c, u, keep);
  EXPECT_EQ(plan.groups_reset, expect_groups_reset);
  EXPECT_EQ(plan.config.num_experts, keep);
  const Transformer p = prune_experts(m, plan);
  EXPECT_EQ(p.dtype(), DType::F64);

  // Reference: the original with a selection bias of -inf on dropped experts (kept: unchanged).
  ModelConfig rc = c;
  rc.router_extra.use_bias = true;
  rc.has_extra = true;
  Transformer ref(rc, DType::F64);
  std::map<std::string, Tensor> sd = m.hf_state_dict();
  for (const LayerPrune& lp : plan.layers) {
    EXPECT_EQ(static_cast<int64_t>(lp.kept.size()), keep);
    EXPECT_TRUE(std::is_sorted(lp.kept.begin(), lp.kept.end()));
    EXPECT_GT(lp.weight_share, 0.0);
    EXPECT_LE(lp.weight_share, 1.0);
    const std::string name = moe_prefix(c, lp.layer) + ".gate.e_score_correction_bias";
    std::vector<double> b(static_cast<size_t>(c.num_experts), -std::numeric_limits<double>::infinity());
    const std::vector<double> orig =
        sd.count(name) ? sd[name].to_vector() : std::vector<double>(b.size(), 0.0);
    for (int64_t e : lp.kept) b[e] = orig[e];
    sd[name] = Tensor::from(b, {c.num_experts}, DType::F32);
    // The pruned router rows are the kept rows of the original, in order.
    const Tensor& w0 = m.moe_layer(lp.layer)->params().router_w;
    const Tensor& w1 = p.moe_layer(lp.layer)->params().router_w;
    for (int64_t j = 0; j < keep; ++j)
      for (int64_t i = 0; i < c.hidden_size; ++i)
        EXPECT_EQ(w1.get(j * c.hidden_size + i), w0.get(lp.kept[j] * c.hidden_size + i));
  }
  ref.load_hf_state_dict(sd);

  const std::vector<int32_t> tok = random_tokens(24, c.vocab_size, 13);
  const Tensor lp = p.logits(tok.data(), 2, 12), lr = ref.logits(tok.data(), 2, 12);
  EXPECT_LT(max_rel_diff(lp, lr), 1e-12);                          // f64: the two compute the same function
  EXPECT_GT(max_rel_diff(lp, m.logits(tok.data(), 2, 12)), 1e-6);  // and pruning changed something

  // Checkpoint round trip: the expert-count key of config.json and the same logits.
  TmpDir d(cat("moe_prune_", arch_name(c.arch)));
  save_pretrained(p, d.p.string());
  nlohmann::json j = nlohmann::json::parse(std::ifstream((d.p / "config.json").string()));
  const char* key = c.arch == Arch::Mixtral      ? "num_local_experts"
                    : c.arch == Arch::DeepseekV3 ? "n_routed_experts"
                                                 : "num_experts";
  EXPECT_EQ(j[key].get<int64_t>(), keep);
  const Transformer back = load_pretrained(d.p.string(), DType::F64);
  EXPECT_EQ(max_rel_diff(back.logits(tok.data(), 2, 12), lp), 0.0);
}

TEST(Prune, MixtralEqualsTheMaskedRouter) {
  ModelConfig c = tiny_config(Arch::Mixtral);
  c.num_experts = 6;
  check_prune_equivalence(c, 3, false);
  check_prune_equivalence(c, 2, false);  // K = top-k
}

TEST(Prune, Qwen3MoeEqualsTheMaskedRouter) {
  ModelConfig c = tiny_config(Arch::Qwen3Moe);  // norm_topk_prob, one dense layer
  c.num_experts = 5;
  check_prune_equivalence(c, 4, false);
}

TEST(Prune, Qwen2MoeWithSharedExpertEqualsTheMaskedRouter) {
  ModelConfig c = tiny_config(Arch::Qwen2Moe);
  c.norm_topk_prob = true;
  check_prune_equivalence(c, 3, false);
}

TEST(Prune, DeepseekV3KeepsGroupsWhenTheyDivideK) {
  ModelConfig c = tiny_config(Arch::DeepseekV3);
  c.num_experts = 8;  // 2 groups of 4, best 1 group eligible, top-2
  check_prune_equivalence(c, 4, false);
  const Transformer m = f32_exact_model(c, 21);
  const infer::ExpertUsage u = infer::measure_expert_usage(m, random_tokens(40, c.vocab_size, 22), 16);
  const PrunePlan g = plan_prune(c, u, 4);
  for (const LayerPrune& lp : g.layers) {  // 2 from each group
    ASSERT_EQ(lp.kept.size(), 4u);
    EXPECT_LT(lp.kept[1], 4);
    EXPECT_GE(lp.kept[2], 4);
  }
  EXPECT_EQ(g.config.n_group, 2);
  // 6 = 2 groups of 3 also works; 3 and 5 experts cannot be split evenly: no groups.
  EXPECT_FALSE(plan_prune(c, u, 6).groups_reset);
  for (int64_t k : {3, 5}) {
    const PrunePlan r = plan_prune(c, u, k);
    EXPECT_TRUE(r.groups_reset);
    EXPECT_EQ(r.config.n_group, 1);
    EXPECT_EQ(r.config.topk_group, 1);
    const Transformer p = prune_experts(m, r);
    const std::vector<int32_t> tok = random_tokens(10, c.vocab_size, 23);
    const Tensor l = p.logits(tok.data(), 1, 10);
    for (int64_t i = 0; i < l.numel(); ++i) ASSERT_TRUE(std::isfinite(l.get(i)));
  }
}

TEST(Prune, ScoreIsTheWeightShareWithTiesByCountThenIndex) {
  ModelConfig c = tiny_config(Arch::Mixtral);
  c.num_hidden_layers = 1;
  c.num_experts = 5;
  infer::ExpertUsage u;
  u.tokens = 10;
  // weights: e1 = e3 = e4 (tie), e3 and e4 with the same count (tie to the index), e0 largest.
  u.layers.push_back({0, {4, 2, 1, 5, 5}, {4.0, 1.0, 0.5, 1.0, 1.0}});
  EXPECT_EQ(plan_prune(c, u, 2).layers[0].kept, (std::vector<int64_t>{0, 3}));
  EXPECT_EQ(plan_prune(c, u, 3).layers[0].kept, (std::vector<int64_t>{0, 3, 4}));
  EXPECT_EQ(plan_prune(c, u, 4).layers[0].kept, (std::vector<int64_t>{0, 1, 3, 4}));
  const LayerPrune l = plan_prune(c, u, 2).layers[0];
  EXPECT_DOUBLE_EQ(l.weight_share, 5.0 / 7.5);
  EXPECT_DOUBLE_EQ(l.count_share, 9.0 / 17.0);
}

TEST(Prune, BadRequestsAreErrors) {
  const ModelConfig c = tiny_config(Arch::Mixtral);  // 4 experts, top-2, 2 MoE layers
  Transformer m(c);
  m.init_params(31);
  const infer::ExpertUsage u = infer::measure_expert_usage(m, random_tokens(20, c.vocab_size, 32), 8);
  EXPECT_THROW(plan_prune(c, u, 4), Error);  // K = E: nothing pruned
  EXPECT_THROW(plan_prune(c, u, 9), Error);
  EXPECT_THROW(plan_prune(c, u, 1), Error);  // below top-k
  infer::ExpertUsage short_u = u;
  short_u.layers.pop_back();
  EXPECT_THROW(plan_prune(c, short_u, 3), Error);
  infer::ExpertUsage wide = u;
  wide.layers[0].count.push_back(0), wide.layers[0].weight.push_back(0);
  EXPECT_THROW(plan_prune(c, wide, 3), Error);
  ModelConfig hash = c;
  hash.router_extra.routing = RouterType::Hash;
  EXPECT_THROW(plan_prune(hash, u, 3), Error);
  // A plan for another model.
  ModelConfig other = c;
  other.num_hidden_layers = 3;
  Transformer m3(other);
  m3.init_params(33);
  EXPECT_THROW(prune_experts(m3, plan_prune(c, u, 3)), Error);
}

}  // namespace
