// `moe plan`: predicts the training step of an MoE model on every expert-parallel × data-parallel
// layout of a GPU cluster (closed-form cost model, include/moe/dist/plan.h; docs/PLAN.md) and
// recommends the fastest layout that fits in memory. Exit 0 with the table (or --json); 2 for a bad
// flag, model, load file or layout.
#include <cmath>
#include <cstdio>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli/common.h"
#include "cli/plan_inputs.h"
#include "cli/plan_serve.h"
#include "moe/core/error.h"
#include "moe/dist/plan.h"

namespace moe::cli {
namespace {

struct PlanArgs {
  std::string cluster = "h100-ib", model;
  int64_t gpus = 0, nodes = 0, gpus_per_node = 0;
  // Overrides of the preset's fields, applied when their flag was given.
  struct Override {
    enum Range { Positive, NonNegative, Fraction };  // > 0, >= 0, (0, 1]
    const char* flag;
    double dist::ClusterSpec::*field;
    const char* help;
    Range range;
    double value = 0;
    bool given = false;
  };
  std::vector<Override> overrides = {
      {"--intra-gbps", &dist::ClusterSpec::intra_gbps, "Intra-node bandwidth, GB/s per GPU each direction",
       Override::Positive},
      {"--intra-latency-us", &dist::ClusterSpec::intra_latency_us, "Intra-node latency per message, us",
       Override::NonNegative},
      {"--inter-gbps", &dist::ClusterSpec::inter_gbps, "Inter-node bandwidth, GB/s per GPU each direction",
       Override::Positive},
      {"--inter-latency-us", &dist::ClusterSpec::inter_latency_us, "Inter-node latency per message, us",
       Override::NonNegative},
      {"--peak-tflops", &dist::ClusterSpec::peak_tflops, "Peak dense TFLOP/s per GPU of the GEMM dtype",
       Override::Positive},
      {"--mfu", &dist::ClusterSpec::mfu, "Fraction of the peak that GEMMs achieve (presets: 0.5)",
       Override::Fraction},
      {"--memory-gib", &dist::ClusterSpec::memory_gib, "GPU memory, GiB", Override::Positive},
      {"--reserve-gib", &dist::ClusterSpec::reserve_gib,
       "Memory kept off the model (context, buffers), GiB (4)", Override::NonNegative},
  };
  dist::TrainShape train;
  int64_t dispatch_bytes = 0;  // 0 = act_bytes
  std::string routing = "uniform", load_file;
  double zipf_s = 1.0;
  int trials = 32;
  uint64_t seed = 0;
  bool hierarchical = false, json = false;
  double a2a_overlap = 0, grad_overlap = 0;
  std::string zero = "auto";
  std::vector<int64_t> ep;
  int top = 0;
  PlanServeArgs serve;
};

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

dist::ClusterSpec build_cluster(const PlanArgs& a) {
  dist::ClusterSpec c = dist::cluster_preset(a.cluster);
  if (a.gpus_per_node != 0) {
    MOE_CHECK(a.gpus_per_node >= 1, "--gpus-per-node must be >= 1, got ", a.gpus_per_node);
    c.gpus_per_node = a.gpus_per_node;
  }
  MOE_CHECK(a.gpus == 0 || a.nodes == 0, "give the cluster size with --gpus or --nodes, not both");
  if (a.nodes != 0) {
    MOE_CHECK(a.nodes >= 1, "--nodes must be >= 1, got ", a.nodes);
    c.nodes = a.nodes;
  } else {
    const int64_t gpus = a.gpus != 0 ? a.gpus : 128;
    MOE_CHECK(gpus >= 1 && gpus % c.gpus_per_node == 0, "--gpus ", gpus,
              " is not a whole number of nodes of ", c.gpus_per_node, " GPUs");
    c.nodes = gpus / c.gpus_per_node;
  }
  for (const PlanArgs::Override& o : a.overrides) {
    if (o.given) c.*o.field = o.value;
  }
  c.validate();
  return c;
}

dist::PlanInput build_input(const PlanArgs& a) {
  dist::PlanInput in;
  in.cluster = build_cluster(a);
  in.model = plan_model(a.model);
  in.train = a.train;
  in.train.dispatch_bytes = a.dispatch_bytes > 0 ? a.dispatch_bytes : a.train.act_bytes;
  MOE_CHECK(a.dispatch_bytes >= 0, "--dispatch-bytes must be >= 1 (0: as --act-bytes), got ",
            a.dispatch_bytes);
  dist::RoutingSpec& r = in.routing;
  if (!a.load_file.empty()) {
    MOE_CHECK(a.routing == "uniform", "give --routing or --load-file, not both");
    r.kind = dist::LoadKind::Measured;
    r.measured = plan_expert_loads(a.load_file);
  } else if (a.routing == "zipf") {
    r.kind = dist::LoadKind::Zipf;
  } else {
    MOE_CHECK(a.routing == "uniform", "--routing must be uniform or zipf, got '", a.routing, "'");
  }
  r.zipf_s = a.zipf_s, r.trials = a.trials, r.seed = a.seed;
  dist::PlanOptions& o = in.options;
  o.hierarchical = a.hierarchical, o.a2a_overlap = a.a2a_overlap, o.grad_overlap = a.grad_overlap;
  o.ep_sizes = a.ep;
  if (a.zero == "auto") {
    o.zero = -1;
  } else {
    MOE_CHECK(a.zero.size() == 1 && a.zero[0] >= '0' && a.zero[0] <= '3',
              "--zero must be 0, 1, 2, 3 or auto, got '", a.zero, "'");
    o.zero = a.zero[0] - '0';
  }
  return in;
}

std::string routing_text(const dist::PlanInput& in) {
  const dist::RoutingSpec& r = in.routing;
  std::string s = r.kind == dist::LoadKind::Uniform ? "uniform"
                  : r.kind == dist::LoadKind::Zipf  ? cat("zipf s = ", r.zipf_s)
                                                    : cat("measured (", r.measured.size(), " layer(s))");
  return cat(s, ", ", r.trials, " trials");
}

nlohmann::ordered_json num(double v, int digits = 4) {
  return std::isfinite(v) ? nlohmann::ordered_json(round_sig(v, digits)) : nlohmann::ordered_json(nullptr);
}

nlohmann::ordered_json layout_json(const dist::LayoutResult& r) {
  nlohmann::ordered_json j;
  j["ep"] = r.ep, j["dp"] = r.dp, j["experts_per_rank"] = r.experts_per_rank, j["zero"] = r.zero;
  j["ep_spans_nodes"] = r.spans_nodes, j["fits"] = r.fits;
  j["tokens_per_rank"] = r.tokens_per_rank, j["micro_batch_tokens"] = r.micro_batch_tokens;
  j["micro_batches"] = r.micro_batches, j["max_load"] = num(r.max_load);
  j["step_s"] = num(r.t_step), j["expert_s"] = num(r.t_expert), j["dense_s"] = num(r.t_dense);
  j["a2a_s"] = num(r.t_a2a), j["a2a_latency_s"] = num(r.t_a2a_latency), j["grad_s"] = num(r.t_grad);
  j["hidden_s"] = num(r.t_hidden);
  j["a2a_bytes_per_rank"] = num(r.a2a_bytes), j["a2a_inter_bytes_per_rank"] = num(r.a2a_inter_bytes);
  j["grad_bytes_per_rank"] = num(r.grad_bytes);
  const dist::MemoryBreakdown& m = r.memory;
  j["memory_gib"] = {{"params", num(m.params / kGiB)},
                     {"grads", num(m.grads / kGiB)},
                     {"optimizer", num(m.optimizer / kGiB)},
                     {"activations", num(m.activations / kGiB)},
                     {"gather_buffers", num(m.gather_buffers / kGiB)},
                     {"reserve", num(m.reserve / kGiB)},
                     {"total", num(m.total() / kGiB)}};
  j["tokens_per_s"] = num(r.tokens_per_s), j["mfu"] = num(r.mfu);
  j["gpu_hours_per_trillion_tokens"] = num(r.gpu_hours_per_trillion);
  return j;
}

void print_json(const dist::PlanInput& in, const dist::Plan& p) {
  const dist::ClusterSpec& c = in.cluster;
  const dist::ModelShape& m = in.model;
  const dist::TrainShape& t = in.train;
  nlohmann::ordered_json j;
  j["command"] = "plan";
  j["cluster"] = {{"name", c.name},
                  {"nodes", c.nodes},
                  {"gpus_per_node", c.gpus_per_node},
                  {"gpus", c.world()},
                  {"intra_gbps", c.intra_gbps},
                  {"intra_latency_us", c.intra_latency_us},
                  {"inter_gbps", c.inter_gbps},
                  {"inter_latency_us", c.inter_latency_us},
                  {"peak_tflops", c.peak_tflops},
                  {"mfu", c.mfu},
                  {"memory_gib", c.memory_gib},
                  {"reserve_gib", c.reserve_gib}};
  j["model"] = {{"name", m.name},
                {"n_params", m.n_params()},
                {"n_active_params", m.n_active_params()},
                {"hidden_size", m.hidden_size},
                {"layers", m.num_layers},
                {"moe_layers", m.num_moe_layers},
                {"experts", m.n_experts},
                {"top_k", m.top_k},
                {"expert_ffn", m.expert_ffn},
                {"shared_ffn", m.shared_ffn}};
  j["train"] = {{"global_batch_tokens", t.global_batch_tokens},
                {"micro_batch_tokens", t.micro_batch_tokens},
                {"seq_len", t.seq_len},
                {"act_bytes", t.act_bytes},
                {"dispatch_bytes", t.dispatch_bytes},
                {"param_bytes", t.param_bytes},
                {"grad_bytes", t.grad_bytes},
                {"master_bytes", t.master_bytes},
                {"opt_bytes", t.opt_bytes},
                {"recompute", t.recompute}};
  j["routing"] = routing_text(in);
  j["hierarchical"] = in.options.hierarchical;
  j["a2a_overlap"] = in.options.a2a_overlap, j["grad_overlap"] = in.options.grad_overlap;
  nlohmann::ordered_json rows = nlohmann::ordered_json::array();
  for (const dist::LayoutResult& r : p.layouts) rows.push_back(layout_json(r));
  j["layouts"] = rows;
  j["recommended"] = p.best >= 0 ? layout_json(p.layouts[p.best]) : nlohmann::ordered_json(nullptr);
  j["skipped"] = p.skipped;
  std::cout << j.dump() << std::endl;
}

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

void print_table(const dist::PlanInput& in, const dist::Plan& p, int top) {
  const dist::ClusterSpec& c = in.cluster;
  const dist::ModelShape& m = in.model;
  const dist::TrainShape& t = in.train;
  std::cout << "model   " << m.name << ": " << fmt("%.1f", static_cast<double>(m.n_params()) / 1e9)
            << "B params, " << fmt("%.1f", static_cast<double>(m.n_active_params()) / 1e9) << "B active; "
            << m.n_experts << " experts top-" << m.top_k << ", " << m.num_moe_layers << " MoE layers of "
            << m.num_layers << "\n";
  std::cout << "cluster " << c.name << ": " << c.nodes << " nodes x " << c.gpus_per_node
            << " GPUs = " << c.world() << "; intra " << c.intra_gbps << " GB/s " << c.intra_latency_us
            << " us, inter " << c.inter_gbps << " GB/s " << c.inter_latency_us << " us; " << c.peak_tflops
            << " TFLOP/s x MFU " << c.mfu << "; " << c.memory_gib << " GiB (" << c.reserve_gib
            << " reserved)\n";
  std::cout << "step    " << t.global_batch_tokens << " tokens, seq " << t.seq_len << ", micro-batch "
            << t.micro_batch_tokens << " per rank; routing " << routing_text(in) << "; "
            << (in.options.hierarchical ? "hierarchical" : "flat") << " all-to-all; overlap a2a "
            << in.options.a2a_overlap << ", grad " << in.options.grad_overlap
            << (t.recompute ? "; recompute" : "") << "\n\n";
  std::printf("%5s %5s %6s %4s %9s %8s %8s %8s %8s %6s %10s %5s %12s %8s %4s\n", "EP", "DP", "E/rank", "ZeRO",
              "step s", "expert", "dense", "a2a", "grad", "load", "tokens/s", "MFU", "a2a GB/rank", "mem GiB",
              "fits");
  int shown = 0;
  for (const dist::LayoutResult& r : p.layouts) {
    if (top > 0 && shown++ >= top) break;
    std::printf("%5lld %5lld %6lld %4d %9.3f %8.3f %8.3f %8.3f %8.3f %6.3f %10.4g %4.1f%% %12.2f %8.1f %4s\n",
                static_cast<long long>(r.ep), static_cast<long long>(r.dp),
                static_cast<long long>(r.experts_per_rank), r.zero, r.t_step, r.t_expert, r.t_dense, r.t_a2a,
                r.t_grad, r.max_load, r.tokens_per_s, 100 * r.mfu, r.a2a_bytes / 1e9, r.memory.total() / kGiB,
                r.fits ? "yes" : "no");
  }
  std::cout << "\n";
  if (p.best < 0) {
    std::string hints;
    if (in.options.zero >= 0 && in.options.zero < 3) hints += "--zero auto, ";
    if (!t.recompute) hints += "--recompute, ";
    if (t.micro_batch_tokens > t.seq_len) hints += "a smaller --micro-batch-tokens, ";
    std::cout << "no layout fits in " << c.memory_gib << " GiB per GPU (try " << hints
              << "smaller optimizer state or more GPUs)\n";
    return;
  }
  const dist::LayoutResult& b = p.layouts[p.best];
  std::cout << "recommended: EP " << b.ep << " x DP " << b.dp << ", ZeRO-" << b.zero << ": "
            << fmt("%.3f", b.t_step) << " s/step, " << fmt("%.4g", b.tokens_per_s) << " tokens/s, "
            << fmt("%.1f", 100 * b.mfu) << "% MFU, " << fmt("%.4g", b.gpu_hours_per_trillion)
            << " GPU hours per trillion tokens, " << fmt("%.1f", b.memory.total() / kGiB) << " GiB per GPU\n";
}

int run_plan(const PlanArgs& a) {
  if (a.serve.on) {
    dist::PlanInput in = build_input(a);  // the routing flags, checked as for training
    return run_plan_serve(a.serve, a.model, in.routing, a.json);
  }
  const dist::PlanInput in = build_input(a);
  const dist::Plan p = dist::make_plan(in);
  if (a.json) {
    print_json(in, p);
  } else {
    print_table(in, p, a.top);
  }
  return kExitOk;
}

}  // namespace

void register_plan(CLI::App& app, Registry& reg) {
  auto a = std::make_shared<PlanArgs>();
  CLI::App* sub = app.add_subcommand(
      "plan",
      "Predict step time, all-to-all bytes and memory of MoE training on every EP x DP layout of a "
      "GPU cluster, and recommend the fastest layout that fits (docs/PLAN.md)");
  sub->add_option("--model", a->model,
                  "Preset (deepseek-v3, mixtral-8x7b, mixtral-8x22b, qwen3-235b-a22b, olmoe), a config.json, "
                  "or a model directory")
      ->required();
  sub->add_option("--cluster", a->cluster, "Cluster preset: h100-ib, h800-ib, h200-ib, a100-ib")
      ->capture_default_str();
  sub->add_option("--gpus", a->gpus, "GPUs in all (a whole number of nodes; default 128)")
      ->check(in_range(1, 1 << 24));
  sub->add_option("--nodes", a->nodes, "Nodes (instead of --gpus)")->check(in_range(1, 1 << 24));
  sub->add_option("--gpus-per-node", a->gpus_per_node, "GPUs per node (preset: 8)")->check(in_range(1, 1024));
  for (PlanArgs::Override& o : a->overrides) {
    const CLI::Validator check = o.range == PlanArgs::Override::Fraction      ? above_at_most(0, 1)
                                 : o.range == PlanArgs::Override::NonNegative ? in_range(0, 1e9)
                                                                              : above(0);
    sub->add_option(o.flag, o.value, o.help)->check(check);
  }
  sub->add_option("--global-batch-tokens", a->train.global_batch_tokens,
                  "Tokens per optimizer step, all ranks")
      ->check(in_range(1, 1e15))
      ->capture_default_str();
  sub->add_option("--micro-batch-tokens", a->train.micro_batch_tokens, "Tokens per rank per forward/backward")
      ->check(in_range(1, 1e12))
      ->capture_default_str();
  sub->add_option("--seq-len", a->train.seq_len, "Sequence length")
      ->check(in_range(1, 1e9))
      ->capture_default_str();
  sub->add_option("--act-bytes", a->train.act_bytes, "Bytes per activation element")
      ->check(in_range(1, 16))
      ->capture_default_str();
  sub->add_option("--dispatch-bytes", a->dispatch_bytes,
                  "Bytes per element of the forward dispatch rows (1 for fp8; default --act-bytes)")
      ->check(in_range(1, 16));
  sub->add_option("--param-bytes", a->train.param_bytes, "Bytes per parameter")
      ->check(in_range(1, 16))
      ->capture_default_str();
  sub->add_option("--grad-bytes", a->train.grad_bytes, "Bytes per gradient element")
      ->check(in_range(1, 16))
      ->capture_default_str();
  sub->add_option("--master-bytes", a->train.master_bytes, "Bytes per master weight (0: none)")
      ->check(in_range(0, 16))
      ->capture_default_str();
  sub->add_option("--opt-bytes", a->train.opt_bytes, "Bytes per element of each Adam moment")
      ->check(in_range(0, 16))
      ->capture_default_str();
  sub->add_flag("--recompute", a->train.recompute, "Full activation recomputation");
  sub->add_option("--routing", a->routing, "Routing distribution: uniform or zipf")->capture_default_str();
  sub->add_option("--zipf-s", a->zipf_s, "Zipf exponent (--routing zipf)")
      ->check(in_range(0, 100))
      ->capture_default_str();
  sub->add_option("--load-file", a->load_file,
                  "Measured per-expert loads: JSON list, list per layer, or a metrics.jsonl of moe train");
  sub->add_option("--trials", a->trials, "Monte Carlo trials of the routing loads")
      ->check(in_range(1, kMaxRepsFlag))
      ->capture_default_str();
  add_seed_flag(sub, a->seed, "the Monte Carlo");
  sub->add_flag("--hierarchical", a->hierarchical, "Two-stage all-to-all (inside nodes, then across)");
  sub->add_option("--a2a-overlap", a->a2a_overlap, "Fraction of all-to-all time hidden by compute")
      ->check(in_range(0, 1))
      ->capture_default_str();
  sub->add_option("--grad-overlap", a->grad_overlap, "Fraction of gradient-reduction time hidden by compute")
      ->check(in_range(0, 1))
      ->capture_default_str();
  sub->add_option("--zero", a->zero, "ZeRO stage 0-3, or auto (per layout the lowest that fits)")
      ->capture_default_str();
  sub->add_option("--ep", a->ep, "Evaluate only these EP sizes (comma-separated)")
      ->check(in_range(1, 1 << 24))
      ->delimiter(',');
  sub->add_option("--top", a->top, "Print only the first N layouts (0: all)")->check(in_range(0, 1e9));
  add_json_flag(sub, a->json, "Print JSON instead of the table");
  add_plan_serve_flags(sub, a->serve);
  sub->callback([&reg, a, sub] {
    for (PlanArgs::Override& o : a->overrides) o.given = sub->count(o.flag) > 0;
    reg.action = [a] { return run_plan(*a); };
  });
}

}  // namespace moe::cli
