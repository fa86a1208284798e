#include "offload_flags.h"

#include "cli/common.h"

#include <iostream>

#include "moe/core/error.h"
#include "moe/model/gguf_model.h"

namespace moe::cli {

void add_offload_flags(CLI::App* c, OffloadFlags& f) {
  c->add_option("--resident-experts", f.resident_experts,
                "Offload experts: keep at most N routed experts (all layers together) in memory")
      ->check(at_least(0));
  c->add_option("--expert-cache-gb", f.cache_gb, "Offload experts: memory budget for resident experts in GiB")
      ->check(in_range(0, 1 << 20));
  c->add_option("--cache-policy", f.policy, "Expert cache policy: lru, lfu, activation")
      ->capture_default_str();
  c->add_flag("--no-prefetch", f.no_prefetch, "Do not prefetch the next layers' predicted experts");
  c->add_option("--prefetch-depth", f.prefetch_depth, "MoE layers ahead to prefetch")
      ->check(in_range(0, 1024))
      ->capture_default_str();
  c->add_option("--prefetch-experts", f.prefetch_experts,
                "Experts predicted per layer (0: the router's top-k)")
      ->check(in_range(0, 1 << 14))
      ->capture_default_str();
  c->add_option(
       "--expert-predictor", f.predictor,
       "What predicts the experts to prefetch: auto (the model's expert_predictor.safetensors if present, "
       "else pregate), pregate, or a file written by `moe predictor`")
      ->capture_default_str();
  c->add_option("--expert-io", f.io,
                "Reading offloaded experts: mmap (page cache) or direct (O_DIRECT, disk)")
      ->capture_default_str();
  c->add_option("--io-threads", f.io_threads, "Loader threads (expert reads in flight at once)")
      ->check(in_range(1, 256))
      ->capture_default_str();
  c->add_option("--expert-miss", f.miss,
                "On a miss: load, compute (from the mapped checkpoint, no load), auto (cost model)")
      ->capture_default_str();
  c->add_option("--expert-format", f.format,
                "Resident expert format: auto, bf16, f32, w8a8 or w4a8 (an int8 or int4 checkpoint's experts "
                "on integer dot products: the activations quantized to int8 per row as well)")
      ->capture_default_str();
  c->add_option("--linear-format", f.linear_format,
                "Dense linears (attention projections, dense FFNs, output head) with --bf16: bf16, or w8a8 / "
                "w4a8 (quantized at load in groups of 32, int8 activations per row; implies --bf16)")
      ->check(CLI::IsMember({"bf16", "w8a8", "w4a8"}))
      ->capture_default_str();
  c->add_option("--low-rank-exec", f.low_rank_exec,
                "A low-rank checkpoint's experts (moe compress): factored (x·Bᵀ·Aᵀ), materialise (A·B at "
                "load), or auto (by FLOPs)")
      ->check(CLI::IsMember({"auto", "factored", "materialise"}))
      ->capture_default_str();
}

infer::InferenceModel load_for_inference(const std::string& dir, bool bf16, const OffloadFlags& f,
                                         std::shared_ptr<dist::Communicator> ep) {
  infer::InferenceLoadOptions o;
  o.ep = std::move(ep);
  o.bf16 = bf16;
  o.offload = f.offload();
  o.store.resident_experts = f.resident_experts;
  o.store.cache_gb = f.cache_gb;
  o.store.policy = infer::cache_policy_from_name(f.policy);
  o.store.prefetch = !f.no_prefetch;
  o.store.prefetch_depth = f.prefetch_depth;
  o.store.prefetch_experts = f.prefetch_experts;
  o.store.predictor = f.predictor;
  o.store.io = infer::expert_io_from_name(f.io);
  o.store.io_threads = f.io_threads;
  o.store.miss = infer::miss_mode_from_name(f.miss);
  o.store.format = f.format;
  o.linear_format = f.linear_format;
  o.low_rank = f.low_rank_exec;
  if (model::is_gguf_path(dir) && !(o.ep && o.ep->size() > 1))  // one line on what the load converts
    std::cerr << "gguf: " << dir << ": " << model::gguf_type_summary(gguf::Reader(dir))
              << " tensors dequantized to f32" << (bf16 ? " (then bf16)" : "") << "\n";
  return infer::load_inference_model(dir, o);
}

std::string store_summary(const infer::ExpertStoreStats& s) {
  return cat("expert hit rate ", s.hit_rate() * 100.0, "% (", s.hits, " hits, ", s.misses, " misses, ",
             s.late_prefetches, " late prefetches, ", s.computed_in_place, " computed in place), ",
             static_cast<double>(s.bytes_moved) / 1048576.0, " MiB moved in ", s.loads, " loads, stalled ",
             s.stall_seconds, " s, prefetches ", s.prefetch_issued, " issued / ", s.prefetch_used, " used / ",
             s.prefetch_wasted, " wasted");
}

nlohmann::json store_json(const infer::ExpertStoreStats& s) {
  return {{"hit_rate", s.hit_rate()},
          {"hits", s.hits},
          {"misses", s.misses},
          {"late_prefetches", s.late_prefetches},
          {"computed_in_place", s.computed_in_place},
          {"prefetch_issued", s.prefetch_issued},
          {"prefetch_used", s.prefetch_used},
          {"prefetch_wasted", s.prefetch_wasted},
          {"loads", s.loads},
          {"evictions", s.evictions},
          {"bytes_moved", s.bytes_moved},
          {"stall_s", s.stall_seconds},
          {"load_s", s.load_seconds},
          {"capacity", s.capacity},
          {"expert_bytes", s.expert_bytes},
          {"layer_hits", s.layer_hits},
          {"layer_uses", s.layer_uses}};
}

}  // namespace moe::cli
