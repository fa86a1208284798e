// Expert offloading: the routed experts of a model live in tiers and are moved ahead of need.
//
//   resident  a budget of expert slots in RAM (--resident-experts N or --expert-cache-gb X), in the
//             compute format (bf16, f32, or the checkpoint's int8/int4);
//   host      the memory-mapped checkpoint: the OS page cache (io = mmap);
//   disk      the checkpoint file read with O_DIRECT, bypassing the page cache (io = direct): what a
//             model larger than RAM costs.
// (No GPU tier is built: on a machine with a GPU the resident tier would be device memory.)
//
// Each MoE layer gets an ExpertExecutor (moe/moe/layer.h) that, for the experts a forward routed to:
// pins those already resident (a hit), loads the others (a miss: read from the source, converted to
// the compute format, placed in a slot freed by the cache policy), computes each expert's FFN and
// unpins it. Eviction never drops a pinned expert or one still loading. Prefetch predicts the next
// MoE layers' experts from the current layer's router input and choices (pre-gating, or a predictor
// learned on calibration text: moe/infer/expert_predictor.h) and loads them on loader threads while
// the current layer computes. Outputs do not depend on the budget, the policy, the predictor or the
// prefetch (each expert is computed by the same kernel on the same weights whichever tier it came
// from). The executors serve one forward at a time (the engine's thread); statistics may be read
// from any thread.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "moe/infer/expert_predictor.h"
#include "moe/model/transformer.h"

namespace moe::infer {

enum class CachePolicy {
  Lru,         // evict the least recently used expert
  Lfu,         // evict the least frequently used (ties: least recent)
  Activation,  // evict the expert whose next use is expected last (see docs/OFFLOADING.md)
};
CachePolicy cache_policy_from_name(const std::string& s);  // "lru", "lfu", "activation"; throws
const char* cache_policy_name(CachePolicy p);

enum class ExpertIo { Mmap, Direct };
ExpertIo expert_io_from_name(const std::string& s);  // "mmap", "direct"; throws
const char* expert_io_name(ExpertIo io);

// What a miss does: load the expert into a slot; compute it straight from the mapped checkpoint
// without loading (only with io = mmap and a checkpoint already in the compute format; otherwise a
// load); or choose by the cost model measured at start (auto).
enum class MissMode { Load, Compute, Auto };
MissMode miss_mode_from_name(const std::string& s);  // "load", "compute", "auto"; throws
const char* miss_mode_name(MissMode m);

struct ExpertStoreOptions {
  int64_t resident_experts = -1;  // budget in experts over all MoE layers; -1: every expert resident
  double cache_gb = 0;            // budget in GiB of expert weights; > 0 takes precedence
  CachePolicy policy = CachePolicy::Activation;
  bool prefetch = true;
  int prefetch_depth = 1;        // MoE layers ahead to predict
  int64_t prefetch_experts = 0;  // experts predicted per layer (0: the router's top-k)
  // What predicts the next layers' experts (moe/infer/expert_predictor.h): "auto" (the model
  // directory's expert_predictor.safetensors when present, else pre-gating), "pregate", or the path
  // of a predictor file written by `moe predictor`.
  std::string predictor = "auto";
  ExpertIo io = ExpertIo::Mmap;
  int io_threads = 2;  // loader threads (reads in flight at once)
  MissMode miss = MissMode::Load;
  std::string format = "auto";  // "f32", "bf16", "auto" (the checkpoint's int8/int4 if quantized, else bf16),
                                // "w8a8" (int8), "w4a8" (int4)
  bool warm = true;             // fill the budget at start (experts in layer order), not counted in stats
};

struct ExpertStoreStats {
  int64_t hits = 0;               // expert uses whose weights were resident when the layer ran
  int64_t misses = 0;             // uses that had to wait for weights (including late prefetches)
  int64_t late_prefetches = 0;    // misses whose prefetch was still loading
  int64_t computed_in_place = 0;  // misses computed from the mapped checkpoint without a load
  int64_t prefetch_issued = 0, prefetch_used = 0, prefetch_wasted = 0;  // wasted: evicted unused
  int64_t loads = 0, evictions = 0;
  uint64_t bytes_moved = 0;                      // bytes read from the checkpoint for loads
  double stall_seconds = 0;                      // time the forward waited for weights
  double load_seconds = 0;                       // time spent loading (loader thread and forward together)
  int64_t capacity = 0, resident = 0;            // slots, and experts resident now
  uint64_t expert_bytes = 0;                     // bytes of one slot
  std::vector<int64_t> layers;                   // transformer index of each MoE layer
  std::vector<std::vector<int64_t>> layer_hits;  // per MoE layer, per expert
  std::vector<std::vector<int64_t>> layer_uses;  // per MoE layer, per expert
  double hit_rate() const {
    const int64_t n = hits + misses;
    return n > 0 ? static_cast<double>(hits) / static_cast<double>(n) : 0.0;
  }
};

class ExpertStore {
 public:
  // Reads where the expert tensors of the checkpoint in `dir` lie (f32/bf16/f16, or quantized per
  // moe/model/quantized.h), sizes the resident tier and attaches an executor to every MoE layer of
  // `m`, which must have been built with external_experts (model::load_pretrained(dir, F32, true)).
  // Throws moe::Error on a missing or mis-shaped expert tensor (naming file and tensor), a budget of
  // fewer than 2 experts, or an unknown format.
  static std::shared_ptr<ExpertStore> attach(model::Transformer& m, const std::string& dir,
                                             const ExpertStoreOptions& opt);
  virtual ~ExpertStore() = default;

  virtual ExpertStoreStats stats() const = 0;
  virtual void reset_stats() = 0;
  virtual std::string format() const = 0;  // "f32", "bf16", "int8", "int4", "mixed"
  virtual const ExpertStoreOptions& options() const = 0;
  virtual std::string describe() const = 0;  // one line: format, budget, policy, io
  // Use recording (off by default): when on, every expert use is appended, in order, as
  // moe_layer * n_experts + expert (MoE layers counted in model order, the warm fill's order).
  // take_uses returns what was recorded since the last call and clears it.
  virtual void record_uses(bool on) = 0;
  virtual std::vector<int64_t> take_uses() = 0;
  // Routing recording (off by default): every token's router input and chosen experts, per MoE
  // layer, for fitting an ExpertPredictor. take_routing returns what was recorded and clears it.
  virtual void record_routing(bool on) = 0;
  virtual RoutingSamples take_routing() = 0;
};

// The best any replacement policy without prefetch can do on a sequence of expert uses: Belady's
// MIN (on a miss, evict the resident expert whose next use lies farthest ahead), replayed offline.
// uses: expert ids in order; counted[i] != 0: use i is counted (e.g. the decode phase only; empty:
// all); resident at the start: `initial` (at most `capacity` of them). Misses load into a free slot
// or the evicted one; a bound for LRU, LFU and the activation policy on the same sequence and budget.
// (A layer's step asks for a set of experts at once; a policy serving the set without evicting its
// members is matched by a sequential one in any order of the set, so the order within a step does
// not weaken the bound.)
struct OptimalCacheResult {
  int64_t hits = 0, misses = 0;
};
OptimalCacheResult simulate_optimal_cache(const std::vector<int64_t>& uses,
                                          const std::vector<uint8_t>& counted, int64_t capacity,
                                          const std::vector<int64_t>& initial);

// A model ready for inference from `dir`: float experts held in the model (optionally bf16), or,
// when the checkpoint is quantized or `offload` sets a budget, experts held by an ExpertStore.
struct InferenceModel {
  std::unique_ptr<model::Transformer> model;
  std::shared_ptr<ExpertStore> store;  // null when the experts are in the model
};
struct InferenceLoadOptions {
  bool bf16 = false;  // bf16 dense linears (and bf16 experts when they are in the model)
  // The dense linears' format in bf16 inference: "bf16", "w8a8" or "w4a8" (Transformer::
  // set_inference_linear_format; w8a8 / w4a8 turn bf16 on for the rest).
  std::string linear_format = "bf16";
  bool offload = false;  // use an ExpertStore even for a float checkpoint
  // A low-rank checkpoint's experts (moe/model/low_rank.h): "factored" (LowRankExecutor), "materialise"
  // (A·B into a plain model at load), or "auto" (model::factored_is_faster).
  std::string low_rank = "auto";
  ExpertStoreOptions store;
  // Expert parallelism (moe/infer/lockstep.h): this rank reads and holds only its shard of the routed
  // experts (in the model, or in its own expert store); the dense parts are replicas. Null: all.
  std::shared_ptr<dist::Communicator> ep;
};
InferenceModel load_inference_model(const std::string& dir, const InferenceLoadOptions& opt);

}  // namespace moe::infer
