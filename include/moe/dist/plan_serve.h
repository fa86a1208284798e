// `moe plan --serve`: a cost model of serving an MoE model with expert parallelism over ranks
// (moe/infer/lockstep.h): every rank holds a replica of the dense parts and 1/N of the routed
// experts, runs every forward pass on every token, and each MoE layer ends with one all-reduce of
// the batch's weighted expert rows. Formulas: docs/PLAN.md "Serving".
//
// A decode step gives one new token to each of B sequences. Decoding is bound by memory bandwidth
// (each weight read once per step, whatever B) until B rows make it compute-bound, so each part of
// the step costs max(bytes / bandwidth, FLOPs / rate) on the rank that runs it, with the bandwidth and
// rate of a node shared by those of its ranks that work at the same time (a rank's bandwidth capped
// by what its own cores draw). Per layer, every rank reads the attention weights and its sequences'
// KV cache; in a MoE layer the ranks then wait for the slowest one, which reads the distinct experts
// that the B tokens chose among its own (a Monte Carlo of the routing) while ranks without experts
// wait, and the all-reduce follows. Rank 0 alone computes the output head (it samples).
#pragma once

#include <cstdint>
#include <vector>

#include "moe/dist/plan.h"

namespace moe::dist {

// The machines serving. Ranks are laid out node-major, ranks_per_node on each node.
struct ServeCluster {
  int64_t ranks_per_node = 1;
  double mem_gbps = 0;         // read bandwidth of one node, GB/s (all its cores)
  double mbu = 0.65;           // fraction of mem_gbps that a step's weight reads achieve
  double gflops = 0;           // GEMM rate of one node in the weight format, GFLOP/s (achieved)
  int64_t cores = 0;           // cores of a node, split evenly between its ranks (0: not limited)
  double core_gbps = 0;        // read bandwidth one core draws alone, GB/s (0: not limited)
  double shm_gbps = 10;        // between ranks of one node, GB/s
  double shm_latency_us = 2;   // per message between ranks of one node
  double net_gbps = 12.5;      // between nodes, GB/s each direction (12.5 = 100 Gb/s)
  double net_latency_us = 10;  // per message between nodes
  double memory_gib = 0;       // memory of one node (0: not checked)
  double overhead_mib = 0;     // memory of one process beyond weights and KV cache, MiB
  void validate() const;       // throws moe::Error naming the field
};

// Bytes per weight as read by a decode step (read) and as held in memory (held).
struct ServeFormat {
  double dense_read = 4, dense_held = 4;    // attention, dense FFNs, shared experts, router, head
  double expert_read = 4, expert_held = 4;  // routed experts
  double kv_bytes = 4;                      // per element of the KV cache
  double act_bytes = 4;                     // per element of the exchanged rows
};
// f32, bf16 (bf16 copies read; the f32 masters held beside them), int8 / int4 (routed experts
// quantized in groups of 32 with fp32 scales, and mins for int4; dense parts f32). Throws moe::Error
// on another name.
ServeFormat serve_format(const std::string& name);

struct ServeShape {
  int64_t ranks = 1;        // N, divides the number of experts
  int64_t concurrency = 1;  // B sequences decoding, one token each per step
  int64_t context = 256;    // mean positions in each sequence's KV cache during the decode
  int64_t kv_dim = 0;       // elements of one position of one layer's keys and values (all heads)
  void validate(const ModelShape& m) const;
};

struct ServePrediction {
  int64_t ranks = 1, concurrency = 1, ranks_per_node = 1, nodes = 1;
  double step_s = 0, tokens_per_s = 0;  // per decode step, and B / step_s
  // Parts of the step (sum = step_s): attention and the other dense layers (every rank, in parallel),
  // the routed experts (the slowest rank of each MoE layer), the all-reduces, the output head (rank
  // 0), the announcement of the step (rank 0 to all).
  double dense_s = 0, expert_s = 0, exchange_s = 0, head_s = 0, announce_s = 0;
  double max_experts = 0;  // mean over MoE layers of the slowest rank's distinct experts
  // Bytes held per rank: dense replica, this rank's experts, the KV cache of the B sequences, and
  // the process's own (ServeCluster::overhead_mib: runtime, buffers, libraries).
  double dense_bytes = 0, expert_bytes = 0, kv_bytes = 0, overhead_bytes = 0;
  double memory_bytes() const { return dense_bytes + expert_bytes + kv_bytes + overhead_bytes; }
  bool fits = true;  // within ServeCluster::memory_gib per node (always true when it is 0)
};

// routing: uniform, zipf or measured per-expert loads (as `moe plan`); trials: Monte Carlo samples
// of the B tokens' choices per MoE layer.
ServePrediction predict_serve(const ModelShape& m, const ServeCluster& c, const ServeFormat& f,
                              const ServeShape& s, const RoutingSpec& routing);

}  // namespace moe::dist
