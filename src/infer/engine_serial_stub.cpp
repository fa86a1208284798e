// A serial stand-in for the continuous-batching Engine (include/moe/infer/engine.h): one engine
// thread runs one request at a time with its own KV cache (no batching across requests). It keeps
// the contract's behaviour (queue limit, cancel, callbacks, stats) so that the server runs before
// the batching engine replaces this file.
#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "moe/core/error.h"
#include "moe/infer/engine.h"

namespace moe::infer {

using Clock = std::chrono::steady_clock;

void EngineOptions::validate() const {
  MOE_CHECK(max_batch_tokens >= 1, "engine: max_batch_tokens must be >= 1, got ", max_batch_tokens);
  MOE_CHECK(max_running >= 1, "engine: max_running must be >= 1, got ", max_running);
  MOE_CHECK(max_queue >= 0, "engine: max_queue must be >= 0, got ", max_queue);
  MOE_CHECK(kv_block_size >= 1, "engine: kv_block_size must be >= 1, got ", kv_block_size);
  MOE_CHECK(kv_blocks >= 0, "engine: kv_blocks must be >= 0, got ", kv_blocks);
}

struct Engine::Impl {
  struct Item {
    uint64_t id;
    Request r;
    Clock::time_point submitted;
  };
  const model::Transformer& m;
  EngineOptions opt;
  mutable std::mutex mu;
  std::condition_variable cv;
  std::deque<Item> queue;
  uint64_t next_id = 1, running_id = 0;
  bool cancel_running = false, quit = false;
  EngineStats stats;
  std::thread th;

  Impl(const model::Transformer& model, EngineOptions o) : m(model), opt(o) {}

  void run_one(Item& it) {
    Finished f;
    f.id = it.id;
    f.prompt_tokens = static_cast<int64_t>(it.r.prompt.size());
    f.finish_reason = "length";
    const Clock::time_point admitted = Clock::now();
    f.queue_s = std::chrono::duration<double>(admitted - it.submitted).count();
    try {
      const int64_t V = m.config().vocab_size;
      model::KVCache cache = m.new_cache(f.prompt_tokens + it.r.max_new_tokens);
      Tensor logits = m.decode(cache, it.r.prompt.data(), f.prompt_tokens);
      {
        std::lock_guard<std::mutex> lock(mu);
        stats.prompt_tokens += f.prompt_tokens;
        ++stats.forward_passes;
        stats.batch_tokens_last = f.prompt_tokens;
        stats.batch_seqs_last = 1;
      }
      for (int64_t i = 0; i < it.r.max_new_tokens; ++i) {
        {
          std::lock_guard<std::mutex> lock(mu);
          if (cancel_running || quit) {
            f.finish_reason = "cancelled";
            break;
          }
        }
        Tensor lf = logits.dtype() == DType::F32 ? logits.clone() : logits.to(DType::F32);
        apply_penalties(lf.data<float>(), V, it.r.sampling, it.r.prompt, f.tokens);
        const int32_t t = sample_token(lf.data<float>(), V, it.r.sampling, static_cast<uint64_t>(i));
        f.tokens.push_back(t);
        if (f.tokens.size() == 1) f.ttft_s = std::chrono::duration<double>(Clock::now() - it.submitted).count();
        {
          std::lock_guard<std::mutex> lock(mu);
          ++stats.generated_tokens;
        }
        if (it.r.on_token && !it.r.on_token(t)) {
          f.finish_reason = "stop";
          break;
        }
        if (std::find(it.r.stop_ids.begin(), it.r.stop_ids.end(), t) != it.r.stop_ids.end()) {
          f.finish_reason = "stop";
          break;
        }
        if (i + 1 == it.r.max_new_tokens) break;
        logits = m.decode(cache, &t, 1);
        std::lock_guard<std::mutex> lock(mu);
        ++stats.forward_passes;
        stats.batch_tokens_last = 1;
      }
    } catch (const std::exception& e) {
      f.finish_reason = "error";
      f.error = e.what();
    }
    f.total_s = std::chrono::duration<double>(Clock::now() - it.submitted).count();
    {
      std::lock_guard<std::mutex> lock(mu);
      stats.busy_s += std::chrono::duration<double>(Clock::now() - admitted).count();
      ++stats.requests_finished;
    }
    if (it.r.on_finish) it.r.on_finish(f);
  }

  void loop() {
    for (;;) {
      Item it;
      {
        std::unique_lock<std::mutex> lock(mu);
        cv.wait(lock, [&] { return quit || !queue.empty(); });
        if (quit) break;
        it = std::move(queue.front());
        queue.pop_front();
        running_id = it.id;
        cancel_running = false;
        stats.queued = static_cast<int64_t>(queue.size());
        stats.running = 1;
      }
      run_one(it);
      std::lock_guard<std::mutex> lock(mu);
      running_id = 0;
      stats.running = 0;
    }
    std::deque<Item> left;
    {
      std::lock_guard<std::mutex> lock(mu);
      left.swap(queue);
    }
    for (Item& it : left) {
      Finished f;
      f.id = it.id;
      f.finish_reason = "cancelled";
      f.prompt_tokens = static_cast<int64_t>(it.r.prompt.size());
      if (it.r.on_finish) it.r.on_finish(f);
    }
  }
};

Engine::Engine(const model::Transformer& model, EngineOptions opt) {
  opt.validate();
  impl_ = std::make_unique<Impl>(model, opt);
  impl_->th = std::thread([this] { impl_->loop(); });
}

Engine::~Engine() {
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->quit = true;
  }
  impl_->cv.notify_all();
  impl_->th.join();
}

std::optional<uint64_t> Engine::submit(Request r) {
  const model::ModelConfig& c = impl_->m.config();
  MOE_CHECK(!r.prompt.empty(), "engine: the prompt has no tokens");
  for (int32_t t : r.prompt) MOE_CHECK(t >= 0 && t < c.vocab_size, "engine: prompt token ", t, " is outside the vocabulary");
  MOE_CHECK(r.max_new_tokens >= 0, "engine: max_new_tokens must be >= 0");
  MOE_CHECK(static_cast<int64_t>(r.prompt.size()) + r.max_new_tokens <= c.max_position_embeddings,
            "engine: prompt + max_new_tokens is beyond the model's context of ", c.max_position_embeddings);
  r.sampling.validate();
  std::lock_guard<std::mutex> lock(impl_->mu);
  if (static_cast<int64_t>(impl_->queue.size()) >= impl_->opt.max_queue) {
    ++impl_->stats.requests_rejected;
    return std::nullopt;
  }
  const uint64_t id = impl_->next_id++;
  impl_->queue.push_back({id, std::move(r), Clock::now()});
  impl_->stats.queued = static_cast<int64_t>(impl_->queue.size());
  impl_->cv.notify_all();
  return id;
}

void Engine::cancel(uint64_t id) {
  Impl::Item it;
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    if (impl_->running_id == id) {
      impl_->cancel_running = true;
      return;
    }
    auto p = std::find_if(impl_->queue.begin(), impl_->queue.end(), [&](const Impl::Item& x) { return x.id == id; });
    if (p == impl_->queue.end()) return;
    it = std::move(*p);
    impl_->queue.erase(p);
    impl_->stats.queued = static_cast<int64_t>(impl_->queue.size());
  }
  Finished f;
  f.id = id;
  f.finish_reason = "cancelled";
  f.prompt_tokens = static_cast<int64_t>(it.r.prompt.size());
  if (it.r.on_finish) it.r.on_finish(f);
}

EngineStats Engine::stats() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->stats;
}

const model::Transformer& Engine::model() const { return impl_->m; }

std::vector<Finished> Engine::run_all(std::vector<Request> requests) {
  std::vector<Finished> out(requests.size());
  std::mutex mu;
  std::condition_variable cv;
  size_t left = requests.size();
  for (size_t i = 0; i < requests.size(); ++i) {
    Request r = std::move(requests[i]);
    auto user = r.on_finish;
    r.on_finish = [&, i, user](const Finished& f) {
      if (user) user(f);
      std::lock_guard<std::mutex> lock(mu);
      out[i] = f;
      --left;
      cv.notify_all();
    };
    while (!submit(r)) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return left == 0; });
  return out;
}

}  // namespace moe::infer
