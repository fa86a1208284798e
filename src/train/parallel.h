// The distributed parts of the trainer (expert × data parallelism over a dist::Communicator): the
// gradient all-reduce, the global gradient norm, statistics, sharded checkpoints and the optimizer
// state that moves between expert-parallel sizes.
//
// Layout: world = ep · dp ranks (dist::make_groups). Every rank takes batch_size / world sequences
// of each global batch. Routed-expert parameters are sharded over the ep group: after backward each
// holds the gradient of every ep rank's tokens for its experts (the all-to-all brought them), summed
// over the dp group. Every other parameter is replicated and its gradient summed over the world.
// The cross-entropy is scaled by the GLOBAL token count, so these sums are the single-process
// gradient of the whole batch (up to summation order).
#pragma once

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "moe/dist/comm.h"
#include "moe/model/transformer.h"
#include "moe/train/optim.h"

namespace moe::train::par {

// True when `g` spans more than one rank.
inline bool active(const dist::ParallelGroups* g) { return g && g->world && g->world->size() > 1; }
inline bool is_root(const dist::ParallelGroups* g) { return !active(g) || g->world->rank() == 0; }

// Runs fn on world rank 0 only, then tells every rank whether it succeeded: a failure there throws on
// every rank (rank 0 with its own message, the others naming rank 0's), so none waits forever.
void on_root(const dist::ParallelGroups* g, const std::string& what, const std::function<void()>& fn);
// Every rank checks `ok`; when any rank's is false, every rank throws (naming what and the rank).
void all_ok(const dist::ParallelGroups* g, bool ok, const std::string& what);

// Sums every gradient over the ranks that share it (see the header comment).
void allreduce_grads(const dist::ParallelGroups& g, std::vector<ParamRef>& refs);
// sqrt(Σ g²) over the whole model: replicated gradients once, each expert shard once.
double global_grad_norm(const dist::ParallelGroups& g, const std::vector<ParamRef>& refs);
// Sums the loss, counts and routed-expert counts of a step over the world.
void allreduce_step(const dist::ParallelGroups& g, double& loss_sum, int64_t& count, double& aux,
                    std::vector<MoEStats>& stats);

// Checkpoint tensors of a model held in shards: rank (ep_rank) of ep writes
// model-<ep_rank+1>-of-<ep>.safetensors with its experts (rank 0 also the replicated tensors),
// optimizer-<ep_rank+1>-of-<ep>.safetensors likewise; rank 0 writes model.safetensors.index.json and
// config.json. Only the dp_rank 0 replicas write. Collective over the world (ends with a barrier).
void save_sharded(const dist::ParallelGroups& g, const model::Transformer& m, const AdamW& adam,
                  const std::string& dir);

// The optimizer state of `m`'s parameters from the checkpoint `dir`, whatever expert-parallel size
// wrote it: optimizer.safetensors (one file, stacked expert tensors) or optimizer-*-of-*.safetensors
// (shards, one entry per expert); the stacked tensors of this rank's experts are cut or assembled
// from either. Ready for AdamW::import_state.
std::map<std::string, Tensor> load_optimizer_state(const std::string& dir, const model::Transformer& m);

}  // namespace moe::train::par
