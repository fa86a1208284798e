// The expert store's implementation class, shared by expert_store.cpp (slots, policies, loader,
// prefetch) and expert_store_run.cpp (the per-layer executor, attach, statistics).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "expert_io.h"
#include "moe/infer/expert_predictor.h"
#include "moe/infer/expert_store.h"

namespace moe::infer::detail {

struct StoreSetup {
  std::vector<int64_t> layers;  // transformer index of each MoE layer
  kernels::Backend backend{};   // set by attach: the model's backend then (for the cost model's timing)
  int64_t E = 0, d = 0, F = 0, top_k = 0;
  // The experts held here (expert parallelism: this rank's shard [first, first + count)); count = E
  // without it. Entries of other experts are never loaded, prefetched or computed.
  int64_t first = 0, count = 0;
  bool held(int64_t id) const {
    const int64_t e = id % E;
    return e >= first && e < first + count;
  }
  int64_t n_held() const { return static_cast<int64_t>(layers.size()) * count; }
  kernels::Activation act = kernels::Activation::SwiGLU;
  Format fmt = Format::BF16;
  std::string fmt_name;
  std::vector<ExpertSource> src;  // (L · E), id = moe_layer · E + expert
  std::unique_ptr<SourceFiles> files;
  std::unique_ptr<PreGating> pregate;        // predictions within a token
  std::unique_ptr<ExpertPredictor> learned;  // ... preferred where it has weights (null: none)
  std::string predictor_name;                // "pre-gating" or the predictor file
};

struct Entry {
  enum State { Absent, Loading, Ready } state = Absent;
  int slot = -1;
  int pins = 0;             // computing, or wanted by the running layer
  bool prefetched = false;  // loaded by a prefetch and not used since
  bool loading_prefetch = false;
  bool queued_pin = false;   // a pin taken by the running layer before computing its experts
  bool queued_miss = false;  // ... for a load it queued (a miss)
  uint64_t last_use = 0;
  int64_t uses = 0;
  ExpertView view;
  std::string error;  // the last failed load's message
};

class StoreImpl : public ExpertStore {
 public:
  StoreImpl(StoreSetup setup, const ExpertStoreOptions& opt);
  ~StoreImpl() override;

  ExpertStoreStats stats() const override;
  void reset_stats() override;
  std::string format() const override { return S_.fmt_name; }
  const ExpertStoreOptions& options() const override { return opt_; }
  std::string describe() const override;
  void record_uses(bool on) override;
  std::vector<int64_t> take_uses() override;
  void record_routing(bool on) override;
  RoutingSamples take_routing() override;

  int64_t layer_index(int64_t li) const { return S_.layers[li]; }
  // The executor body for MoE layer li.
  // be: the backend of the MoE layer whose experts run (its ops run there).
  void run(int64_t li, const ExpertRows& rows, kernels::Backend be);

 private:
  void warm();
  void measure_costs();
  double expected_wait(int64_t id) const;
  int64_t victim(double* wait_out) const;
  int take_slot();
  void loader_loop();
  // chosen: (n, top_k) experts layer li chose per token (-1: none)
  void predict(int64_t li, const float* x, int64_t n, const std::vector<int32_t>& chosen);
  void learn(int64_t li, const std::vector<int32_t>& active);
  uint8_t* slot_ptr(int s) const { return pool_ + static_cast<uint64_t>(s) * slot_bytes_; }
  // Waits until `id` is Ready and pinned (loading it on the loader thread if needed); returns false
  // when it was computed in place instead (view filled).
  bool acquire(int64_t id, ExpertView* view, bool* hit);

  StoreSetup S_;
  ExpertStoreOptions opt_;
  uint64_t slot_bytes_ = 0;
  int64_t capacity_ = 0;
  uint8_t* pool_ = nullptr;
  std::vector<int> free_;
  std::vector<Entry> entries_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<int64_t> demand_q_, prefetch_q_;
  std::vector<std::thread> loaders_;
  bool stop_ = false;
  uint64_t tick_ = 0;
  ExpertStoreStats stats_;
  bool record_ = false;
  std::vector<int64_t> uses_;  // recorded uses (record_uses)
  bool record_routing_ = false;
  RoutingSamples routing_;  // recorded routing (record_routing)

  // activation-aware policy state
  int64_t cur_layer_ = -1;
  std::vector<int32_t> active_now_;                // experts the running layer uses
  std::vector<double> freq_;                       // (L · E) per-pass use rate (moving average)
  std::vector<double> trans_;                      // (L - 1, E, E) co-use counts of layer li and li + 1
  std::vector<uint8_t> predicted_;                 // (L · E) named by the latest pre-gating
  std::vector<std::vector<int32_t>> last_active_;  // per layer, experts used by its last run
  int64_t last_layer_run_ = -1;

  double load_s_ = 0;           // measured at start: seconds to load one expert
  double inplace_extra_s_ = 0;  // measured at start: extra seconds of computing one row from the mapping
  Buffer scratch_fwd_;
  std::vector<float> G_, U_, H_;  // FFN scratch
};

}  // namespace moe::infer::detail
