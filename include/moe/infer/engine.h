// Continuous-batching inference engine: many requests share each forward pass.
//
// One engine thread owns the model and a paged KV cache. Each iteration it
//   1. admits waiting requests (FIFO) while KV blocks and the running-sequence limit allow,
//   2. builds one batch of at most max_batch_tokens tokens: one decode token for every running
//      sequence, then prefill chunks of newly admitted prompts (long prompts are split over
//      several iterations, so prefill and decode mix in the same forward pass),
//   3. runs the batched forward (attention per sequence over its own cache blocks; every linear
//      layer and every MoE layer over all the batch's tokens at once),
//   4. samples one token for every sequence whose prompt is complete, calls its on_token, and
//      retires sequences that finished, freeing their blocks.
// Greedy outputs do not depend on what else is in the batch: a request served alongside others
// yields exactly the tokens it yields alone (tested).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "moe/infer/sampler.h"
#include "moe/model/transformer.h"

namespace moe::infer {

// Upper bounds of the options (validate() refuses larger values): far above what one process
// serves, low enough that nothing sized from them (KV pool, queues, threads) can exhaust memory.
constexpr int64_t kMaxBatchTokens = int64_t{1} << 20;
constexpr int64_t kMaxRunning = 4096;
constexpr int64_t kMaxQueue = int64_t{1} << 16;
constexpr int64_t kMaxKvBlockSize = int64_t{1} << 16;
constexpr int64_t kMaxKvBlocks = int64_t{1} << 24;

struct EngineOptions {
  int64_t max_batch_tokens = 512;  // tokens in one forward pass (decodes + prefill chunks), >= 1
  int64_t max_running = 16;        // sequences admitted at once (decoding or prefilling), >= 1
  int64_t max_queue = 64;          // requests waiting for admission; submit() refuses beyond it
  int64_t kv_block_size = 16;      // positions per KV block
  int64_t kv_blocks = 0;           // blocks in the pool; 0 = enough for max_running full contexts
                                   // (capped by the model's max_position_embeddings)
  // Expert parallelism (moe/infer/lockstep.h): this engine leads (rank 0) and announces its KV pool
  // and every forward pass to the other ranks, which repeat them (the owner of the Lockstep
  // announces the end, so several engines may lead one after the other). Null: one process. A
  // communication failure (a rank that died or hangs beyond the communicator's timeout) is fatal:
  // every request, running or queued, ends with "error", later submits are refused, and
  // Engine::fatal_error() says what happened.
  std::shared_ptr<class Lockstep> lockstep;
  // Called once on the engine thread after a fatal error, with its message (may be empty).
  std::function<void(const std::string&)> on_fatal;
  void validate() const;  // throws moe::Error naming the bad option
};

// What a request ended with.
struct Finished {
  uint64_t id = 0;
  std::vector<int32_t> tokens;  // the new tokens (a stop id that ended it is included)
  std::string finish_reason;    // "stop" (a stop id, or on_token returned false), "length"
                                // (max_new_tokens or the model's context), "cancelled", "error"
  std::string error;            // set when finish_reason == "error"
  int64_t prompt_tokens = 0;
  double queue_s = 0;  // submit -> admission
  double ttft_s = 0;   // submit -> first new token
  double total_s = 0;  // submit -> finish
};

struct Request {
  std::vector<int32_t> prompt;   // non-empty; prompt + max_new_tokens <= max_position_embeddings
  int64_t max_new_tokens = 128;  // >= 0 (0: only the prompt is processed)
  SamplingOptions sampling;
  std::vector<int32_t> stop_ids;  // generation ends after producing one of these
  // Called on the engine thread for every new token, in order. Returning false ends the request
  // with finish_reason "stop" (stop strings are detected this way by the caller). May be empty.
  std::function<bool(int32_t token)> on_token;
  // Called exactly once on the engine thread when the request ends (also when cancelled or failed,
  // and for requests still queued when the engine is destroyed). May be empty.
  std::function<void(const Finished&)> on_finish;
};

struct EngineStats {
  int64_t queued = 0;             // waiting now
  int64_t running = 0;            // admitted now
  int64_t requests_finished = 0;  // since start
  int64_t requests_rejected = 0;  // submit() refused (queue full)
  int64_t prompt_tokens = 0;      // prefilled since start
  int64_t generated_tokens = 0;   // sampled since start
  int64_t forward_passes = 0;
  int64_t batch_tokens_last = 0;  // tokens in the latest forward pass
  int64_t batch_seqs_last = 0;    // sequences in the latest forward pass
  int64_t batch_tokens_sum = 0;   // over all forward passes (mean = sum / forward_passes)
  int64_t batch_seqs_sum = 0;
  double busy_s = 0;  // time spent in forward passes and sampling
  int64_t kv_blocks_total = 0, kv_blocks_used = 0;
  std::vector<int64_t> moe_layers;                // layer index of each row below
  std::vector<std::vector<int64_t>> expert_hits;  // per MoE layer, per expert: tokens routed
};

// What submit() throws once the engine stopped on a fatal error (Engine::fatal_error()).
class EngineFailed : public Error {
 public:
  using Error::Error;
};

class Engine {
 public:
  Engine(const model::Transformer& model, EngineOptions opt);  // starts the engine thread
  ~Engine();  // stops the thread; unfinished requests end with "cancelled"
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Validates the request (throws moe::Error naming what is wrong: empty prompt, a token id outside
  // the vocabulary, prompt + max_new_tokens beyond the context, bad sampling options; EngineFailed
  // after a fatal error) and queues it. Returns its id, or nullopt when max_queue requests are
  // already waiting.
  std::optional<uint64_t> submit(Request r);
  // Ends a queued or running request with "cancelled" (no-op when unknown or already finished).
  void cancel(uint64_t id);
  EngineStats stats() const;
  const model::Transformer& model() const;
  // Non-empty once a fatal error (expert parallelism's communication) stopped the engine.
  std::string fatal_error() const;

  // Convenience: submits every request (waiting for queue room), blocks until all finish and
  // returns their results in the order given.
  std::vector<Finished> run_all(std::vector<Request> requests);

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace moe::infer
