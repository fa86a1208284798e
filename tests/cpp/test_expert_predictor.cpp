// The expert predictor that prefetching uses: the fit recovers a planted rule and is deterministic;
// pre-gating's score is its linear map; the file round-trips and bad files are refused by name; the
// store records routing, uses a learned predictor (outputs unchanged) and refuses one of another
// model.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <numeric>

#include "model_testutil.h"
#include "moe/core/error.h"
#include "moe/core/rng.h"
#include "moe/infer/expert_predictor.h"
#include "moe/infer/expert_store.h"
#include "moe/model/safetensors.h"
#include "train_testutil.h"

namespace moe::infer {
namespace {

// Samples of L layers (one sequence) where layer l + 1 chooses the top-k of A_l x_l (a planted
// linear rule) and layer 0 of token t the top-k of A_0 x_{L-1} of token t - 1 (of its own x for the
// first token).
RoutingSamples planted(int64_t L, int64_t d, int64_t E, int64_t k, int64_t N, uint64_t seed) {
  const Rng rng(seed);
  uint64_t ctr = 0;
  RoutingSamples s;
  s.d = d;
  s.E = E;
  s.top_k = k;
  s.x.assign(static_cast<size_t>(L), std::vector<float>(static_cast<size_t>(N * d)));
  s.experts.assign(static_cast<size_t>(L), std::vector<int32_t>(static_cast<size_t>(N * k)));
  std::vector<std::vector<float>> A(static_cast<size_t>(L), std::vector<float>(static_cast<size_t>(E * d)));
  for (auto& a : A)
    for (float& v : a) v = static_cast<float>(rng.normal(ctr++));
  std::vector<float> sc(static_cast<size_t>(E));
  std::vector<int32_t> idx(static_cast<size_t>(E));
  for (int64_t l = 0; l < L; ++l)
    for (int64_t t = 0; t < N; ++t)
      for (int64_t i = 0; i < d; ++i) s.x[l][t * d + i] = static_cast<float>(rng.normal(ctr++));
  for (int64_t l = 0; l < L; ++l)
    for (int64_t t = 0; t < N; ++t) {
      const float* x = l > 0 ? &s.x[l - 1][t * d] : t > 0 ? &s.x[L - 1][(t - 1) * d] : &s.x[0][t * d];
      for (int64_t e = 0; e < E; ++e) {
        double acc = 0;
        for (int64_t i = 0; i < d; ++i) acc += A[l][e * d + i] * x[i];
        sc[e] = static_cast<float>(acc);
      }
      std::iota(idx.begin(), idx.end(), 0);
      std::partial_sort(idx.begin(), idx.begin() + k, idx.end(),
                        [&](int32_t a, int32_t b) { return sc[a] > sc[b]; });
      std::sort(idx.begin(), idx.begin() + k);
      for (int64_t j = 0; j < k; ++j) s.experts[l][t * k + j] = idx[j];
    }
  return s;
}

TEST(ExpertPredictorFit, RecoversAPlantedLinearRuleDeterministically) {
  // 5000 tokens: the first 4000 fit, the last 1000 measure
  const RoutingSamples all = planted(3, 12, 8, 2, 5000, 1);
  RoutingSamples train = all, test = all;
  for (auto& v : train.x) v.resize(4000 * 12);
  for (auto& v : train.experts) v.resize(4000 * 2);
  for (auto& v : test.x) v.erase(v.begin(), v.begin() + 4000 * 12);
  for (auto& v : test.experts) v.erase(v.begin(), v.begin() + 4000 * 2);
  PredictorFitOptions opt;
  opt.epochs = 20;
  opt.lr = 1e-2;
  const ExpertPredictor p = fit_expert_predictor(train, {0, 1, 2}, 2, opt);
  ASSERT_EQ(p.W.size(), 3u);
  for (const auto& w : p.W) ASSERT_EQ(w.size(), 2u);  // 0->1, 0->2; 1->2, 1->0'; 2->0', 2->1' (': next token)
  EXPECT_EQ(predicted_layer(2, 1, 3), 0);
  EXPECT_EQ(predicted_token_offset(2, 1, 3), 1);
  // the planted pairs, 1 layer ahead (into the next token for 2 -> 0)
  const std::vector<PredictorRecall> r = predictor_recall(p, test, 1, 2);
  ASSERT_EQ(r.size(), 3u);
  for (const PredictorRecall& x : r) EXPECT_GT(x.recall, 0.9) << x.li << " -> +" << x.dl;
  // chance is 2 of 8; the pairs 2 layers ahead carry no rule (their target depends on an input drawn
  // independently of the source) and stay low
  const std::vector<PredictorRecall> r2 = predictor_recall(p, test, 2, 2);
  ASSERT_EQ(r2.size(), 6u);
  for (const PredictorRecall& x : r2)
    if (x.dl == 2) {
      EXPECT_LT(x.recall, 0.5) << x.li << " -> +" << x.dl;
    }
  const ExpertPredictor again = fit_expert_predictor(train, {0, 1, 2}, 2, opt);
  EXPECT_EQ(again.W, p.W);
}

TEST(ExpertPredictorFit, NextTokenPairsNeedTheSequenceToGoOn) {
  RoutingSamples one = planted(2, 4, 4, 2, 60, 5);
  // every token its own sequence: nothing to fit into the next token
  RoutingSamples apart;
  for (int64_t t = 0; t < 60; ++t) {
    RoutingSamples u;
    u.d = 4, u.E = 4, u.top_k = 2;
    u.x.resize(2);
    u.experts.resize(2);
    for (int l = 0; l < 2; ++l) {
      u.x[l].assign(one.x[l].begin() + t * 4, one.x[l].begin() + (t + 1) * 4);
      u.experts[l].assign(one.experts[l].begin() + t * 2, one.experts[l].begin() + (t + 1) * 2);
    }
    apart.append(std::move(u), true, false);
  }
  ASSERT_EQ(apart.tokens(), 60);
  ASSERT_EQ(apart.seq_start.size(), 60u);
  EXPECT_EQ(apart.x, one.x);
  EXPECT_FALSE(apart.continues(0));
  EXPECT_TRUE(one.continues(0));
  EXPECT_FALSE(one.continues(59));
  const ExpertPredictor p = fit_expert_predictor(apart, {0, 1}, 2);
  EXPECT_TRUE(p.has(0, 1));   // 0 -> 1 within the token
  EXPECT_FALSE(p.has(0, 2));  // 0 -> 0 of the next token
  EXPECT_FALSE(p.has(1, 1));  // 1 -> 0 of the next token
  EXPECT_FALSE(p.has(1, 2));
  EXPECT_TRUE(predictor_recall(p, apart, 2, 2).size() == 1u);
  const ExpertPredictor q = fit_expert_predictor(one, {0, 1}, 2);
  EXPECT_TRUE(q.has(0, 2) && q.has(1, 1) && q.has(1, 2));
}

TEST(ExpertPredictorFit, BadSamplesAreRefused) {
  RoutingSamples s = planted(2, 4, 4, 2, 50, 3);
  EXPECT_THROW(fit_expert_predictor(s, {0}, 1), Error);  // 2 layers of samples, 1 layer named
  EXPECT_THROW(fit_expert_predictor(s, {0, 1}, 0), Error);
  RoutingSamples nan = s;
  nan.x[1][7] = std::nanf("");
  EXPECT_THROW(fit_expert_predictor(nan, {0, 1}, 1), Error);
  RoutingSamples ragged = s;
  ragged.x[1].resize(ragged.x[1].size() - 4);
  EXPECT_THROW(fit_expert_predictor(ragged, {0, 1}, 1), Error);
  PredictorFitOptions bad;
  bad.lr = -1;
  EXPECT_THROW(fit_expert_predictor(s, {0, 1}, 1, bad), Error);
}

class ExpertPredictorStoreTest : public train::testing::TempDirTest {
 protected:
  void SetUp() override {
    TempDirTest::SetUp();
    model::Transformer m(model::testing::offload_config());
    m.init_params(11);
    dir = file("model");
    model::save_pretrained(m, dir);
  }
  InferenceModel load(const ExpertStoreOptions& opt) {
    InferenceLoadOptions lo;
    lo.offload = true;
    lo.store = opt;
    return load_inference_model(dir, lo);
  }
  // Logits of a prompt then greedy decode steps.
  static std::vector<float> run(InferenceModel& im, int steps = 10) {
    std::vector<float> out;
    model::KVCache cache = im.model->new_cache(40);
    std::vector<int32_t> prompt = model::testing::random_tokens(6, 37, 5);
    Tensor l = im.model->decode(cache, prompt.data(), static_cast<int64_t>(prompt.size()));
    for (int step = 0; step < steps; ++step) {
      const float* p = l.data<float>();
      out.insert(out.end(), p, p + l.numel());
      int32_t next = static_cast<int32_t>(std::max_element(p, p + l.numel()) - p);
      l = im.model->decode(cache, &next, 1);
    }
    return out;
  }
  // Routing of 4 windows of 24 random tokens, every expert resident.
  RoutingSamples record() {
    ExpertStoreOptions o;
    o.prefetch = false;
    InferenceModel im = load(o);
    im.store->record_routing(true);
    for (int w = 0; w < 4; ++w) {
      std::vector<int32_t> toks = model::testing::random_tokens(24, 37, 100 + w);
      model::KVCache cache = im.model->new_cache(24);
      im.model->decode(cache, toks.data(), 24);
    }
    return im.store->take_routing();
  }
  std::string dir;
};

TEST_F(ExpertPredictorStoreTest, RecordedRoutingIsAlignedAndValid) {
  const RoutingSamples s = record();
  EXPECT_EQ(s.d, 32);
  EXPECT_EQ(s.E, 8);
  EXPECT_EQ(s.top_k, 2);
  ASSERT_EQ(s.x.size(), 4u);
  EXPECT_EQ(s.tokens(), 96);
  for (size_t l = 0; l < 4; ++l) {
    ASSERT_EQ(s.x[l].size(), 96u * 32u);
    ASSERT_EQ(s.experts[l].size(), 96u * 2u);
    for (int64_t t = 0; t < 96; ++t) {
      const int32_t a = s.experts[l][t * 2], b = s.experts[l][t * 2 + 1];
      EXPECT_TRUE(a >= 0 && a < 8 && b >= 0 && b < 8 && a != b) << a << " " << b;
    }
  }
  // each layer's recorded choice is its own router's top-2 on the recorded input
  model::Transformer m = model::load_pretrained(dir);
  for (int64_t l = 0; l < 4; ++l) {
    const float* w = m.moe_layer(l)->params().router_w.data<float>();
    for (int64_t t = 0; t < 96; ++t) {
      std::vector<double> sc(8);
      for (int64_t e = 0; e < 8; ++e)
        for (int64_t i = 0; i < 32; ++i) sc[e] += static_cast<double>(w[e * 32 + i]) * s.x[l][t * 32 + i];
      std::vector<int> idx(8);
      std::iota(idx.begin(), idx.end(), 0);
      std::partial_sort(idx.begin(), idx.begin() + 2, idx.end(), [&](int a, int b) { return sc[a] > sc[b]; });
      std::sort(idx.begin(), idx.begin() + 2);
      EXPECT_EQ(idx[0], s.experts[l][t * 2]);
      EXPECT_EQ(idx[1], s.experts[l][t * 2 + 1]);
    }
  }
  // taking clears
  ExpertStoreOptions o;
  InferenceModel im = load(o);
  EXPECT_EQ(im.store->take_routing().tokens(), 0);
}

TEST_F(ExpertPredictorStoreTest, PreGatingScoreIsItsLinearMap) {
  const model::Transformer m = model::load_pretrained(dir);
  const PreGating pg(m, 2);
  const RoutingSamples s = record();
  std::vector<float> W(static_cast<size_t>((32 + 8 + 1) * 8)), sc(8);
  for (int64_t li = 0; li < 3; ++li)
    for (int64_t dl = 1; dl <= 2; ++dl) {
      const bool has = li + dl < 4;
      ASSERT_EQ(pg.linear_map(li, dl, W.data()), has);
      if (!has) continue;
      ExpertPredictor p;  // the map as a predictor with zero choice rows
      p.d = 32, p.E = 8, p.top_k = 2;
      p.W.assign(4, {});
      p.W[li].assign(static_cast<size_t>(dl), {});
      p.W[li][dl - 1] = W;
      std::fill(p.W[li][dl - 1].begin() + 32 * 8, p.W[li][dl - 1].end(), 0.0f);
      std::vector<float> sp(8);
      for (int64_t t = 0; t < 5; ++t) {
        ASSERT_TRUE(pg.score(li, dl, &s.x[li][t * 32], &s.experts[li][t * 2], 2, sc.data()));
        ASSERT_TRUE(p.score(li, dl, &s.x[li][t * 32], &s.experts[li][t * 2], 2, sp.data()));
        for (int e = 0; e < 8; ++e) EXPECT_NEAR(sc[e], sp[e], 1e-4f * (1 + std::fabs(sc[e])));
      }
    }
  EXPECT_FALSE(pg.score(3, 1, s.x[3].data(), s.experts[3].data(), 2, sc.data()));
}

TEST_F(ExpertPredictorStoreTest, LearnedPredictorKeepsOutputsAndIsFoundInTheModelDirectory) {
  ExpertStoreOptions full;
  InferenceModel ref_m = load(full);
  const std::vector<float> ref = run(ref_m);
  const RoutingSamples s = record();
  const model::Transformer m = model::load_pretrained(dir);
  const PreGating pg(m, 2);
  ExpertPredictor p = fit_expert_predictor(s, {0, 1, 2, 3}, 2, {}, &pg);
  p.W[1][0].clear();  // one pair left to pre-gating
  save_expert_predictor(p, dir + "/" + kExpertPredictorFile);
  for (const char* which : {"auto", "pregate"}) {
    for (CachePolicy pol : {CachePolicy::Lru, CachePolicy::Activation}) {
      ExpertStoreOptions o;
      o.resident_experts = 8;  // a quarter of the 32 experts
      o.policy = pol;
      o.prefetch_depth = 2;
      o.predictor = which;
      InferenceModel im = load(o);
      EXPECT_EQ(im.store->describe().find(kExpertPredictorFile) != std::string::npos,
                std::string(which) == "auto")
          << im.store->describe();
      const std::vector<float> got = run(im);
      ASSERT_EQ(got, ref) << which << " " << cache_policy_name(pol);
      const ExpertStoreStats st = im.store->stats();
      EXPECT_GT(st.prefetch_issued, 0);
    }
  }
  // an explicit path works too, a missing one is refused
  ExpertStoreOptions o;
  o.resident_experts = 8;
  o.predictor = dir + "/" + kExpertPredictorFile;
  InferenceModel im = load(o);
  EXPECT_EQ(run(im), ref);
  o.predictor = dir + "/nope.safetensors";
  EXPECT_THROW(load(o), Error);
}

TEST_F(ExpertPredictorStoreTest, FileRoundTripsAndBadFilesAreRefusedByName) {
  const RoutingSamples s = record();
  ExpertPredictor p = fit_expert_predictor(s, {0, 1, 2, 3}, 2);
  p.W[2][0].clear();
  const std::string path = file("pred.safetensors");
  save_expert_predictor(p, path);
  const ExpertPredictor q = load_expert_predictor(path);
  EXPECT_EQ(q.W, p.W);
  EXPECT_EQ(q.layers, p.layers);
  EXPECT_EQ(q.d, 32);
  EXPECT_EQ(q.E, 8);
  EXPECT_EQ(q.top_k, 2);
  EXPECT_EQ(q.depth, 2);
  EXPECT_EQ(q.calibration_tokens, 96);
  std::vector<float> sc(8);
  EXPECT_FALSE(q.score(2, 1, s.x[2].data(), s.experts[2].data(), 2, sc.data()));
  EXPECT_TRUE(q.score(1, 2, s.x[1].data(), s.experts[1].data(), 2, sc.data()));

  auto expect_refused = [&](const std::string& f, const std::string& needle) {
    try {
      load_expert_predictor(f);
      ADD_FAILURE() << "no error for " << needle;
    } catch (const Error& e) {
      const std::string w = e.what();
      EXPECT_NE(w.find(f), std::string::npos) << w;
      EXPECT_NE(w.find(needle), std::string::npos) << w;
    }
  };
  // truncated
  {
    std::ifstream in(path, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const std::string cut = file("cut.safetensors");
    std::ofstream(cut, std::ios::binary) << bytes.substr(0, bytes.size() - 100);
    EXPECT_THROW(load_expert_predictor(cut), Error);
  }
  std::map<std::string, Tensor> t = load_safetensors(path);
  const std::map<std::string, std::string> md = SafetensorsReader(path).metadata();
  auto write = [&](const std::map<std::string, Tensor>& tt, std::map<std::string, std::string> m) {
    const std::string f = file("bad.safetensors");
    save_safetensors(f, tt, m);
    return f;
  };
  {
    auto m = md;
    m["format"] = "something-else";
    expect_refused(write(t, m), "moe-expert-predictor");
  }
  {
    auto m = md;
    m.erase("d");
    expect_refused(write(t, m), "'d'");
  }
  {
    auto m = md;
    m["moe_layers"] = "0,2,1,3";
    expect_refused(write(t, m), "moe_layers");
  }
  {
    auto tt = t;
    tt["predictor.0.1"] = Tensor::zeros({5, 8});
    expect_refused(write(tt, md), "predictor.0.1");
  }
  {
    auto tt = t;
    tt["predictor.0.1"].set(3, std::nan(""));
    expect_refused(write(tt, md), "non-finite");
  }
  {
    auto tt = t;
    tt["unrelated"] = Tensor::zeros({2});
    expect_refused(write(tt, md), "tensors");
  }
  // a predictor of another model is refused when the store attaches it
  {
    auto m = md;
    m["experts"] = "6";
    auto tt = t;
    for (auto& [name, w] : tt) w = Tensor::zeros({32 + 6 + 1, 6});
    const std::string f = write(tt, m);
    ExpertStoreOptions o;
    o.resident_experts = 8;
    o.predictor = f;
    try {
      load(o);
      ADD_FAILURE() << "no error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("6 experts"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace moe::infer
