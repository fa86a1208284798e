// `moe plan`: a closed-form cost model of MoE training on expert-parallel (EP) × data-parallel (DP)
// layouts of a GPU cluster. For each layout it predicts the step time (expert GEMMs, the rest of the
// model, the all-to-all of the token rows, the gradient reductions), the all-to-all bytes and the
// memory of one rank, and recommends the fastest layout that fits. Formulas: docs/PLAN.md.
//
// Layout (as dist::make_groups lays ranks out): world W = ep · dp, rank = dp_rank · ep + ep_rank, so
// an EP group is ep consecutive ranks: inside one node when ep ≤ GPUs per node, else spanning
// ep / gpus_per_node whole nodes. Expert e lives on EP rank e / (E / ep). Every rank reads its own
// data (W-way data parallelism of the tokens); non-expert parameters are replicated on all W ranks,
// expert parameters on the dp = W / ep ranks of equal ep_rank (the expert-DP group).
//
// Nothing here runs a collective: the model is arithmetic plus a small Monte Carlo of the routing
// loads (the straggler rank sets the all-to-all and expert time), so 2048+ GPUs take milliseconds.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace moe::dist {

// ---- all-to-all payload of one dispatch --------------------------------------------------------
// Definition (the one CommStats::alltoall_bytes_sent counts): payload bytes of the token rows a rank
// sends to OTHER ranks of its EP group, one row of `hidden` elements per routed assignment (a token
// sent to two experts of the same rank is two rows), no headers, no counts exchange, the self block
// excluded. The combine sends the same rows back, so its bytes are dispatch's with sent and received
// swapped; the backward pass repeats both.
struct DispatchShape {
  int64_t ep = 1;          // ranks of the EP group
  int64_t n_experts = 1;   // E, a multiple of ep; expert e on rank e / (E / ep)
  int64_t hidden = 0;      // d, elements per row
  int64_t elem_bytes = 2;  // bytes per element of the rows sent
  void validate() const;   // throws moe::Error naming the bad field
};

struct DispatchBytes {
  std::vector<int64_t> sent;      // (ep) bytes rank s sends to other ranks
  std::vector<int64_t> received;  // (ep) bytes rank r receives from other ranks
  int64_t total() const;          // Σ sent = Σ received
};

// Exact bytes for a concrete routing: counts (ep · E, row-major), counts[s · E + e] = rows that source
// rank s sends to expert e.
//   sent[s]     = d · b · Σ_{e : owner(e) ≠ s} counts[s, e]
//   received[r] = d · b · Σ_{s ≠ r} Σ_{e : owner(e) = r} counts[s, e]
DispatchBytes dispatch_bytes(const DispatchShape& s, const std::vector<int64_t>& counts);

// Expected bytes when every source rank routes `tokens` tokens with `top_k` assignments each and an
// assignment goes to expert e with probability p_e = expert_load[e] / Σ expert_load. With
// q_r = Σ_{e on r} p_e:
//   sent[s]     = T · k · (1 − q_s) · d · b
//   received[r] = (ep − 1) · T · k · q_r · d · b
// Uniform routing gives T · k · (1 − 1/ep) · d · b for every rank.
struct ExpectedDispatchBytes {
  std::vector<double> sent, received;  // (ep)
  double mean_sent() const;
};
ExpectedDispatchBytes expected_dispatch_bytes(const DispatchShape& s, int64_t tokens, int64_t top_k,
                                              const std::vector<double>& expert_load);

// ---- the cluster --------------------------------------------------------------------------------
struct ClusterSpec {
  std::string name = "custom";
  int64_t nodes = 1;
  int64_t gpus_per_node = 8;
  double intra_gbps = 450;      // GB/s (1e9 B/s) per GPU, each direction, inside a node (NVLink)
  double intra_latency_us = 2;  // per message inside a node
  double inter_gbps = 50;       // GB/s per GPU, each direction, between nodes (one NIC per GPU)
  double inter_latency_us = 5;  // per message between nodes
  double peak_tflops = 989;     // dense bf16 TFLOP/s per GPU
  double mfu = 0.5;             // fraction of peak that the GEMMs achieve
  double memory_gib = 80;       // GPU memory
  double reserve_gib = 4;       // not for the model: CUDA context, NCCL buffers, fragmentation
  int64_t world() const { return nodes * gpus_per_node; }
  void validate() const;  // throws moe::Error naming the field (e.g. a zero bandwidth)
};
// Presets: h100-ib, h800-ib, h200-ib, a100-ib (see docs/PLAN.md for their figures). Throws moe::Error
// listing the known names.
ClusterSpec cluster_preset(const std::string& name);
std::vector<std::string> cluster_preset_names();

// ---- the model, as the planner needs it ---------------------------------------------------------
// SwiGLU FFNs (3 matrices). Built from a Hugging Face config.json by the command-line tool
// (src/cli/plan_inputs.h); n_params() then equals model::ModelConfig::n_params().
struct ModelShape {
  std::string name;
  int64_t hidden_size = 0;     // d
  int64_t num_layers = 0;      // L
  int64_t num_moe_layers = 0;  // L_moe (the other L − L_moe layers have a dense FFN)
  int64_t n_experts = 0;       // E routed experts per MoE layer
  int64_t top_k = 0;           // k
  int64_t expert_ffn = 0;      // f, width of one routed expert
  int64_t shared_ffn = 0;      // total width of the shared experts of a MoE layer (0: none)
  int64_t dense_ffn = 0;       // FFN width of the dense layers
  int64_t attn_params = 0;     // per layer: projections with their norms and biases
  int64_t attn_heads = 0;      // query heads
  int64_t attn_qk_dim = 0;     // per head, queries/keys
  int64_t attn_v_dim = 0;      // per head, values
  int64_t attn_act_dim = 0;    // elements per token the attention block keeps for backward
  int64_t vocab_size = 0;
  bool tied_embeddings = false;
  int64_t extra_moe_params = 0;  // per MoE layer beyond experts, router and shared FFN (a shared gate)

  int64_t expert_params() const { return 3 * hidden_size * expert_ffn; }  // one routed expert
  int64_t routed_expert_params() const { return num_moe_layers * n_experts * expert_params(); }
  int64_t n_params() const;
  int64_t dense_params() const { return n_params() - routed_expert_params(); }  // replicated on all ranks
  int64_t n_active_params() const;  // per token: k routed experts and everything else
  void validate() const;
};

// ---- the training step --------------------------------------------------------------------------
struct TrainShape {
  int64_t global_batch_tokens = 4194304;  // tokens per optimizer step over all ranks
  int64_t micro_batch_tokens = 4096;      // tokens per rank per forward/backward (a multiple of seq_len)
  int64_t seq_len = 4096;
  int64_t act_bytes = 2;       // activations and their gradients, combine rows
  int64_t dispatch_bytes = 2;  // rows of the forward dispatch (1 for fp8 dispatch)
  int64_t param_bytes = 2;     // working copy of the weights
  int64_t grad_bytes = 4;      // gradients (and what the DP reduction sends)
  int64_t master_bytes = 4;    // master weights kept by the optimizer (0: none)
  int64_t opt_bytes = 4;       // each of Adam's two moments
  bool recompute = false;      // full activation recomputation: keep layer inputs only, forward twice
  void validate() const;
};

// ---- routing ------------------------------------------------------------------------------------
enum class LoadKind { Uniform, Zipf, Measured };
struct RoutingSpec {
  LoadKind kind = LoadKind::Uniform;
  double zipf_s = 1.0;  // p ∝ 1 / rank^s, popularity order shuffled over the experts in each trial
  // Measured: (layers, E) fractions of the assignments per expert; one row for all MoE layers or one
  // per MoE layer. Expert ids are real, so placement matters (expert e on EP rank e / (E / ep)).
  std::vector<std::vector<double>> measured;
  int trials = 32;  // Monte Carlo trials per layer and micro-batch size
  uint64_t seed = 0;
  void validate(const ModelShape& m) const;
};
// Per-expert loads from JSON text: a list of numbers (one layer), a list of lists (per layer), or an
// object with "expert_load" (e.g. one step line of a `moe train` metrics.jsonl). Loads are normalised
// per layer. `source` names the input in errors. (The command-line tool also reads whole metrics.jsonl
// logs, through the training layer's reader: src/cli/plan_inputs.h.)
std::vector<std::vector<double>> parse_expert_loads(const std::string& text, const std::string& source);
std::vector<std::vector<double>> load_expert_loads(const std::string& path);
// The probability of each expert (E) under a uniform or zipf distribution, in popularity order.
std::vector<double> expert_distribution(const RoutingSpec& r, int64_t n_experts);

// ---- building blocks (exposed for tests) --------------------------------------------------------
// Where the ep ranks of an EP group sit: g ranks on each of n_nodes nodes.
struct EpPlacement {
  int64_t ep = 1, ranks_per_node = 1, nodes = 1;
  bool spans_nodes() const { return nodes > 1; }
};
// Throws moe::Error unless ep divides gpus_per_node or is a multiple of it, and divides the world.
EpPlacement ep_placement(const ClusterSpec& c, int64_t ep);

// One all-to-all exchange of the EP group: every rank routes `tokens` tokens × top_k rows of `row_bytes`
// bytes; rank_load (ep) is the fraction of all assignments that each rank's experts receive.
struct ExchangeInput {
  int64_t tokens = 0, top_k = 1;
  double row_bytes = 0;
  std::vector<double> rank_load;  // (ep), sums to 1
  bool hierarchical = false;      // two stages: inside the node, then between equal local ranks
};
struct ExchangeCost {
  double seconds = 0;  // latency + bandwidth of the busiest rank
  double latency_s = 0;
  double intra_bytes = 0;  // busiest rank, max(sent, received) over NVLink
  double inter_bytes = 0;  // busiest rank, max(sent, received) over the network
};
ExchangeCost exchange_cost(const ClusterSpec& c, const EpPlacement& p, const ExchangeInput& in);

// Ring all-reduce of `bytes` over n ranks, `per_node` of them on each node:
//   2 (n − 1)/n · bytes / bw + 2 (n − 1) · α,
// bw = intra bandwidth inside one node, else min(intra, per_node · inter) (one ring per NIC, so a
// node's data crosses per_node NICs), α the latency of the slowest link used.
double ring_allreduce_s(const ClusterSpec& c, int64_t n, int64_t per_node, double bytes);
// (n − 1)/n · bytes / bw + (n − 1) · α: a reduce-scatter or an all-gather.
double ring_half_s(const ClusterSpec& c, int64_t n, int64_t per_node, double bytes);

// Forward FLOPs of one token outside the routed experts (attention with causal scores over seq_len,
// dense and shared FFNs, router, LM head), and of one routed assignment (2 · 3 · d · f).
double dense_flops_per_token(const ModelShape& m, int64_t seq_len);
double expert_flops_per_assignment(const ModelShape& m);

struct MemoryBreakdown {  // bytes per rank
  double params = 0, grads = 0, optimizer = 0, activations = 0, gather_buffers = 0, reserve = 0;
  double total() const { return params + grads + optimizer + activations + gather_buffers + reserve; }
};
// zero: 0 replicated, 1 optimizer state sharded over each parameter's DP group (dense: all W ranks,
// experts: the W / ep expert-DP group), 2 also gradients, 3 also parameters. max_load: the busiest
// rank's received assignments over the mean (its activations grow with it).
MemoryBreakdown memory_per_rank(const ClusterSpec& c, const ModelShape& m, const TrainShape& t, int64_t ep,
                                int zero, double max_load);

// ---- the plan -----------------------------------------------------------------------------------
struct PlanOptions {
  bool hierarchical = false;      // two-stage all-to-all when the EP group spans nodes
  double a2a_overlap = 0;         // fraction of the all-to-all time hidden under compute
  double grad_overlap = 0;        // fraction of the gradient reduction hidden under compute
  int zero = -1;                  // 0..3; -1: per layout the lowest stage that fits
  std::vector<int64_t> ep_sizes;  // empty: every valid ep
};

struct PlanInput {
  ClusterSpec cluster;
  ModelShape model;
  TrainShape train;
  RoutingSpec routing;
  PlanOptions options;
};

struct LayoutResult {
  int64_t ep = 1, dp = 1, experts_per_rank = 0;
  int zero = 0;
  bool spans_nodes = false, fits = false;
  int64_t tokens_per_rank = 0, micro_batch_tokens = 0, micro_batches = 0;  // per step
  double max_load = 1;  // E[max over EP ranks of received assignments] / mean, over the MoE layers
  // Seconds per step. t_a2a and t_grad are the full times; the exposed part is in t_step.
  double t_expert = 0, t_dense = 0, t_a2a = 0, t_a2a_latency = 0, t_grad = 0, t_hidden = 0, t_step = 0;
  double a2a_bytes = 0, a2a_inter_bytes = 0;  // per rank per step, mean over ranks, sent to other ranks
  double grad_bytes = 0;                      // per rank per step, sent by the DP reductions
  MemoryBreakdown memory;
  double tokens_per_s = 0, mfu = 0, gpu_hours_per_trillion = 0;
};

struct Plan {
  std::vector<LayoutResult> layouts;  // fitting layouts by step time, then the others by memory
  int best = -1;                      // index of the fastest fitting layout, -1 when none fits
  std::vector<std::string> skipped;   // ep sizes not evaluated, with the reason
};

LayoutResult evaluate_layout(const PlanInput& in, int64_t ep, int zero);
Plan make_plan(const PlanInput& in);

}  // namespace moe::dist
