// The expert store: outputs independent of budget, policy, prefetch, io and miss mode; statistics;
// errors. The model is small but has enough experts for budgets to matter (4 MoE layers x 8 experts).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "model_testutil.h"
#include "moe/core/error.h"
#include "moe/core/parallel.h"
#include "moe/core/rng.h"
#include "moe/infer/expert_store.h"
#include "moe/infer/generate.h"
#include "moe/model/quantized.h"
#include "moe/model/safetensors.h"
#include "train_testutil.h"

namespace moe::infer {
namespace {

class ExpertStoreTest : public train::testing::TempDirTest {
 protected:
  void SetUp() override {
    TempDirTest::SetUp();
    model::Transformer m(model::testing::offload_config());
    m.init_params(7);
    dir = file("model");
    model::save_pretrained(m, dir);
  }
  // Logits of a prompt then greedy decode steps, with the store made from `opt`.
  std::vector<float> run(const ExpertStoreOptions& opt, ExpertStoreStats* st = nullptr,
                         std::vector<int64_t>* uses = nullptr) {
    InferenceLoadOptions lo;
    lo.offload = true;
    lo.store = opt;
    InferenceModel im = load_inference_model(dir, lo);
    if (uses) im.store->record_uses(true);
    std::vector<float> out;
    model::KVCache cache = im.model->new_cache(32);
    std::vector<int32_t> prompt = model::testing::random_tokens(5, 37, 3);
    Tensor l = im.model->decode(cache, prompt.data(), static_cast<int64_t>(prompt.size()));
    for (int step = 0; step < 10; ++step) {
      const float* p = l.data<float>();
      out.insert(out.end(), p, p + l.numel());
      int32_t next = static_cast<int32_t>(std::max_element(p, p + l.numel()) - p);
      l = im.model->decode(cache, &next, 1);
    }
    if (st) *st = im.store->stats();
    if (uses) *uses = im.store->take_uses();
    return out;
  }
  std::string dir;
};

TEST_F(ExpertStoreTest, OutputsDoNotDependOnBudgetPolicyPrefetchOrIo) {
  ExpertStoreOptions full;
  ExpertStoreStats sf;
  const std::vector<float> ref = run(full, &sf);
  EXPECT_EQ(sf.misses, 0);
  EXPECT_GT(sf.hits, 0);
  EXPECT_EQ(sf.capacity, 32);
  for (CachePolicy p : {CachePolicy::Lru, CachePolicy::Lfu, CachePolicy::Activation}) {
    for (bool prefetch : {false, true}) {
      for (ExpertIo io : {ExpertIo::Mmap, ExpertIo::Direct}) {
        for (int64_t budget : {3, 8}) {
          ExpertStoreOptions o;
          o.resident_experts = budget;  // 8 of 32: the experts are four times the budget
          o.policy = p;
          o.prefetch = prefetch;
          o.io = io;
          ExpertStoreStats st;
          const std::vector<float> got = run(o, &st);
          SCOPED_TRACE(cat(cache_policy_name(p), " prefetch ", prefetch, " io ", expert_io_name(io),
                           " budget ", budget));
          ASSERT_EQ(got.size(), ref.size());
          for (size_t i = 0; i < ref.size(); ++i) ASSERT_EQ(got[i], ref[i]) << "logit " << i;
          EXPECT_EQ(st.hits + st.misses, sf.hits);  // every expert use counted once
          EXPECT_GT(st.misses, 0);
          EXPECT_GT(st.bytes_moved, 0u);
          EXPECT_LE(st.resident, budget);
          if (!prefetch) {
            EXPECT_EQ(st.prefetch_issued, 0);
          }
        }
      }
    }
  }
}

TEST_F(ExpertStoreTest, ComputeInPlaceAndAutoMissModesGiveTheSameOutputs) {
  ExpertStoreOptions full;
  full.format = "f32";  // the checkpoint is f32: in-place compute is possible in this format only
  const std::vector<float> ref = run(full);
  for (MissMode mm : {MissMode::Compute, MissMode::Auto}) {
    ExpertStoreOptions o = full;
    o.resident_experts = 4;
    o.miss = mm;
    ExpertStoreStats st;
    EXPECT_EQ(run(o, &st), ref) << miss_mode_name(mm);
    if (mm == MissMode::Compute) {
      EXPECT_GT(st.computed_in_place, 0);
    }
  }
}

TEST_F(ExpertStoreTest, StoreMatchesTheModelsOwnExpertPaths) {
  // bf16 store vs the layer's own bf16 experts: the same kernel per row, so bit-identical.
  model::Transformer own = model::load_pretrained(dir);
  own.set_bf16_inference(true);
  InferenceLoadOptions lo;
  lo.offload = true;
  lo.bf16 = true;
  lo.store.resident_experts = 5;
  InferenceModel im = load_inference_model(dir, lo);
  const std::vector<int32_t> toks = model::testing::random_tokens(9, 37, 11);
  const Tensor a = own.logits(toks.data(), 1, 9), b = im.model->logits(toks.data(), 1, 9);
  ASSERT_EQ(a.numel(), b.numel());
  for (int64_t i = 0; i < a.numel(); ++i) ASSERT_EQ(a.data<float>()[i], b.data<float>()[i]) << i;
  // f32 store vs the f32 model: different kernels (fused vs per expert), fp32 tolerance.
  model::Transformer own32 = model::load_pretrained(dir);
  InferenceLoadOptions l32;
  l32.offload = true;
  l32.store.format = "f32";
  l32.store.resident_experts = 6;
  InferenceModel im32 = load_inference_model(dir, l32);
  const Tensor c = own32.logits(toks.data(), 1, 9), d = im32.model->logits(toks.data(), 1, 9);
  for (int64_t i = 0; i < c.numel(); ++i)
    EXPECT_NEAR(c.data<float>()[i], d.data<float>()[i], 1e-4 * (1 + std::fabs(c.data<float>()[i])));
}

TEST_F(ExpertStoreTest, ThreadCountDoesNotChangeOutputs) {
  ExpertStoreOptions o;
  o.resident_experts = 4;
  const int nt = num_threads();
  set_num_threads(1);
  const std::vector<float> one = run(o);
  set_num_threads(2);
  const std::vector<float> two = run(o);
  set_num_threads(nt);
  EXPECT_EQ(one, two);
}

TEST_F(ExpertStoreTest, ActivationPolicyWithPrefetchHitsAtLeastAsOftenAsLru) {
  // The learned statistics and pre-gating give at least as many hits as LRU without prefetch on this
  // model and prompt (a property of these weights, checked not timed).
  ExpertStoreOptions lru;
  lru.resident_experts = 8;
  lru.policy = CachePolicy::Lru;
  lru.prefetch = false;
  ExpertStoreOptions act;
  act.resident_experts = 8;
  ExpertStoreStats a, b;
  run(lru, &a);
  run(act, &b);
  EXPECT_GE(b.hit_rate(), a.hit_rate());
}

// Belady's MIN replay: the textbook sequence, a start from resident experts, counted uses, and the
// bound it is meant to be (never below LRU on the same uses, capacity and start).
TEST(OptimalCache, ReplaysBeladysMinAndBoundsLru) {
  const std::vector<int64_t> seq = {1, 2, 3, 4, 1, 2, 5, 1, 2, 3, 4, 5};
  OptimalCacheResult r = simulate_optimal_cache(seq, {}, 3, {});
  EXPECT_EQ(r.misses, 7);  // the known optimum for this sequence with 3 frames
  EXPECT_EQ(r.hits, 5);
  r = simulate_optimal_cache(seq, {}, 3, {1, 2, 3});
  EXPECT_EQ(r.misses, 4);  // 4, 5, 3, 4
  EXPECT_EQ(r.hits, 8);
  std::vector<uint8_t> last_half(seq.size(), 0);
  for (size_t i = 6; i < seq.size(); ++i) last_half[i] = 1;
  r = simulate_optimal_cache(seq, last_half, 3, {1, 2, 3});
  EXPECT_EQ(r.hits + r.misses, 6);
  EXPECT_EQ(r.misses, 3);
  EXPECT_THROW(simulate_optimal_cache(seq, {}, 0, {}), Error);
  EXPECT_THROW(simulate_optimal_cache(seq, {1, 0}, 3, {}), Error);
  EXPECT_THROW(simulate_optimal_cache(seq, {}, 1, {1, 2}), Error);

  Rng rng(11);
  for (int trial = 0; trial < 50; ++trial) {
    const int64_t ids = 4 + trial % 13, cap = 1 + trial % 7, n = 200;
    std::vector<int64_t> u(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {  // skewed: low ids more often
      const double x = rng.uniform(static_cast<uint64_t>(trial * n + i));
      u[static_cast<size_t>(i)] = static_cast<int64_t>(x * x * static_cast<double>(ids));
    }
    std::vector<int64_t> init;
    for (int64_t i = 0; i < std::min(cap, ids); ++i) init.push_back(i);
    // LRU from the same start
    std::vector<int64_t> lru = init;  // most recent last
    int64_t lru_hits = 0;
    for (int64_t id : u) {
      auto it = std::find(lru.begin(), lru.end(), id);
      if (it != lru.end()) {
        ++lru_hits;
        lru.erase(it);
      } else if (static_cast<int64_t>(lru.size()) >= cap) {
        lru.erase(lru.begin());
      }
      lru.push_back(id);
    }
    const OptimalCacheResult o = simulate_optimal_cache(u, {}, cap, init);
    EXPECT_EQ(o.hits + o.misses, n);
    EXPECT_GE(o.hits, lru_hits) << "trial " << trial;
  }
}

// The recorded uses are every use in order; replayed with MIN they bound the store's own LRU.
TEST_F(ExpertStoreTest, RecordedUsesBoundTheStoresLruHits) {
  ExpertStoreOptions full;
  ExpertStoreStats sf;
  std::vector<int64_t> uses;
  run(full, &sf, &uses);
  ASSERT_EQ(static_cast<int64_t>(uses.size()), sf.hits);
  for (int64_t id : uses) {
    EXPECT_GE(id, 0);
    EXPECT_LT(id, 32);
  }
  for (int64_t budget : {3, 8}) {
    ExpertStoreOptions o;
    o.resident_experts = budget;
    o.policy = CachePolicy::Lru;
    o.prefetch = false;
    ExpertStoreStats st;
    std::vector<int64_t> again;
    run(o, &st, &again);
    // The same uses whatever the budget; within one layer's step the order may differ (hits are
    // computed while misses load), which a replay bound does not depend on (see expert_store.h).
    std::vector<int64_t> a = again, b0 = uses;
    std::sort(a.begin(), a.end());
    std::sort(b0.begin(), b0.end());
    EXPECT_EQ(a, b0);
    std::vector<int64_t> warm;
    for (int64_t i = 0; i < budget; ++i) warm.push_back(i);  // the store's warm fill
    const OptimalCacheResult b = simulate_optimal_cache(uses, {}, budget, warm);
    EXPECT_EQ(b.hits + b.misses, st.hits + st.misses);
    EXPECT_GE(b.hits, st.hits) << "budget " << budget;
  }
}

TEST_F(ExpertStoreTest, Errors) {
  ExpertStoreOptions o;
  o.resident_experts = 2;
  EXPECT_THROW(run(o), Error);  // fewer than 3 slots
  o.resident_experts = 4;
  o.format = "int3";
  EXPECT_THROW(run(o), Error);
  o.format = "auto";
  o.prefetch_depth = 0;
  EXPECT_THROW(run(o), Error);
  EXPECT_THROW(cache_policy_from_name("fifo"), Error);
  EXPECT_THROW(expert_io_from_name("nfs"), Error);
  EXPECT_THROW(miss_mode_from_name("skip"), Error);
  // a model that holds its own experts cannot take a store
  model::Transformer own = model::load_pretrained(dir);
  EXPECT_THROW(ExpertStore::attach(own, dir, ExpertStoreOptions()), Error);
  // a model with external experts and no store refuses to run
  model::Transformer ext = model::load_pretrained(dir, DType::F32, true);
  const std::vector<int32_t> toks = {1, 2, 3};
  EXPECT_THROW(ext.logits(toks.data(), 1, 3), Error);
  EXPECT_THROW(ext.hf_state_dict(), Error);
}

TEST_F(ExpertStoreTest, MissingOrMisshapedExpertTensorIsNamed) {
  std::map<std::string, Tensor> sd = load_safetensors(dir + "/model.safetensors");
  const std::string name = "model.layers.2.block_sparse_moe.experts.5.w3.weight";
  ASSERT_TRUE(sd.count(name));
  sd[name] = Tensor::zeros({3, 3}, DType::F32);
  save_safetensors(dir + "/model.safetensors", sd);
  model::Transformer m = model::load_pretrained(dir, DType::F32, true);
  try {
    ExpertStore::attach(m, dir, ExpertStoreOptions());
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
  }
  sd.erase(name);
  save_safetensors(dir + "/model.safetensors", sd);
  model::Transformer m2 = model::load_pretrained(dir, DType::F32, true);
  try {
    ExpertStore::attach(m2, dir, ExpertStoreOptions());
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("missing expert tensor"), std::string::npos) << e.what();
  }
}

// Round-trips the (N, K) f32 matrix t through the group-wise format, in place.
void fake_quantize(Tensor t, int bits, int64_t group) {
  Tensor c = t.contiguous();
  const kernels::QuantizedMatrix q =
      kernels::quantize_matrix(c.data<float>(), c.size(0), c.size(1), bits, group);
  kernels::dequantize_matrix(q.view(), c.data<float>());
  t.copy_from(c);
}

TEST_F(ExpertStoreTest, QuantizedExpertsMatchTheirDequantisedWeights) {
  const std::vector<int32_t> toks = model::testing::random_tokens(9, 37, 5);
  for (int bits : {8, 4}) {
    for (bool attention : {false, true}) {
      SCOPED_TRACE(cat("int", bits, attention ? " with attention" : ""));
      const std::string qdir = file(cat("q", bits, attention));
      model::QuantizeOptions qo;
      qo.bits = bits;
      qo.group = 32;
      qo.attention = attention;
      model::quantize_checkpoint(dir, qdir, qo);
      // the reference: the float model with every quantized weight replaced by its dequantised value
      model::Transformer ref = model::load_pretrained(dir);
      const model::ModelConfig& c = ref.config();
      for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
        MoEParams& p = ref.mutable_moe_layer(l)->params();
        for (int64_t e = 0; e < c.num_experts; ++e)
          for (Tensor* w : {&p.w_gate, &p.w_up, &p.w_down})
            fake_quantize(w->slice(0, e, e + 1).reshape({w->size(1), w->size(2)}), bits, 32);
        if (attention)
          for (const char* n : {"q_proj", "k_proj", "v_proj", "o_proj"})
            fake_quantize(ref.param(cat("model.layers.", l, ".self_attn.", n, ".weight")).value, bits, 32);
      }
      InferenceModel qm = load_inference_model(qdir, InferenceLoadOptions());
      ASSERT_TRUE(qm.store);
      EXPECT_EQ(qm.store->format(), bits == 4 ? "int4" : "int8");
      const Tensor a = ref.logits(toks.data(), 1, 9), b = qm.model->logits(toks.data(), 1, 9);
      for (int64_t i = 0; i < a.numel(); ++i)
        ASSERT_NEAR(a.data<float>()[i], b.data<float>()[i], 1e-4 * (1 + std::fabs(a.data<float>()[i]))) << i;
      // offloaded quantized experts: bit-identical to fully resident ones, from disk too
      InferenceLoadOptions lo;
      lo.offload = true;
      lo.store.resident_experts = 5;
      lo.store.io = ExpertIo::Direct;
      InferenceModel om = load_inference_model(qdir, lo);
      const Tensor o = om.model->logits(toks.data(), 1, 9);
      for (int64_t i = 0; i < a.numel(); ++i) ASSERT_EQ(o.data<float>()[i], b.data<float>()[i]) << i;
      // quantized experts cannot be asked for in a float format
      lo.store.format = "bf16";
      EXPECT_THROW(load_inference_model(qdir, lo), Error);
    }
  }
}

// --expert-format w8a8 / w4a8: int8 / int4 experts on integer dot products, the activations quantized
// per row. `dir` is the float checkpoint; qdir (`bits` wide) and other (the other width) are written here.
void check_int_packed_experts(const std::string& dir, const std::string& qdir, const std::string& other,
                              int bits) {
  const std::string format = bits == 8 ? "w8a8" : "w4a8";
  const std::vector<int32_t> toks = model::testing::random_tokens(9, 37, 5);
  model::QuantizeOptions qo;
  qo.bits = bits;
  qo.group = 32;
  model::quantize_checkpoint(dir, qdir, qo);
  InferenceModel w8a32 = load_inference_model(qdir, InferenceLoadOptions());
  InferenceLoadOptions lo;
  lo.store.format = format;
  InferenceModel w8a8 = load_inference_model(qdir, lo);
  ASSERT_TRUE(w8a8.store);
  EXPECT_EQ(w8a8.store->format(), bits == 8 ? "int8 w8a8" : "int4 w4a8");
  const Tensor a = w8a8.model->logits(toks.data(), 1, 9), b = w8a32.model->logits(toks.data(), 1, 9);
  // The reference backend quantizes the activations the same way and sums in double.
  InferenceModel ref = load_inference_model(qdir, lo);
  ref.model->set_backend(kernels::Backend::Ref);
  const Tensor r = ref.model->logits(toks.data(), 1, 9);
  for (int64_t i = 0; i < a.numel(); ++i)
    ASSERT_NEAR(a.data<float>()[i], r.data<float>()[i], 1e-4 * (1 + std::fabs(r.data<float>()[i]))) << i;
  // int8 activations move each position's logits from the fp32-activation int8 model by about as much
  // as the int8 weights moved them from f32 (1-3% here), except where a token's top-k flips between two
  // close experts (one position of this random model: 30%): the median position stays within 5%.
  const int64_t V = a.size(-1);
  std::vector<double> rel;
  for (int64_t t = 0; t < 9; ++t) {
    double sq = 0, dsq = 0;
    for (int64_t v = 0; v < V; ++v) {
      const double x = a.data<float>()[t * V + v], y = b.data<float>()[t * V + v];
      sq += y * y, dsq += (x - y) * (x - y);
    }
    rel.push_back(std::sqrt(dsq / sq));
  }
  std::sort(rel.begin(), rel.end());
  EXPECT_GT(rel[8], 0.0);
  EXPECT_LT(rel[4], 0.05) << "median relative rms of a position's logits, " << format
                          << " against fp32 activations";
  // offloaded, from disk: bit-identical to fully resident
  lo.offload = true;
  lo.store.resident_experts = 5;
  lo.store.io = ExpertIo::Direct;
  InferenceModel om = load_inference_model(qdir, lo);
  const Tensor o = om.model->logits(toks.data(), 1, 9);
  for (int64_t i = 0; i < a.numel(); ++i) ASSERT_EQ(o.data<float>()[i], a.data<float>()[i]) << i;
  // checkpoints of the other width and float checkpoints have no such form
  qo.bits = 12 - bits;
  model::quantize_checkpoint(dir, other, qo);
  InferenceLoadOptions bad;
  bad.offload = true;  // a float checkpoint uses the store only when offloading
  bad.store.format = format;
  for (const std::string& d : {other, dir}) {
    try {
      load_inference_model(d, bad);
      ADD_FAILURE() << "no error for " << d;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(format), std::string::npos) << e.what();
    }
  }
}

TEST_F(ExpertStoreTest, W8A8ExpertsMatchTheirReferenceAndStayNearInt8) {
  check_int_packed_experts(dir, file("q8"), file("q4"), 8);
}

TEST_F(ExpertStoreTest, W4A8ExpertsMatchTheirReferenceAndStayNearInt4) {
  check_int_packed_experts(dir, file("q4"), file("q8"), 4);
}

}  // namespace
}  // namespace moe::infer
