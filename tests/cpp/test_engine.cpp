// The continuous-batching engine: batch-independent greedy outputs, admission, cancellation,
// stop conditions, bad requests, shutdown; and the sampler's penalties. No timing assertions.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <future>
#include <thread>

#include "moe/core/error.h"
#include "moe/core/rng.h"
#include "moe/dist/comm.h"
#include "moe/infer/engine.h"
#include "moe/infer/generate.h"
#include "moe/infer/lockstep.h"
#include "moe/infer/sampler.h"

using namespace moe;
using namespace moe::infer;
using moe::model::Transformer;

namespace {

EngineOptions engine_options(int64_t max_batch_tokens, int64_t max_running, int64_t max_queue) {
  EngineOptions o;
  o.max_batch_tokens = max_batch_tokens;
  o.max_running = max_running;
  o.max_queue = max_queue;
  return o;
}

model::ModelConfig small_cfg() {
  model::ModelConfig c;
  c.arch = model::Arch::Mixtral;
  c.vocab_size = 48;
  c.hidden_size = 16;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 4;
  c.num_experts = 4;
  c.num_experts_per_tok = 2;
  c.intermediate_size = 12;
  c.max_position_embeddings = 64;
  c.initializer_range = 0.5;
  return c;
}

const Transformer& model_f32() {
  static const Transformer m = [] {
    Transformer t(small_cfg(), DType::F32);
    t.init_params(17);
    return t;
  }();
  return m;
}

std::vector<int32_t> prompt_of(int64_t n, uint64_t seed) {
  const Rng r(seed);
  std::vector<int32_t> t;
  for (int64_t i = 0; i < n; ++i) t.push_back(static_cast<int32_t>(r.below(static_cast<uint64_t>(i), 48)));
  return t;
}

Request greedy(int64_t prompt_len, int64_t max_new, uint64_t seed) {
  Request r;
  r.prompt = prompt_of(prompt_len, seed);
  r.max_new_tokens = max_new;
  r.sampling.temperature = 0;
  return r;
}

std::vector<Request> mixed_requests() {
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{1, 5},   {3, 10}, {7, 1}, {12, 8},
                                                           {20, 12}, {5, 0},  {9, 6}};
  std::vector<Request> rs;
  for (size_t i = 0; i < shapes.size(); ++i) rs.push_back(greedy(shapes[i].first, shapes[i].second, 40 + i));
  return rs;
}

// A gate a callback can wait on.
struct Gate {
  std::promise<void> p;
  std::shared_future<void> f = p.get_future().share();
  void open() { p.set_value(); }
  void wait() const { f.wait(); }
};

}  // namespace

TEST(Engine, ConcurrentGreedyEqualsOneAtATime) {
  const Transformer& m = model_f32();
  std::vector<Finished> alone;
  {
    Engine e(m, EngineOptions{});
    for (Request& r : mixed_requests()) alone.push_back(e.run_all({r})[0]);
  }
  EngineOptions o;
  o.max_batch_tokens = 8;  // prompts are chunked and mixed with decodes
  o.max_running = 4;       // and some requests wait for a slot
  o.kv_block_size = 3;
  Engine e(m, o);
  const std::vector<Finished> together = e.run_all(mixed_requests());
  ASSERT_EQ(together.size(), alone.size());
  const std::vector<Request> rs = mixed_requests();
  for (size_t i = 0; i < alone.size(); ++i) {
    EXPECT_EQ(together[i].tokens, alone[i].tokens) << "request " << i;
    EXPECT_EQ(together[i].finish_reason, "length");
    EXPECT_EQ(static_cast<int64_t>(together[i].tokens.size()), rs[i].max_new_tokens);
    EXPECT_EQ(together[i].prompt_tokens, static_cast<int64_t>(rs[i].prompt.size()));
  }
  const EngineStats st = e.stats();
  EXPECT_EQ(st.requests_finished, static_cast<int64_t>(rs.size()));
  EXPECT_LE(st.batch_tokens_last, 8);
  int64_t prompt = 0, gen = 0;
  for (const Request& r : rs) prompt += static_cast<int64_t>(r.prompt.size()), gen += r.max_new_tokens;
  EXPECT_EQ(st.prompt_tokens, prompt);
  EXPECT_EQ(st.generated_tokens, gen);
  // Every token fed to a forward pass is routed to k = 2 experts in each MoE layer.
  ASSERT_EQ(st.expert_hits.size(), 2u);
  for (const auto& hits : st.expert_hits) {
    int64_t s = 0;
    for (int64_t h : hits) s += h;
    EXPECT_EQ(s, 2 * st.batch_tokens_sum);
  }
  EXPECT_GT(st.batch_seqs_sum, st.forward_passes);  // some passes held several sequences
}

// f64: the engine's greedy tokens equal generate() on the contiguous cache.
TEST(Engine, F64MatchesGenerate) {
  Transformer m(small_cfg(), DType::F64);
  m.init_params(17);
  Engine e(m, EngineOptions{});
  std::vector<Request> rs = mixed_requests();
  const std::vector<Finished> got = e.run_all(rs);
  for (size_t i = 0; i < rs.size(); ++i) {
    GenerateOptions go;
    go.max_new_tokens = rs[i].max_new_tokens;
    go.sampling = rs[i].sampling;
    EXPECT_EQ(got[i].tokens, generate(m, rs[i].prompt, go).tokens) << "request " << i;
  }
}

TEST(Engine, QueueFullReturnsNullopt) {
  EngineOptions o;
  o.max_running = 1;
  o.max_queue = 2;
  // Everything the callbacks touch is declared before the engine, so the engine thread has stopped
  // before it goes away.
  Gate started, release;
  std::atomic<bool> first{true};
  Engine e(model_f32(), o);
  Request a = greedy(4, 3, 1);
  a.on_token = [&](int32_t) {
    if (first.exchange(false)) started.open(), release.wait();
    return true;
  };
  ASSERT_TRUE(e.submit(a).has_value());
  started.wait();  // a is running and holds the only slot
  EXPECT_TRUE(e.submit(greedy(3, 2, 2)).has_value());
  EXPECT_TRUE(e.submit(greedy(3, 2, 3)).has_value());
  EXPECT_FALSE(e.submit(greedy(3, 2, 4)).has_value());
  EXPECT_EQ(e.stats().requests_rejected, 1);
  EXPECT_EQ(e.stats().queued, 2);
  release.open();
}

TEST(Engine, CancelRunningQueuedAndFromOnToken) {
  EngineOptions o;
  o.max_running = 1;
  Gate started, release;  // before the engine: see QueueFullReturnsNullopt
  std::atomic<int> n{0};
  std::promise<Finished> fa, fb, fc;
  Engine e(model_f32(), o);
  Request a = greedy(4, 50, 1);
  a.on_token = [&](int32_t) {
    if (++n == 2) started.open(), release.wait();
    return true;
  };
  a.on_finish = [&](const Finished& f) { fa.set_value(f); };
  Request b = greedy(3, 5, 2);
  b.on_finish = [&](const Finished& f) { fb.set_value(f); };
  const uint64_t ida = *e.submit(a);
  started.wait();
  const uint64_t idb = *e.submit(b);  // queued behind a
  e.cancel(idb);
  e.cancel(ida);
  e.cancel(987654);  // unknown: no-op
  release.open();
  const Finished ra = fa.get_future().get(), rb = fb.get_future().get();
  EXPECT_EQ(ra.finish_reason, "cancelled");
  EXPECT_GE(ra.tokens.size(), 2u);
  EXPECT_LT(ra.tokens.size(), 50u);
  EXPECT_EQ(rb.finish_reason, "cancelled");
  EXPECT_TRUE(rb.tokens.empty());
  // cancel() from inside on_token (on the engine thread) must not deadlock.
  std::promise<uint64_t> idc;
  std::shared_future<uint64_t> idc_f = idc.get_future().share();
  Request c = greedy(2, 40, 3);
  c.on_token = [&](int32_t) {
    e.cancel(idc_f.get());
    return true;
  };
  c.on_finish = [&](const Finished& f) { fc.set_value(f); };
  idc.set_value(*e.submit(c));
  const Finished rc = fc.get_future().get();
  EXPECT_EQ(rc.finish_reason, "cancelled");
  EXPECT_EQ(rc.tokens.size(), 1u);
  EXPECT_EQ(e.run_all({greedy(3, 4, 5)})[0].tokens.size(), 4u);  // still serving
}

TEST(Engine, StopIdsAndOnTokenFalse) {
  Engine e(model_f32(), EngineOptions{});
  const Finished full = e.run_all({greedy(6, 20, 8)})[0];
  ASSERT_EQ(full.tokens.size(), 20u);
  // The first token at index >= 2 not seen before it: generation must end right there.
  size_t k = 0;
  for (size_t i = 2; i < full.tokens.size() && k == 0; ++i)
    if (std::find(full.tokens.begin(), full.tokens.begin() + static_cast<long>(i), full.tokens[i]) ==
        full.tokens.begin() + static_cast<long>(i))
      k = i;
  Request r = greedy(6, 20, 8);
  r.stop_ids = {99999, full.tokens[k]};
  const Finished s = e.run_all({r})[0];
  EXPECT_EQ(s.finish_reason, "stop");
  EXPECT_EQ(s.tokens,
            std::vector<int32_t>(full.tokens.begin(), full.tokens.begin() + static_cast<long>(k + 1)));
  Request q = greedy(6, 20, 8);
  int calls = 0;
  q.on_token = [&](int32_t) { return ++calls < 3; };
  const Finished f = e.run_all({q})[0];
  EXPECT_EQ(f.finish_reason, "stop");
  EXPECT_EQ(f.tokens.size(), 3u);
  EXPECT_EQ(calls, 3);
}

TEST(Engine, BadRequestsThrowAndTheEngineStillServes) {
  Engine e(model_f32(), EngineOptions{});
  Request empty = greedy(1, 2, 1);
  empty.prompt.clear();
  EXPECT_THROW(e.submit(empty), Error);
  Request oov = greedy(3, 2, 1);
  oov.prompt[1] = 48;
  EXPECT_THROW(e.submit(oov), Error);
  oov.prompt[1] = -1;
  EXPECT_THROW(e.submit(oov), Error);
  EXPECT_THROW(e.submit(greedy(60, 5, 1)), Error);  // 65 > context 64
  EXPECT_THROW(e.submit(greedy(3, -1, 1)), Error);
  Request bad_sampling = greedy(3, 2, 1);
  bad_sampling.sampling.repetition_penalty = 0;
  EXPECT_THROW(e.submit(bad_sampling), Error);
  EXPECT_THROW(e.run_all({greedy(3, 2, 1), empty}), Error);  // nothing submitted
  try {
    e.submit(oov);
  } catch (const Error& ex) {
    EXPECT_NE(std::string(ex.what()).find("vocabulary"), std::string::npos) << ex.what();
  }
  // A request that fails while running (its callback throws) ends with "error"; others go on.
  Request boom = greedy(3, 5, 2);
  boom.on_token = [](int32_t) -> bool { throw std::runtime_error("client went away"); };
  const std::vector<Finished> r = e.run_all({boom, greedy(4, 3, 3)});
  EXPECT_EQ(r[0].finish_reason, "error");
  EXPECT_NE(r[0].error.find("client went away"), std::string::npos);
  EXPECT_EQ(r[1].finish_reason, "length");
  EXPECT_EQ(r[1].tokens.size(), 3u);
  EXPECT_THROW(Engine(model_f32(), engine_options(0, 1, 1)), Error);  // max_batch_tokens 0
  EngineOptions tiny_pool;
  tiny_pool.kv_blocks = 1;
  Engine small(model_f32(), tiny_pool);
  EXPECT_THROW(small.submit(greedy(10, 10, 1)), Error);  // needs 2 blocks of 16, the pool has 1
}

TEST(Engine, MaxNewTokensZeroOnlyPrefills) {
  Engine e(model_f32(), EngineOptions{});
  const Finished f = e.run_all({greedy(7, 0, 3)})[0];
  EXPECT_EQ(f.finish_reason, "length");
  EXPECT_TRUE(f.tokens.empty());
  EXPECT_EQ(f.prompt_tokens, 7);
  EXPECT_EQ(e.stats().prompt_tokens, 7);
}

TEST(Engine, DestructionCancelsPendingRequests) {
  std::vector<std::string> reasons(3);
  std::atomic<int> finished{0};
  Gate started, release;
  std::atomic<bool> first{true};
  auto eng = std::make_unique<Engine>(model_f32(), engine_options(512, 1, 8));
  Request a = greedy(2, 60, 1);
  a.on_token = [&](int32_t) {
    if (first.exchange(false)) started.open(), release.wait();
    return true;
  };
  for (int i = 0; i < 3; ++i) {
    Request r = i == 0 ? a : greedy(3, 4, 10 + i);
    r.on_finish = [&, i](const Finished& f) { reasons[i] = f.finish_reason, ++finished; };
    ASSERT_TRUE(eng->submit(r).has_value());
    if (i == 0) started.wait();
  }
  // Destroy while a is blocked in its callback; a's 59 remaining tokens keep the others queued.
  std::thread killer([&] { eng.reset(); });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // lets the destructor raise its flag
  release.open();
  killer.join();
  EXPECT_EQ(finished.load(), 3);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(reasons[i], "cancelled") << i;
}

namespace {
// A world of one rank whose broadcasts fail (dist::CommError, as a timed-out peer gives) from the
// n-th on: what the engine's lockstep meets when another rank stops answering.
class FailingComm : public moe::dist::Communicator {
 public:
  explicit FailingComm(int ok_broadcasts) : ok_(ok_broadcasts), self_(moe::dist::self_communicator()) {}
  int rank() const override { return 0; }
  int size() const override { return 2; }  // a leader with one (imaginary) follower
  std::string backend() const override { return "test"; }
  std::string name() const override { return "failing"; }
  void alltoallv(const void* s, const std::vector<int64_t>& sc, void* r, const std::vector<int64_t>& rc,
                 moe::DType t) override {
    self_->alltoallv(s, sc, r, rc, t);
  }
  std::vector<int64_t> exchange_counts(const std::vector<int64_t>& c) override { return c; }
  void allreduce(void*, int64_t, moe::DType, moe::dist::ReduceOp) override {}
  void broadcast(void*, int64_t, moe::DType, int) override {
    if (calls_++ >= ok_)
      throw moe::dist::CommError("broadcast on communicator 'failing' timed out after 1 s");
  }
  void allgather(const void*, void*, int64_t, moe::DType) override {}
  void barrier() override {}
  std::unique_ptr<Communicator> split(int, int, const std::string&) override { return nullptr; }
  [[noreturn]] void abort_job(int code) override { std::exit(code); }

 private:
  int ok_, calls_ = 0;
  std::unique_ptr<Communicator> self_;
};
}  // namespace

TEST(Engine, LockstepFailureIsFatal) {
  // The pool announcement and 2 forward passes (header + payload each) go through; the third fails.
  auto comm = std::make_shared<FailingComm>(1 + 2 * 2);
  EngineOptions o = engine_options(512, 2, 8);
  o.lockstep = std::make_shared<Lockstep>(comm);
  std::atomic<int> fatal_calls{0};
  o.on_fatal = [&](const std::string& what) {
    EXPECT_NE(what.find("expert parallelism failed"), std::string::npos) << what;
    ++fatal_calls;
  };
  Engine eng(model_f32(), o);
  std::vector<Request> reqs = {greedy(3, 10, 1), greedy(4, 10, 2)};
  const std::vector<Finished> fin = eng.run_all(reqs);
  for (const Finished& f : fin) {
    EXPECT_EQ(f.finish_reason, "error");
    EXPECT_NE(f.error.find("timed out"), std::string::npos) << f.error;
  }
  EXPECT_EQ(fatal_calls.load(), 1);
  EXPECT_TRUE(o.lockstep->failed());
  EXPECT_NE(eng.fatal_error().find("expert parallelism failed"), std::string::npos);
  EXPECT_THROW(eng.submit(greedy(3, 2, 3)), EngineFailed);
}

TEST(Sampler, PenaltiesByHand) {
  const float logits[5] = {2, -1, 0.5f, 3, -2};
  const int32_t prompt[2] = {0, 1}, out[3] = {3, 3, 2};
  const TokenHistory h{prompt, 2, out, 3};
  SamplingOptions o;
  o.temperature = 0;
  EXPECT_EQ(sample_token(logits, 5, o, 0, h), 3);  // no penalty
  o.repetition_penalty = 2;
  o.frequency_penalty = 0.5;
  o.presence_penalty = 0.25;
  // repetition (prompt + output {0,1,2,3}): 1, -2, 0.25, 1.5, -2; then output counts 3:2, 2:1:
  // token 3: 1.5 - 0.5·2 - 0.25 = 0.25; token 2: 0.25 - 0.5 - 0.25 = -0.5.
  const std::vector<float> p = apply_penalties(logits, 5, o, h);
  const std::vector<float> want = {1, -2, -0.5f, 0.25f, -2};
  for (int i = 0; i < 5; ++i) EXPECT_FLOAT_EQ(p[i], want[i]) << i;
  EXPECT_EQ(sample_token(logits, 5, o, 0, h), 0);
  // Repetition alone, and presence alone (prompt tokens do not count for presence).
  SamplingOptions r;
  r.temperature = 0;
  r.presence_penalty = 2;
  EXPECT_FLOAT_EQ(apply_penalties(logits, 5, r, h)[0], 2);
  EXPECT_FLOAT_EQ(apply_penalties(logits, 5, r, h)[3], 1);
  // Sampling with penalties stays deterministic in (seed, draw).
  o.temperature = 1;
  o.seed = 5;
  for (uint64_t d = 0; d < 10; ++d)
    EXPECT_EQ(sample_token(logits, 5, o, d, h), sample_token(logits, 5, o, d, h));
  // Ranges.
  for (double bad : {0.0, -1.0, std::nan("")}) {
    SamplingOptions b;
    b.repetition_penalty = bad;
    EXPECT_THROW(b.validate(), Error);
  }
  SamplingOptions b;
  b.frequency_penalty = 2.5;
  EXPECT_THROW(b.validate(), Error);
  b.frequency_penalty = 0;
  b.presence_penalty = -2.1;
  EXPECT_THROW(b.validate(), Error);
  const int32_t oob[1] = {7};
  o.repetition_penalty = 1.5;
  EXPECT_THROW(apply_penalties(logits, 5, o, TokenHistory{oob, 1, nullptr, 0}), Error);
}
