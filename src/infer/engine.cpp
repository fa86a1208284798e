// Continuous-batching engine (include/moe/infer/engine.h, docs/SERVING.md "Engine").
//
// Threads: callers submit() / cancel() / stats() under `mu`; the engine thread owns the running
// sequences and the paged KV cache and takes `mu` only to move requests in and out of the queue
// and to update the statistics. Callbacks (on_token, on_finish) run on the engine thread with `mu`
// NOT held, so a callback may call submit(), cancel() or stats() without deadlock.
//
// KV reservation: a request is admitted only when the pool has blocks for its whole context,
// prompt + max_new_tokens, and it keeps them until it ends. A running sequence therefore never
// waits for memory, and no sequence ever has to be preempted: the schedule cannot deadlock. The
// price is memory reserved for tokens that a request may never produce (a stop id ending it
// early); admission is FIFO, so a large request at the head of the queue holds back smaller ones
// behind it until enough blocks are free.
#include "moe/infer/engine.h"

#include "moe/dist/comm.h"
#include "moe/infer/lockstep.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <unordered_set>

#include "moe/core/error.h"
#include "moe/model/paged_kv.h"

namespace moe::infer {

void EngineOptions::validate() const {
  MOE_CHECK(max_batch_tokens >= 1 && max_batch_tokens <= kMaxBatchTokens,
            "engine: max_batch_tokens must be in [1, ", kMaxBatchTokens, "], got ", max_batch_tokens);
  MOE_CHECK(max_running >= 1 && max_running <= kMaxRunning, "engine: max_running must be in [1, ",
            kMaxRunning, "], got ", max_running);
  MOE_CHECK(max_queue >= 0 && max_queue <= kMaxQueue, "engine: max_queue must be in [0, ", kMaxQueue,
            "], got ", max_queue);
  MOE_CHECK(kv_block_size >= 1 && kv_block_size <= kMaxKvBlockSize, "engine: kv_block_size must be in [1, ",
            kMaxKvBlockSize, "], got ", kv_block_size);
  MOE_CHECK(kv_blocks >= 0 && kv_blocks <= kMaxKvBlocks, "engine: kv_blocks must be in [0, ", kMaxKvBlocks,
            "] (0 = automatic), got ", kv_blocks);
}

namespace {

using Clock = std::chrono::steady_clock;

double seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

struct Pending {
  uint64_t id = 0;
  Request req;
  Clock::time_point t_submit;
};

// A running sequence: prompt positions [0, cached) are in the KV cache; once the prompt is in,
// out.back() is the token to feed next (has_next).
struct Seq {
  uint64_t id = 0;
  Request req;
  Clock::time_point t_submit, t_admit;
  std::vector<int32_t> table;  // KV blocks
  int64_t cached = 0;
  std::vector<int32_t> out;
  bool has_next = false;
  double ttft_s = 0;
  bool cancel = false;
  int64_t prompt_len() const { return static_cast<int64_t>(req.prompt.size()); }
};

}  // namespace

struct Engine::Impl {
  const model::Transformer& m;
  EngineOptions opt;
  model::PagedKVCache kv;  // engine thread (its size fields are read by submit: immutable)

  mutable std::mutex mu;
  std::condition_variable cv_work;       // the engine thread waits for work, cancels or stop
  std::condition_variable cv_room;       // run_all waits for room in the queue
  std::deque<Pending> queue;             // mu
  std::unordered_set<uint64_t> live;     // mu: queued or running ids
  std::unordered_set<uint64_t> cancels;  // mu: asked for, not yet handled
  bool stop = false;                     // mu
  std::string fatal;                     // mu: set once a fatal error stopped the engine
  uint64_t next_id = 1;                  // mu
  EngineStats st;                        // mu

  std::vector<std::unique_ptr<Seq>> running;  // engine thread, in admission order
  size_t rr = 0;                              // engine thread: first decode slot when they do not all fit
  std::thread thread;

  Impl(const model::Transformer& model, EngineOptions o) : m(model), opt(o) {
    opt.validate();
    const model::ModelConfig& c = m.config();
    int64_t blocks = opt.kv_blocks;
    if (blocks == 0)
      blocks = opt.max_running * ((c.max_position_embeddings + opt.kv_block_size - 1) / opt.kv_block_size);
    kv = model::PagedKVCache(model::kv_dims(c), m.dtype(), opt.kv_block_size, blocks);
    if (opt.lockstep) opt.lockstep->announce_pool(opt.kv_block_size, blocks);
    st.kv_blocks_total = blocks;
    for (int64_t l = 0; l < c.num_hidden_layers; ++l)
      if (const MoELayer* ml = m.moe_layer(l)) {
        st.moe_layers.push_back(l);
        st.expert_hits.emplace_back(static_cast<size_t>(ml->config().n_experts), 0);
      }
  }

  void validate(const Request& r) const {
    const model::ModelConfig& c = m.config();
    MOE_CHECK(!r.prompt.empty(), "request: the prompt has no tokens");
    for (size_t i = 0; i < r.prompt.size(); ++i)
      MOE_CHECK(r.prompt[i] >= 0 && r.prompt[i] < c.vocab_size, "request: prompt token ", i, " (id ",
                r.prompt[i], ") is outside the vocabulary [0, ", c.vocab_size, ")");
    MOE_CHECK(r.max_new_tokens >= 0, "request: max_new_tokens must be >= 0, got ", r.max_new_tokens);
    const int64_t ctx = static_cast<int64_t>(r.prompt.size()) + r.max_new_tokens;
    MOE_CHECK(ctx <= c.max_position_embeddings, "request: prompt (", r.prompt.size(),
              " tokens) + max_new_tokens (", r.max_new_tokens, ") exceeds the model's context of ",
              c.max_position_embeddings, " tokens");
    MOE_CHECK(kv.blocks_for(ctx) <= kv.n_blocks(), "request: ", ctx, " positions need ", kv.blocks_for(ctx),
              " KV blocks but the pool has only ", kv.n_blocks());
    r.sampling.validate();
  }

  std::optional<uint64_t> submit(Request r, bool wait_for_room) {
    validate(r);
    std::unique_lock<std::mutex> lk(mu);
    if (!fatal.empty()) throw EngineFailed(fatal);
    MOE_CHECK(!stop, "engine: submit() while the engine is shutting down");
    if (static_cast<int64_t>(queue.size()) >= opt.max_queue) {
      if (!wait_for_room) {
        ++st.requests_rejected;
        return std::nullopt;
      }
      cv_room.wait(lk, [&] {
        return stop || !fatal.empty() ||
               static_cast<int64_t>(queue.size()) < std::max<int64_t>(opt.max_queue, 1);
      });
      if (!fatal.empty()) throw EngineFailed(fatal);
      MOE_CHECK(!stop, "engine: submit() while the engine is shutting down");
    }
    const uint64_t id = next_id++;
    queue.push_back({id, std::move(r), Clock::now()});
    live.insert(id);
    st.queued = static_cast<int64_t>(queue.size());
    cv_work.notify_one();
    return id;
  }

  // Ends a request: statistics under the lock, the callback outside it.
  void finish(uint64_t id, Request& req, Finished f) {
    {
      std::lock_guard<std::mutex> lk(mu);
      live.erase(id);
      ++st.requests_finished;
    }
    if (req.on_finish) {
      try {
        req.on_finish(f);
      } catch (...) {
        // A throwing callback must not take the engine down; the request is over either way.
      }
    }
  }

  void finish_seq(Seq& s, const std::string& reason, const std::string& error = {}) {
    kv.free(s.table);
    Finished f;
    f.id = s.id;
    f.tokens = s.out;
    f.finish_reason = reason;
    f.error = error;
    f.prompt_tokens = s.prompt_len();
    const Clock::time_point now = Clock::now();
    f.queue_s = seconds(s.t_submit, s.t_admit);
    f.ttft_s = s.ttft_s;
    f.total_s = seconds(s.t_submit, now);
    finish(s.id, s.req, std::move(f));
  }

  void finish_pending(Pending& p, const std::string& reason, const std::string& error = {}) {
    Finished f;
    f.id = p.id;
    f.finish_reason = reason;
    f.error = error;
    f.prompt_tokens = static_cast<int64_t>(p.req.prompt.size());
    f.queue_s = f.total_s = seconds(p.t_submit, Clock::now());
    finish(p.id, p.req, std::move(f));
  }

  // A fatal error (expert parallelism lost a rank): every request ends with it, submits are refused
  // from now on, and the loop ends.
  void fail_all(const std::string& what) {
    std::deque<Pending> rest;
    {
      std::lock_guard<std::mutex> lk(mu);
      fatal = what;
      rest.swap(queue);
      st.queued = 0;
    }
    cv_room.notify_all();
    // The owner hears first: a caller waiting on the requests then finds it told when they end.
    if (opt.on_fatal) {
      try {
        opt.on_fatal(what);
      } catch (...) {
        // The engine is stopping either way.
      }
    }
    for (auto& s : running)
      if (s) finish_seq(*s, "error", what);
    running.clear();
    for (Pending& p : rest) finish_pending(p, "error", what);
  }

  // Removes the sequences marked done (null entries) from `running`.
  void compact() { running.erase(std::remove(running.begin(), running.end(), nullptr), running.end()); }

  // One engine iteration after admission: batch, forward, sample, retire.
  void step() {
    // --- build the batch: decodes first (round robin when they do not all fit), then prefill chunks
    int64_t budget = opt.max_batch_tokens;
    std::vector<Seq*> order;
    std::vector<model::BatchSeq> batch;
    const size_t n = running.size();
    for (size_t k = 0; k < n && budget > 0; ++k) {
      Seq* s = running[(rr + k) % n].get();
      if (!s->has_next) continue;
      model::BatchSeq b;
      b.tokens = &s->out.back();
      b.n = 1;
      b.start = s->cached;
      b.block_table = &s->table;
      b.want_logits = true;
      batch.push_back(b), order.push_back(s), --budget;
    }
    rr = n ? (rr + 1) % n : 0;
    int64_t prefill = 0;
    for (size_t k = 0; k < n && budget > 0; ++k) {
      Seq* s = running[k].get();
      if (s->cached >= s->prompt_len()) continue;
      model::BatchSeq b;
      b.n = std::min(budget, s->prompt_len() - s->cached);
      b.tokens = s->req.prompt.data() + s->cached;
      b.start = s->cached;
      b.block_table = &s->table;
      b.want_logits = s->cached + b.n == s->prompt_len() && s->req.max_new_tokens > 0;
      batch.push_back(b), order.push_back(s), budget -= b.n, prefill += b.n;
    }
    if (batch.empty()) return;

    // --- forward
    const Clock::time_point t0 = Clock::now();
    model::BatchResult res;
    try {
      if (opt.lockstep) opt.lockstep->announce_batch(batch);
      res = model::forward_batch(m, kv, batch);
    } catch (const dist::CommError& e) {
      if (opt.lockstep) opt.lockstep->mark_failed();
      fail_all(cat("expert parallelism failed, the engine stopped: ", e.what()));
      return;
    } catch (const std::exception& e) {
      if (opt.lockstep) {  // the other ranks may be in another collective now: no way back in step
        opt.lockstep->mark_failed();
        fail_all(cat("expert parallelism failed, the engine stopped: a forward pass failed on rank 0: ",
                     e.what()));
        return;
      }
      // Requests are validated at submit, so this is unexpected: fail the batch, keep serving.
      for (Seq* s : order) {
        finish_seq(*s, "error", cat("forward pass failed: ", e.what()));
        for (auto& p : running)
          if (p.get() == s) p.reset();
      }
      compact();
      return;
    }
    for (size_t i = 0; i < batch.size(); ++i) order[i]->cached += batch[i].n;
    {
      std::lock_guard<std::mutex> lk(mu);
      ++st.forward_passes;
      st.batch_tokens_last = opt.max_batch_tokens - budget;
      st.batch_seqs_last = static_cast<int64_t>(batch.size());
      st.batch_tokens_sum += st.batch_tokens_last;
      st.batch_seqs_sum += st.batch_seqs_last;
      st.prompt_tokens += prefill;
      for (size_t j = 0; j < res.stats.size(); ++j) {
        const std::vector<int64_t>& tpe = res.stats[j].tokens_per_expert;
        std::vector<int64_t>& hits = st.expert_hits[j];
        for (size_t e = 0; e < tpe.size() && e < hits.size(); ++e) hits[e] += tpe[e];
      }
    }

    // --- sample, call back, retire
    const int64_t V = m.config().vocab_size;
    std::vector<float> row(static_cast<size_t>(V));
    int64_t r = 0, generated = 0;
    std::vector<std::pair<Seq*, std::pair<std::string, std::string>>> done;  // seq, (reason, error)
    for (size_t i = 0; i < batch.size(); ++i) {
      Seq* s = order[i];
      if (!batch[i].want_logits) {
        if (s->cached == s->prompt_len() && s->req.max_new_tokens == 0) done.push_back({s, {"length", ""}});
        continue;
      }
      const int64_t lr = r++;
      int32_t t = -1;
      try {
        if (res.logits.dtype() == DType::F64) {
          const double* src = res.logits.data<double>() + lr * V;
          for (int64_t v = 0; v < V; ++v) row[static_cast<size_t>(v)] = static_cast<float>(src[v]);
        } else {
          const float* src = res.logits.data<float>() + lr * V;
          std::copy(src, src + V, row.begin());
        }
        const TokenHistory hist{s->req.prompt.data(), s->prompt_len(), s->out.data(),
                                static_cast<int64_t>(s->out.size())};
        t = sample_token(row.data(), V, s->req.sampling, static_cast<uint64_t>(s->out.size()), hist);
      } catch (const std::exception& e) {
        done.push_back({s, {"error", cat("sampling failed: ", e.what())}});
        continue;
      }
      s->out.push_back(t);
      ++generated;
      if (s->out.size() == 1) s->ttft_s = seconds(s->t_submit, Clock::now());
      bool go_on = true;
      if (s->req.on_token) {
        try {
          go_on = s->req.on_token(t);
        } catch (const std::exception& e) {
          done.push_back({s, {"error", cat("on_token failed: ", e.what())}});
          continue;
        }
      }
      const bool stop_id =
          std::find(s->req.stop_ids.begin(), s->req.stop_ids.end(), t) != s->req.stop_ids.end();
      if (!go_on || stop_id)
        done.push_back({s, {"stop", ""}});
      else if (static_cast<int64_t>(s->out.size()) >= s->req.max_new_tokens)
        done.push_back({s, {"length", ""}});
      else
        s->has_next = true;
    }
    {
      std::lock_guard<std::mutex> lk(mu);
      st.generated_tokens += generated;
      st.busy_s += seconds(t0, Clock::now());
    }
    for (auto& [s, why] : done) {
      finish_seq(*s, why.first, why.second);
      for (auto& p : running)
        if (p.get() == s) p.reset();
    }
    compact();
  }

  void loop() {
    for (;;) {
      std::vector<Pending> dropped;  // queued requests cancelled
      {
        std::unique_lock<std::mutex> lk(mu);
        cv_work.wait(lk, [&] { return stop || !queue.empty() || !running.empty() || !cancels.empty(); });
        if (stop) break;
        if (!cancels.empty()) {
          for (auto it = queue.begin(); it != queue.end();) {
            if (cancels.count(it->id)) {
              dropped.push_back(std::move(*it));
              it = queue.erase(it);
            } else {
              ++it;
            }
          }
          for (auto& s : running)
            if (cancels.count(s->id)) s->cancel = true;
          cancels.clear();
        }
        // FIFO admission while a sequence slot and blocks for the whole context are free.
        bool admitted = false;
        while (!queue.empty() && static_cast<int64_t>(running.size()) < opt.max_running) {
          Pending& p = queue.front();
          const int64_t need =
              kv.blocks_for(static_cast<int64_t>(p.req.prompt.size()) + p.req.max_new_tokens);
          if (need > kv.free_blocks()) break;
          auto s = std::make_unique<Seq>();
          s->id = p.id;
          s->req = std::move(p.req);
          s->t_submit = p.t_submit;
          s->t_admit = Clock::now();
          kv.allocate(s->table, need);
          running.push_back(std::move(s));
          queue.pop_front();
          admitted = true;
        }
        st.queued = static_cast<int64_t>(queue.size());
        if (admitted || !dropped.empty()) cv_room.notify_all();
      }
      for (Pending& p : dropped) finish_pending(p, "cancelled");
      for (auto& s : running)
        if (s->cancel) finish_seq(*s, "cancelled"), s.reset();
      compact();
      step();
      std::lock_guard<std::mutex> lk(mu);
      st.running = static_cast<int64_t>(running.size());
      st.kv_blocks_used = kv.used_blocks();
      if (!fatal.empty()) break;
    }
    // Shutting down: every unfinished request ends with "cancelled".
    std::deque<Pending> rest;
    {
      std::lock_guard<std::mutex> lk(mu);
      rest.swap(queue);
      st.queued = 0;
    }
    for (auto& s : running) finish_seq(*s, "cancelled");
    running.clear();
    for (Pending& p : rest) finish_pending(p, "cancelled");
    std::lock_guard<std::mutex> lk(mu);
    st.running = 0;
    st.kv_blocks_used = kv.used_blocks();
  }
};

Engine::Engine(const model::Transformer& model, EngineOptions opt)
    : impl_(std::make_unique<Impl>(model, opt)) {
  impl_->thread = std::thread([this] { impl_->loop(); });
}

Engine::~Engine() {
  {
    std::lock_guard<std::mutex> lk(impl_->mu);
    impl_->stop = true;
  }
  impl_->cv_work.notify_all();
  impl_->cv_room.notify_all();
  if (impl_->thread.joinable()) impl_->thread.join();
}

std::optional<uint64_t> Engine::submit(Request r) { return impl_->submit(std::move(r), false); }

void Engine::cancel(uint64_t id) {
  std::lock_guard<std::mutex> lk(impl_->mu);
  if (!impl_->live.count(id)) return;
  impl_->cancels.insert(id);
  impl_->cv_work.notify_one();
}

EngineStats Engine::stats() const {
  std::lock_guard<std::mutex> lk(impl_->mu);
  return impl_->st;
}

const model::Transformer& Engine::model() const { return impl_->m; }

std::string Engine::fatal_error() const {
  std::lock_guard<std::mutex> lk(impl_->mu);
  return impl_->fatal;
}

std::vector<Finished> Engine::run_all(std::vector<Request> requests) {
  for (const Request& r : requests) impl_->validate(r);  // all or nothing
  struct Shared {
    std::mutex mu;
    std::condition_variable cv;
    std::vector<Finished> out;
    size_t done = 0;
  };
  auto sh = std::make_shared<Shared>();
  sh->out.resize(requests.size());
  size_t submitted = 0;
  std::exception_ptr err;
  for (size_t i = 0; i < requests.size(); ++i) {
    Request& r = requests[i];
    auto user = std::move(r.on_finish);
    r.on_finish = [sh, i, user](const Finished& f) {
      try {
        if (user) user(f);
      } catch (...) {
      }
      std::lock_guard<std::mutex> lk(sh->mu);
      sh->out[i] = f;
      ++sh->done;
      sh->cv.notify_all();
    };
    try {
      impl_->submit(std::move(r), true);
      ++submitted;
    } catch (...) {
      err = std::current_exception();
      break;
    }
  }
  std::unique_lock<std::mutex> lk(sh->mu);
  sh->cv.wait(lk, [&] { return sh->done == submitted; });
  if (err) std::rethrow_exception(err);
  return sh->out;
}

}  // namespace moe::infer
