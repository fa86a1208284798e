// Expert offloading flags shared by `moe generate`, `moe eval`, `moe serve` and `moe bench generate`
// (--resident-experts, --expert-cache-gb, --cache-policy, --no-prefetch, ...), the model loading that
// applies them, and a summary of the store's statistics.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "moe/dist/comm.h"
#include "moe/infer/expert_store.h"

namespace moe::cli {

struct OffloadFlags {
  int64_t resident_experts = -1;
  double cache_gb = 0;
  std::string policy = "activation";
  bool no_prefetch = false;
  int prefetch_depth = 1;
  int64_t prefetch_experts = 0;
  std::string predictor = "auto";
  std::string io = "mmap";
  int io_threads = 2;
  std::string miss = "load";
  std::string format = "auto";
  std::string linear_format = "bf16";  // the dense linears in bf16 inference: bf16, w8a8, w4a8
  std::string low_rank_exec = "auto";  // a low-rank checkpoint's experts: auto, factored, materialise
  bool offload() const { return resident_experts >= 0 || cache_gb > 0; }
};

void add_offload_flags(CLI::App* c, OffloadFlags& f);
// The model in `dir` (resolved already) for inference: experts in the model, or in an expert store
// when the flags set a budget or the checkpoint is quantized. Throws moe::Error on bad flags.
// ep: expert parallelism (cli/ep_flags.h): this rank's experts only.
infer::InferenceModel load_for_inference(const std::string& dir, bool bf16, const OffloadFlags& f,
                                         std::shared_ptr<dist::Communicator> ep = nullptr);
// One line: hit rate, hits/misses, bytes moved, stall and load time, prefetches.
std::string store_summary(const infer::ExpertStoreStats& s);
nlohmann::json store_json(const infer::ExpertStoreStats& s);

}  // namespace moe::cli
