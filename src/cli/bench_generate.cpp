// `moe bench generate --model DIR [--concurrency 1,4,16] [--prompt-tokens N] [--new-tokens N]
// [--threads N] [--bf16] [--json]`: serving throughput of the continuous-batching engine. At each
// concurrency level c it submits c requests at once (random prompts from a seed, greedy decoding,
// no stop ids so every request makes exactly --new-tokens tokens), waits for all, and reports
// prefill, decode and total tokens per second, the mean batch size (sequences per forward pass)
// and the latency percentiles: time to first token, and time per output token after the first.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/bench_memory.h"
#include "cli/common.h"
#include "cli/ep_flags.h"
#include "cli/model_dir.h"
#include "cli/offload_flags.h"
#include "moe/core/energy.h"
#include "moe/core/error.h"
#include "moe/core/membw.h"
#include "moe/core/parallel.h"
#include "moe/core/rng.h"
#include "moe/infer/engine.h"

namespace moe::cli {
namespace {

struct BenchGenArgs {
  std::string model;
  std::string concurrency = "1,4,16";
  int64_t prompt_tokens = 128, new_tokens = 64;
  int64_t max_batch_tokens = 512, kv_block_size = 16;
  int threads = 0;
  uint64_t seed = 1;
  bool json = false;
  bool bf16 = false;
  int64_t bandwidth_mib = 1024;
  OffloadFlags offload;
  EpFlags ep;
};

// The weight bytes one token reads alone, and the machine's read bandwidth measured in this run.
struct Traffic {
  double bytes_per_token = 0;
  ReadBandwidth bw;
};

Traffic weight_traffic(const infer::InferenceModel& im, int64_t bandwidth_mib) {
  const model::Transformer& m = *im.model;
  const model::ModelConfig& c = m.config();
  Traffic t;
  t.bytes_per_token = m.weight_bytes_per_token().total();
  if (im.store) {  // the routed experts live in the store: top_k of them per MoE layer
    int64_t moe_layers = 0;
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) moe_layers += c.is_moe_layer(l) ? 1 : 0;
    t.bytes_per_token += static_cast<double>(im.store->stats().expert_bytes) *
                         static_cast<double>(c.moe_layer_config().router.top_k * moe_layers);
  }
  if (bandwidth_mib > 0) t.bw = measure_read_bandwidth(static_cast<size_t>(bandwidth_mib) << 20);
  return t;
}

std::vector<int64_t> parse_levels(const std::string& s) {
  std::vector<int64_t> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    size_t used = 0;
    int64_t v = 0;
    try {
      v = std::stoll(item, &used);
    } catch (...) {
      used = 0;
    }
    MOE_CHECK(used == item.size() && !item.empty() && v >= 1 && v <= infer::kMaxRunning,
              "bench generate: --concurrency '", s, "' must be a comma-separated list of integers in [1, ",
              infer::kMaxRunning, "]");
    out.push_back(v);
  }
  MOE_CHECK(!out.empty(), "bench generate: --concurrency is empty");
  return out;
}

// The q-quantile (0..1) of a sample, nearest rank.
double quantile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = static_cast<size_t>(std::ceil(q * static_cast<double>(v.size())));
  return v[i == 0 ? 0 : std::min(i - 1, v.size() - 1)];
}

struct LevelResult {
  int64_t concurrency = 0;
  double wall_s = 0, prefill_tps = 0, decode_tps = 0, total_tps = 0, mean_batch = 0, mean_batch_tokens = 0;
  double ttft_p50 = 0, ttft_p90 = 0, ttft_p99 = 0, tpot_p50 = 0, tpot_p90 = 0, tpot_p99 = 0;
  int64_t prompt_tokens = 0, generated = 0, forward_passes = 0;
  double joules_per_token = -1;  // energy counters over the level / (prompt + generated tokens); -1: none
};

LevelResult run_level(const model::Transformer& m, const BenchGenArgs& a, int64_t conc,
                      std::shared_ptr<infer::Lockstep> ls) {
  const model::ModelConfig& c = m.config();
  infer::EngineOptions eo;
  eo.lockstep = std::move(ls);
  eo.max_running = conc;
  eo.max_queue = conc;
  eo.max_batch_tokens = a.max_batch_tokens;
  eo.kv_block_size = a.kv_block_size;
  eo.kv_blocks = conc * ((a.prompt_tokens + a.new_tokens + a.kv_block_size - 1) / a.kv_block_size);
  const Rng rng(a.seed);
  std::vector<infer::Request> reqs(static_cast<size_t>(conc));
  // Per-request token times since the start of the run (the engine thread writes them, this
  // thread reads them after run_all).
  auto times = std::make_shared<std::vector<std::vector<double>>>(static_cast<size_t>(conc));
  auto t0 = std::make_shared<std::chrono::steady_clock::time_point>();
  for (int64_t i = 0; i < conc; ++i) {
    infer::Request& r = reqs[static_cast<size_t>(i)];
    for (int64_t j = 0; j < a.prompt_tokens; ++j)
      r.prompt.push_back(static_cast<int32_t>(
          rng.below(static_cast<uint64_t>(i * a.prompt_tokens + j), static_cast<uint64_t>(c.vocab_size))));
    r.max_new_tokens = a.new_tokens;
    r.sampling.temperature = 0;
    r.on_token = [times, i, t0](int32_t) {
      (*times)[static_cast<size_t>(i)].push_back(
          std::chrono::duration<double>(std::chrono::steady_clock::now() - *t0).count());
      return true;
    };
  }
  infer::Engine eng(m, eo);
  *t0 = std::chrono::steady_clock::now();
  const std::vector<infer::Finished> fin = eng.run_all(std::move(reqs));
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - *t0).count();
  const infer::EngineStats st = eng.stats();
  LevelResult r;
  r.concurrency = conc;
  r.wall_s = wall;
  std::vector<double> ttft, tpot;
  double first_done = 0;  // the time when every prompt had its first token: prefill phase bound
  for (size_t i = 0; i < fin.size(); ++i) {
    MOE_CHECK(fin[i].finish_reason != "error", "bench generate: a request failed: ", fin[i].error);
    r.prompt_tokens += fin[i].prompt_tokens;
    r.generated += static_cast<int64_t>(fin[i].tokens.size());
    ttft.push_back(fin[i].ttft_s);
    const std::vector<double>& ts = (*times)[i];
    for (size_t k = 1; k < ts.size(); ++k) tpot.push_back(ts[k] - ts[k - 1]);
    if (!ts.empty()) first_done = std::max(first_done, ts[0]);
  }
  r.forward_passes = st.forward_passes;
  r.mean_batch =
      st.forward_passes ? static_cast<double>(st.batch_seqs_sum) / static_cast<double>(st.forward_passes) : 0;
  r.mean_batch_tokens =
      st.forward_passes ? static_cast<double>(st.batch_tokens_sum) / static_cast<double>(st.forward_passes)
                        : 0;
  // Prefill rate: prompt tokens over the time until the last first token; decode rate: the tokens
  // after each request's first over the rest of the run.
  r.prefill_tps = first_done > 0 ? static_cast<double>(r.prompt_tokens) / first_done : 0;
  const double decode_time = wall - first_done;
  r.decode_tps = decode_time > 0 ? static_cast<double>(r.generated - conc) / decode_time : 0;
  r.total_tps = wall > 0 ? static_cast<double>(r.prompt_tokens + r.generated) / wall : 0;
  r.ttft_p50 = quantile(ttft, 0.5), r.ttft_p90 = quantile(ttft, 0.9), r.ttft_p99 = quantile(ttft, 0.99);
  r.tpot_p50 = quantile(tpot, 0.5), r.tpot_p90 = quantile(tpot, 0.9), r.tpot_p99 = quantile(tpot, 0.99);
  return r;
}

// Under expert parallelism rank 0 runs the levels and the other ranks repeat its forward passes;
// then every rank's peak resident set is gathered (each holds the dense parts and its experts).
int run_bench_generate(const BenchGenArgs& a, std::shared_ptr<dist::Communicator> ep) {
  MOE_CHECK(a.prompt_tokens >= 1, "bench generate: --prompt-tokens must be >= 1");
  MOE_CHECK(a.new_tokens >= 1, "bench generate: --new-tokens must be >= 1");
  const std::vector<int64_t> levels = parse_levels(a.concurrency);
  infer::InferenceModel im = load_for_inference(resolve_model_dir(a.model), a.bf16, a.offload, ep);
  std::shared_ptr<infer::Lockstep> ls = ep ? std::make_shared<infer::Lockstep>(ep) : nullptr;
  // Every rank's peak RSS in MiB (VmHWM), gathered once the levels are done.
  auto rank_rss = [&] {
    double mine = peak_rss_hwm_mib();
    std::vector<double> all(static_cast<size_t>(ep->size()));
    ep->allgather(&mine, all.data(), 1, DType::F64);
    return all;
  };
  if (ls && !ls->leader()) {
    run_follower(*ls, *im.model);
    rank_rss();
    return kExitOk;
  }
  model::Transformer& m = *im.model;
  const model::ModelConfig& c = m.config();
  MOE_CHECK(a.prompt_tokens + a.new_tokens <= c.max_position_embeddings, "bench generate: --prompt-tokens + ",
            "--new-tokens = ", a.prompt_tokens + a.new_tokens, " exceeds the model's context of ",
            c.max_position_embeddings);
  std::vector<LevelResult> rs;
  EnergyMeter energy;
  for (int64_t conc : levels) {
    const double j0 = energy.joules();
    rs.push_back(run_level(m, a, conc, ls));
    LevelResult& r = rs.back();
    r.joules_per_token = joules_per_token(energy, energy.joules() - j0, r.prompt_tokens + r.generated);
  }
  const double peak_rss = peak_rss_hwm_mib();  // before the bandwidth probe's buffer
  std::vector<double> ranks_rss;
  if (ls) {
    ls->announce_stop();
    ranks_rss = rank_rss();
  }
  const Traffic tr = weight_traffic(im, a.bandwidth_mib);
  // Batch 1 reads the weights once per token: its decode rate times the bytes is the rate at which
  // the weights stream from memory.
  double weight_gbs = 0;
  for (const LevelResult& r : rs)
    if (r.concurrency == 1) weight_gbs = r.decode_tps * tr.bytes_per_token / 1e9;
  if (a.json) {
    nlohmann::json j;
    j["command"] = "bench generate";
    j["arch"] = model::arch_name(c.arch);
    j["n_params"] = c.n_params();
    j["n_active_params"] = c.n_active_params();
    j["threads"] = num_threads();
    j["prompt_tokens"] = a.prompt_tokens;
    j["new_tokens"] = a.new_tokens;
    j["max_batch_tokens"] = a.max_batch_tokens;
    j["weight_bytes_per_token"] = round_sig(tr.bytes_per_token, 6);
    if (peak_rss >= 0) j["peak_rss_mib"] = round_sig(peak_rss, 5);
    if (ep) {
      j["expert_parallel"] = ep->size();
      for (double r : ranks_rss) j["rank_peak_rss_mib"].push_back(round_sig(r, 5));
      // Rank 0's time in the exchanges: the MoE layers' all-reduces (waiting for the slowest rank
      // included) and the announcements of the forward passes.
      const dist::CommStats& cs = ep->stats();
      j["comm"] = {{"allreduce_calls", cs.allreduce_calls},
                   {"allreduce_s", round_sig(cs.allreduce_s, 4)},
                   {"allreduce_bytes", cs.allreduce_bytes},
                   {"broadcast_calls", cs.broadcast_calls},
                   {"broadcast_s", round_sig(cs.broadcast_s, 4)}};
    }
    if (weight_gbs > 0) j["decode_weight_gb_per_s"] = round_sig(weight_gbs, 4);
    if (tr.bw.gb_per_s > 0) {
      j["read_bandwidth_gb_per_s"] = round_sig(tr.bw.gb_per_s, 4);
      j["read_bandwidth_mib"] = a.bandwidth_mib;
      if (weight_gbs > 0) j["decode_bandwidth_fraction"] = round_sig(weight_gbs / tr.bw.gb_per_s, 3);
    }
    if (im.store) j["experts"] = store_json(im.store->stats()), j["expert_store"] = im.store->describe();
    j["energy"] = energy.description();
    for (const LevelResult& r : rs)
      j["levels"].push_back(
          {{"concurrency", r.concurrency},
           {"joules_per_token", r.joules_per_token >= 0 ? nlohmann::json(round_sig(r.joules_per_token, 4))
                                                        : nlohmann::json(nullptr)},
           {"wall_s", round_sig(r.wall_s, 4)},
           {"prefill_tokens_per_s", round_sig(r.prefill_tps, 4)},
           {"decode_tokens_per_s", round_sig(r.decode_tps, 4)},
           {"total_tokens_per_s", round_sig(r.total_tps, 4)},
           {"mean_batch_seqs", round_sig(r.mean_batch, 4)},
           {"mean_batch_tokens", round_sig(r.mean_batch_tokens, 4)},
           {"forward_passes", r.forward_passes},
           {"ttft_s",
            {{"p50", round_sig(r.ttft_p50, 4)},
             {"p90", round_sig(r.ttft_p90, 4)},
             {"p99", round_sig(r.ttft_p99, 4)}}},
           {"tpot_s",
            {{"p50", round_sig(r.tpot_p50, 4)},
             {"p90", round_sig(r.tpot_p90, 4)},
             {"p99", round_sig(r.tpot_p99, 4)}}}});
    std::cout << j.dump() << "\n";
    return kExitOk;
  }
  std::printf(
      "%s: %.2fM parameters (%.2fM active), %d threads, prompts of %lld tokens, %lld new tokens each\n",
      model::arch_name(c.arch), c.n_params() / 1e6, c.n_active_params() / 1e6, num_threads(),
      (long long)a.prompt_tokens, (long long)a.new_tokens);
  std::printf("%5s %10s %10s %10s %7s %7s | %23s | %23s\n", "conc", "prefill/s", "decode/s", "total/s",
              "seqs", "tokens", "TTFT p50/p90/p99 (ms)", "per token p50/p90/p99 (ms)");
  for (const LevelResult& r : rs)
    std::printf("%5lld %10.1f %10.1f %10.1f %7.2f %7.1f | %7.1f %7.1f %7.1f | %7.1f %7.1f %7.1f\n",
                (long long)r.concurrency, r.prefill_tps, r.decode_tps, r.total_tps, r.mean_batch,
                r.mean_batch_tokens, r.ttft_p50 * 1e3, r.ttft_p90 * 1e3, r.ttft_p99 * 1e3, r.tpot_p50 * 1e3,
                r.tpot_p90 * 1e3, r.tpot_p99 * 1e3);
  if (ep) {
    std::printf("experts over %d ranks (rank 0 leads); peak RSS per rank (MiB):", ep->size());
    for (double r : ranks_rss) std::printf(" %.0f", r);
    std::printf("\n");
  }
  std::printf("weights read per token (batch 1): %.1f MB", tr.bytes_per_token / 1e6);
  if (weight_gbs > 0) std::printf(", decoding at concurrency 1 streams them at %.1f GB/s", weight_gbs);
  if (tr.bw.gb_per_s > 0) {
    std::printf("; this machine reads %.1f GB/s (%d threads, %lld MiB buffer)", tr.bw.gb_per_s, tr.bw.threads,
                (long long)a.bandwidth_mib);
    if (weight_gbs > 0) std::printf(": %.0f%% of it", 100.0 * weight_gbs / tr.bw.gb_per_s);
  }
  std::printf("\n");
  if (!energy.available()) {
    std::printf("energy per token: %s\n", energy.description().c_str());
  } else {
    std::printf("energy per token (%s):", energy.description().c_str());
    for (const LevelResult& r : rs)
      std::printf(" %.4g J at concurrency %lld;", r.joules_per_token, (long long)r.concurrency);
    std::printf("\n");
  }
  if (im.store)
    std::printf("%s\n%s\n", im.store->describe().c_str(), store_summary(im.store->stats()).c_str());
  return kExitOk;
}

}  // namespace

void add_bench_generate(CLI::App& bench, Registry& reg) {
  auto a = std::make_shared<BenchGenArgs>();
  CLI::App* c =
      bench.add_subcommand("generate", "Serving throughput and latency of the continuous-batching engine");
  add_model_flag(c, a->model);
  c->add_option("--concurrency", a->concurrency, "Concurrent requests, one run per level (comma-separated)")
      ->capture_default_str();
  c->add_option("--prompt-tokens", a->prompt_tokens, "Tokens per prompt (random ids)")
      ->check(in_range(1, 1 << 24))
      ->capture_default_str();
  c->add_option("--new-tokens", a->new_tokens, "Tokens generated per request (greedy)")
      ->check(in_range(1, 1 << 24))
      ->capture_default_str();
  c->add_option("--max-batch-tokens", a->max_batch_tokens, "Tokens per forward pass at most")
      ->check(in_range(1, infer::kMaxBatchTokens))
      ->capture_default_str();
  c->add_option("--kv-block-size", a->kv_block_size, "Positions per KV cache block")
      ->check(in_range(1, infer::kMaxKvBlockSize))
      ->capture_default_str();
  add_threads_flag(c, a->threads);
  c->add_flag("--bf16", a->bf16, "bf16 weights (fp32 accumulation): half the bytes read per token");
  add_seed_flag(c, a->seed, "the random prompts");
  c->add_option("--bandwidth-mib", a->bandwidth_mib,
                "Buffer of the memory read-bandwidth measurement printed beside the decode rate, MiB "
                "(0 = skip it)")
      ->check(in_range(0, 1 << 16))
      ->capture_default_str();
  add_json_flag(c, a->json);
  add_offload_flags(c, a->offload);
  add_ep_flags(c, a->ep);
  c->callback([&reg, a] {
    reg.action = [a] {
      return with_ep_ranks(a->ep, a->threads, [&](auto ep) { return run_bench_generate(*a, std::move(ep)); });
    };
  });
}

}  // namespace moe::cli
