// `moe bench offload --model DIR --prompts FILE.txt [--resident-fraction 0.25,...] [--configs LIST]
// [--expert-io direct] [--plot FILE.svg] [--json]`: decode speed and expert hit rate of the expert
// store under several cache configurations, side by side in one process, on prompts cut from real
// text. Each configuration has its own model and store (warm-filled in layer order at load); the
// prompts run round-robin over the configurations (each prefills its prompt and decodes --new-tokens
// greedily; the decode phase alone is timed and counted). The generated tokens must be identical
// across configurations (checked).
// "optimal" is not a policy but a bound: every expert resident, each use recorded, and Belady's MIN
// replayed offline on that sequence with the budget's capacity (infer::simulate_optimal_cache),
// starting from the same warm fill; its hit rate is the best any policy without prefetch can reach,
// and it has no decode speed of its own.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/common.h"
#include "cli/model_dir.h"
#include "cli/offload_flags.h"
#include "moe/core/error.h"
#include "moe/core/parallel.h"
#include "moe/text/tokenizer.h"
#include "moe/train/data.h"
#include "moe/train/svg.h"

namespace moe::cli {

namespace {

struct BenchOffloadArgs {
  std::string model, prompts, configs = "lru,lfu,activation,lru+prefetch,activation+prefetch";
  std::string fractions = "0.25";
  int64_t n_prompts = 4, prompt_tokens = 64, new_tokens = 32;
  int threads = 0;
  bool json = false, bf16 = false;
  std::string plot, trace;
  OffloadFlags base;  // io, format, miss, prefetch depth
};

struct ConfigResult {
  std::string name;
  double fraction = 0;
  int64_t resident = 0;
  bool optimal = false;  // a replayed bound (no decode speed)
  double decode_tps = 0, decode_s = 0;
  int64_t tokens = 0;
  infer::ExpertStoreStats st;  // decode phases only
  std::vector<int32_t> generated;
};

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ','))
    if (!item.empty()) out.push_back(item);
  return out;
}

void add_stats(infer::ExpertStoreStats& a, const infer::ExpertStoreStats& b) {
  a.hits += b.hits, a.misses += b.misses, a.late_prefetches += b.late_prefetches;
  a.computed_in_place += b.computed_in_place, a.prefetch_issued += b.prefetch_issued;
  a.prefetch_used += b.prefetch_used, a.prefetch_wasted += b.prefetch_wasted, a.loads += b.loads;
  a.evictions += b.evictions, a.bytes_moved += b.bytes_moved, a.stall_seconds += b.stall_seconds;
  a.load_seconds += b.load_seconds;
  a.capacity = b.capacity, a.expert_bytes = b.expert_bytes, a.layers = b.layers;
  if (a.layer_hits.empty())
    a.layer_hits = b.layer_hits, a.layer_uses = b.layer_uses;
  else
    for (size_t l = 0; l < b.layer_hits.size(); ++l)
      for (size_t e = 0; e < b.layer_hits[l].size(); ++e)
        a.layer_hits[l][e] += b.layer_hits[l][e], a.layer_uses[l][e] += b.layer_uses[l][e];
}

// One configuration's model and its running totals.
struct ConfigRun {
  ConfigResult r;
  infer::InferenceModel im;
  std::vector<int64_t> uses;     // "optimal": every use, prefill and decode
  std::vector<uint8_t> counted;  // ... and whether it is a decode-phase use
};

ConfigRun make_config(const std::string& dir, const BenchOffloadArgs& a, const std::string& name,
                      double fraction) {
  OffloadFlags f = a.base;
  std::string policy = name, extra;
  if (const size_t plus = name.find('+'); plus != std::string::npos)
    policy = name.substr(0, plus), extra = name.substr(plus + 1);
  MOE_CHECK(extra.empty() || extra == "prefetch" || extra == "pregate", "bench offload: configuration '",
            name,
            "' must be POLICY, POLICY+prefetch or POLICY+pregate (POLICY: lru, lfu, activation, resident), "
            "or optimal");
  MOE_CHECK(policy != "optimal" || extra.empty(),
            "bench offload: 'optimal' is a replayed bound without prefetch");
  f.no_prefetch = extra.empty();
  if (extra == "pregate") f.predictor = "pregate";  // prefetch by pre-gating whatever --expert-predictor says
  ConfigRun c;
  c.r.name = name;
  c.r.fraction = fraction;
  const model::ModelConfig mc = model::load_model_config(dir + "/config.json");
  int64_t n_experts = 0;
  for (int64_t l = 0; l < mc.num_hidden_layers; ++l) n_experts += mc.is_moe_layer(l) ? mc.num_experts : 0;
  const int64_t budget =
      std::max<int64_t>(3, static_cast<int64_t>(fraction * static_cast<double>(n_experts) + 0.5));
  if (policy == "resident" || policy == "optimal") {
    f.resident_experts = n_experts;  // every expert in a store, for the same kernels
  } else {
    f.policy = policy;
    f.resident_experts = budget;
  }
  f.cache_gb = 0;
  c.im = load_for_inference(dir, a.bf16, f);
  c.r.resident = c.im.store->stats().capacity;
  if (policy == "optimal") {
    c.r.optimal = true;
    c.r.resident = budget;
    c.im.store->record_uses(true);
  }
  return c;
}

// Prefill one prompt, then decode greedily; the decode phase is timed and counted.
void run_prompt(ConfigRun& c, const BenchOffloadArgs& a, const std::vector<int32_t>& p) {
  model::Transformer& m = *c.im.model;
  model::KVCache cache = m.new_cache(static_cast<int64_t>(p.size()) + a.new_tokens + 1);
  Tensor logits = m.decode(cache, p.data(), static_cast<int64_t>(p.size()));
  c.im.store->reset_stats();
  auto take = [&](bool decode) {  // "optimal": the uses of the phase just run
    if (!c.r.optimal) return;
    const std::vector<int64_t> u = c.im.store->take_uses();
    c.uses.insert(c.uses.end(), u.begin(), u.end());
    c.counted.insert(c.counted.end(), u.size(), decode ? 1 : 0);
  };
  take(false);
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < a.new_tokens; ++i) {
    const float* l = logits.data<float>();
    const int32_t next = static_cast<int32_t>(std::max_element(l, l + logits.numel()) - l);
    c.r.generated.push_back(next);
    logits = m.decode(cache, &next, 1);
  }
  c.r.decode_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  c.r.tokens += a.new_tokens;
  take(true);
  add_stats(c.r.st, c.im.store->stats());
}

// "optimal": Belady's MIN over the recorded uses with the budget's capacity, from the warm fill
// (the first `resident` experts in layer order, as a store with that budget starts).
void replay_optimal(ConfigRun& c) {
  std::vector<int64_t> warm(static_cast<size_t>(c.r.resident));
  for (int64_t i = 0; i < c.r.resident; ++i) warm[static_cast<size_t>(i)] = i;
  const infer::OptimalCacheResult o = infer::simulate_optimal_cache(c.uses, c.counted, c.r.resident, warm);
  infer::ExpertStoreStats& st = c.r.st;
  st.hits = o.hits;
  st.misses = o.misses;
  st.loads = o.misses;
  st.bytes_moved = static_cast<uint64_t>(o.misses) * st.expert_bytes;
  st.stall_seconds = 0;
  st.load_seconds = 0;
  st.evictions = 0;
  st.capacity = c.r.resident;
  st.layer_hits.clear();
  st.layer_uses.clear();
  c.r.decode_tps = 0;
}

// --trace: the uses "optimal" recorded, one JSON object per budget and line: ids (moe_layer · E +
// expert, in order), and per use whether it belongs to a decode phase (each prompt is a prefill
// run then a decode run).
void write_trace(const ConfigRun& c, const std::string& path, double fraction) {
  std::ofstream f(path, std::ios::app);
  MOE_CHECK(f.good(), "bench offload: cannot write '", path, "'");
  nlohmann::json j;
  j["resident_fraction"] = fraction;
  j["resident_experts"] = c.r.resident;
  j["layers"] = c.r.st.layers.size();
  j["experts_per_layer"] = c.r.st.layer_uses.empty() ? 0 : c.r.st.layer_uses[0].size();
  j["uses"] = c.uses;
  j["decode"] = c.counted;
  f << j.dump() << "\n";
}

std::string plot_svg(const std::vector<ConfigResult>& rs, const std::vector<double>& fractions) {
  namespace svg = train::svg;
  std::map<std::string, std::pair<svg::Series, svg::Series>> by;  // name -> (tok/s, hit rate)
  std::vector<std::string> order;
  for (const ConfigResult& r : rs) {
    if (!by.count(r.name)) {
      order.push_back(r.name);
      auto& s = by[r.name];
      s.first.name = s.second.name = r.name;
      s.first.color = s.second.color = svg::palette(order.size() - 1);
      s.first.markers = s.second.markers = true;
    }
    if (!r.optimal) {  // a replayed bound has no decode speed
      by[r.name].first.x.push_back(100.0 * r.fraction);
      by[r.name].first.y.push_back(r.decode_tps);
    }
    by[r.name].second.x.push_back(100.0 * r.fraction);
    by[r.name].second.y.push_back(100.0 * r.st.hit_rate());
  }
  svg::LinePlot tps, hit;
  tps.id = "tps";
  tps.title = "Decode tokens/s against the resident budget";
  tps.x_label = "experts resident (% of all)";
  tps.y_label = "tokens/s";
  tps.x_integer = fractions.size() < 2;
  tps.y_include_zero = true;
  hit = tps;
  hit.id = "hit";
  hit.title = "Expert hit rate against the resident budget";
  hit.y_label = "hit rate (%)";
  for (const std::string& n : order) {
    if (!by[n].first.x.empty()) tps.series.push_back(by[n].first);
    hit.series.push_back(by[n].second);
  }
  return "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"1300\" height=\"420\"><g>" + svg::line_plot(tps) +
         "</g><g transform=\"translate(650,0)\">" + svg::line_plot(hit) + "</g></svg>\n";
}

int run_bench_offload(const BenchOffloadArgs& a) {
  apply_threads(a.threads);
  MOE_CHECK(a.n_prompts >= 1 && a.prompt_tokens >= 1 && a.new_tokens >= 1,
            "bench offload: --num-prompts, --prompt-tokens and --new-tokens must be >= 1");
  const std::string dir = resolve_model_dir(a.model);
  const std::string tp = find_tokenizer(dir);
  MOE_CHECK(!tp.empty(), "bench offload: no tokenizer.json next to the model in '", dir, "'");
  const std::vector<int32_t> text = text::Tokenizer::load(tp).encode(train::read_text_corpus(a.prompts));
  // prompts: consecutive windows spread evenly over the text
  std::vector<std::vector<int32_t>> prompts;
  const int64_t n = static_cast<int64_t>(text.size());
  MOE_CHECK(n >= a.prompt_tokens, "bench offload: '", a.prompts, "' has ", n,
            " tokens, fewer than --prompt-tokens ", a.prompt_tokens);
  for (int64_t i = 0; i < a.n_prompts; ++i) {
    const int64_t start = (n - a.prompt_tokens) * i / std::max<int64_t>(1, a.n_prompts);
    prompts.emplace_back(text.begin() + start, text.begin() + start + a.prompt_tokens);
  }
  std::vector<double> fractions;
  for (const std::string& s : split(a.fractions)) {
    double v = 0;
    try {
      v = std::stod(s);
    } catch (...) {
      v = -1;
    }
    MOE_CHECK(v > 0 && v <= 1, "bench offload: --resident-fraction '", s, "' must be in (0, 1]");
    fractions.push_back(v);
  }
  // Per budget, every configuration's model is loaded, then the prompts run round-robin over the
  // configurations, so that a change in the machine's load affects them all alike.
  std::vector<ConfigResult> rs;
  for (double fr : fractions) {
    std::vector<ConfigRun> runs;
    for (const std::string& name : split(a.configs)) runs.push_back(make_config(dir, a, name, fr));
    for (const std::vector<int32_t>& p : prompts)
      for (ConfigRun& c : runs) run_prompt(c, a, p);
    for (ConfigRun& c : runs) {
      c.r.decode_tps = c.r.decode_s > 0 ? static_cast<double>(c.r.tokens) / c.r.decode_s : 0;
      if (c.r.optimal && !a.trace.empty()) write_trace(c, a.trace, fr);
      if (c.r.optimal) replay_optimal(c);
      if (!a.json)
        std::fprintf(stderr, "  %-22s %5.1f%%: %.2f tokens/s, hit rate %.1f%%\n", c.r.name.c_str(), 100 * fr,
                     c.r.decode_tps, 100 * c.r.st.hit_rate());
      rs.push_back(std::move(c.r));
    }
  }
  bool identical = true;
  for (const ConfigResult& r : rs) identical = identical && r.generated == rs[0].generated;
  if (!a.plot.empty()) {
    std::ofstream f(a.plot);
    MOE_CHECK(f.good(), "bench offload: cannot write '", a.plot, "'");
    f << plot_svg(rs, fractions);
  }
  if (a.json) {
    nlohmann::json j;
    j["command"] = "bench offload";
    j["threads"] = num_threads();
    j["prompts"] = a.n_prompts;
    j["prompt_tokens"] = a.prompt_tokens;
    j["new_tokens"] = a.new_tokens;
    j["outputs_identical"] = identical;
    for (const ConfigResult& r : rs)
      j["runs"].push_back(
          {{"config", r.name},
           {"resident_fraction", r.fraction},
           {"resident_experts", r.resident},
           {"decode_tokens_per_s", r.optimal ? nlohmann::json() : nlohmann::json(r.decode_tps)},
           {"decode_s", r.optimal ? nlohmann::json() : nlohmann::json(r.decode_s)},
           {"replayed_bound", r.optimal},
           {"experts", store_json(r.st)}});
    std::cout << j.dump() << "\n";
  } else {
    std::printf("%-22s %9s %9s %10s %8s %10s %9s %9s\n", "config", "resident", "tokens/s", "vs first",
                "hit %", "MiB moved", "stall s", "prefetch");
    double first_tps = 0;  // "vs first": the first configuration that has a speed
    for (const ConfigResult& r : rs)
      if (!r.optimal && first_tps == 0) first_tps = r.decode_tps;
    for (const ConfigResult& r : rs) {
      if (r.optimal) {
        std::printf("%-22s %4lld/%3.0f%% %9s %10s %8.1f %10.1f %9s %9s\n", r.name.c_str(),
                    (long long)r.resident, 100 * r.fraction, "-", "-", 100 * r.st.hit_rate(),
                    static_cast<double>(r.st.bytes_moved) / 1048576.0, "-", "-");
        continue;
      }
      std::printf("%-22s %4lld/%3.0f%% %9.2f %9.2fx %8.1f %10.1f %9.2f %4lld/%lld\n", r.name.c_str(),
                  (long long)r.resident, 100 * r.fraction, r.decode_tps,
                  r.decode_tps / std::max(1e-12, first_tps), 100 * r.st.hit_rate(),
                  static_cast<double>(r.st.bytes_moved) / 1048576.0, r.st.stall_seconds,
                  (long long)r.st.prefetch_used, (long long)r.st.prefetch_issued);
    }
    std::printf("generated tokens identical across configurations: %s\n", identical ? "yes" : "NO");
  }
  MOE_CHECK(identical, "bench offload: configurations generated different tokens");
  return kExitOk;
}

}  // namespace

void add_bench_offload(CLI::App& bench, Registry& reg) {
  auto a = std::make_shared<BenchOffloadArgs>();
  CLI::App* c = bench.add_subcommand(
      "offload", "Decode speed and expert hit rate of offloaded experts, per cache policy");
  add_model_flag(c, a->model);
  c->add_option("--prompts", a->prompts, "Text file the prompts are cut from")->required();
  c->add_option("--configs", a->configs,
                "Comma-separated POLICY, POLICY+prefetch or POLICY+pregate (lru, lfu, activation, resident), "
                "or optimal (Belady's "
                "MIN replayed on the recorded uses: the best hit rate without prefetch)")
      ->capture_default_str();
  c->add_option("--resident-fraction", a->fractions, "Comma-separated shares of all experts kept resident")
      ->capture_default_str();
  c->add_option("--num-prompts", a->n_prompts, "Prompts")->check(in_range(1, 1 << 20))->capture_default_str();
  c->add_option("--prompt-tokens", a->prompt_tokens, "Tokens per prompt")
      ->check(in_range(1, kMaxTokensFlag))
      ->capture_default_str();
  c->add_option("--new-tokens", a->new_tokens, "Tokens decoded per prompt (greedy)")
      ->check(in_range(1, kMaxTokensFlag))
      ->capture_default_str();
  add_threads_flag(c, a->threads);
  c->add_flag("--bf16", a->bf16, "bf16 dense linears");
  c->add_option("--expert-io", a->base.io, "mmap (page cache) or direct (O_DIRECT, disk)")
      ->capture_default_str();
  c->add_option("--io-threads", a->base.io_threads, "Loader threads")
      ->check(in_range(1, 256))
      ->capture_default_str();
  c->add_option("--expert-format", a->base.format, "Resident expert format: auto, bf16, f32")
      ->capture_default_str();
  c->add_option("--prefetch-depth", a->base.prefetch_depth, "MoE layers ahead to prefetch")
      ->check(in_range(0, 1024))
      ->capture_default_str();
  c->add_option("--prefetch-experts", a->base.prefetch_experts, "Experts predicted per layer (0: top-k)")
      ->check(in_range(0, 1 << 14))
      ->capture_default_str();
  c->add_option(
       "--expert-predictor", a->base.predictor,
       "Predictor of POLICY+prefetch: auto (the model's expert_predictor.safetensors if present, else "
       "pre-gating), pregate, or a file (POLICY+pregate always pre-gates)")
      ->capture_default_str();
  c->add_option("--plot", a->plot, "Write an SVG plot of tokens/s and hit rate against the budget");
  add_json_flag(c, a->json);
  c->add_option("--trace", a->trace,
                "Append the uses 'optimal' recorded to FILE (one JSON line per budget: ids, decode flags)");
  c->callback([&reg, a] { reg.action = [a] { return run_bench_offload(*a); }; });
}

}  // namespace moe::cli
