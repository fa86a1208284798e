// Expert-parallel inference over the ranks of one communicator (`mpirun -np N moe serve|generate|
// bench generate --expert-parallel N`).
//
// Every rank holds a replica of the dense parts (embeddings, attention, norms, router, shared
// experts, head) and 1/N of the routed experts (model::Transformer with ExpertParallel::
// replicated_tokens; only those experts are read from the checkpoint). Rank 0, the leader, runs
// the engine: the HTTP server, admission, batching and sampling. Before each forward pass it
// announces the batch (every sequence's new tokens, start position and KV block table) and the
// other ranks, the followers, run the same forward pass on their own replica of the KV cache. In
// each MoE layer every rank computes its experts' rows of every token and one all-reduce sums the
// weighted rows (moe/moe/expert_parallel.h), so every rank holds the same hidden states and the
// outputs equal a single process's. Followers compute no logits they do not need: the leader
// samples.
//
// Messages are broadcasts from rank 0: a fixed header, then one payload of int64 values.
// Faults: the leader's calls wait at most the communicator's timeout and throw dist::CommError (the
// engine then fails its requests and reports the error: moe/infer/engine.h). A follower waits for
// the next message without a time limit (an idle server sends none); mpirun ends it when the leader
// exits.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "moe/dist/comm.h"
#include "moe/model/paged_kv.h"

namespace moe::infer {

class Lockstep {
 public:
  // comm: the expert-parallel ranks (the model's ExpertParallel communicator).
  explicit Lockstep(std::shared_ptr<dist::Communicator> comm);
  bool leader() const { return comm_->rank() == 0; }
  dist::Communicator& comm() { return *comm_; }

  // ---- leader ----
  // The KV pool the following batches index (before the first batch, and whenever it changes).
  void announce_pool(int64_t block_size, int64_t n_blocks);
  // A forward pass: call right before model::forward_batch with the same sequences.
  void announce_batch(const std::vector<model::BatchSeq>& seqs);
  // Ends the followers' loop (once; later calls do nothing, as do calls after mark_failed()).
  void announce_stop();
  // A collective failed (dist::CommError): the communicator is unusable, nothing more is announced.
  void mark_failed() { failed_ = true; }
  bool failed() const { return failed_; }

  // ---- followers ----
  // Runs what the leader announces on m until it announces stop. Throws moe::Error on a malformed
  // message and dist::CommError on a communication failure.
  void follow(const model::Transformer& m);

  // Statistics of this rank: forward passes run in lockstep.
  int64_t batches() const { return batches_; }

 private:
  std::shared_ptr<dist::Communicator> comm_;
  bool stopped_ = false, failed_ = false;
  int64_t batches_ = 0;
};

}  // namespace moe::infer
