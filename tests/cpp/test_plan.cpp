// `moe plan` (include/moe/dist/plan.h): all-to-all bytes of hand-made routings, collective times and
// memory checked against the formulas worked by hand on small cases, monotonic properties of the
// step time, the Monte Carlo straggler on skewed loads, model presets against the config loader, and
// one error per kind of bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "cli/plan_inputs.h"
#include "moe/core/error.h"
#include "moe/dist/plan.h"
#include "moe/model/model_config.h"
#include "moe/train/report.h"

using namespace moe;
using namespace moe::dist;

namespace {

// Exact equality of doubles that are sums of a few exactly representable terms is not guaranteed;
// relative 1e-12 is far below any modelling effect and far above rounding of a handful of operations.
void expect_rel(double got, double want, double rel = 1e-12) {
  EXPECT_NEAR(got, want, rel * std::fabs(want)) << "got " << got << ", want " << want;
}

template <typename F>
void expect_error(F&& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "expected an error mentioning '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

// d = 4, 2 layers, both MoE, 4 experts of width 8, top-2, vocab 10.
ModelShape tiny_model() {
  ModelShape m;
  m.name = "tiny";
  m.hidden_size = 4, m.num_layers = 2, m.num_moe_layers = 2, m.n_experts = 4, m.top_k = 2, m.expert_ffn = 8;
  m.attn_params = 64, m.attn_heads = 2, m.attn_qk_dim = 2, m.attn_v_dim = 2, m.attn_act_dim = 20;
  m.vocab_size = 10;
  return m;
}

ClusterSpec test_cluster(int64_t nodes, int64_t per_node) {
  ClusterSpec c;
  c.name = "test";
  c.nodes = nodes, c.gpus_per_node = per_node;
  c.intra_gbps = 100, c.intra_latency_us = 1, c.inter_gbps = 10, c.inter_latency_us = 10;
  c.peak_tflops = 100, c.mfu = 0.5, c.memory_gib = 80, c.reserve_gib = 0;
  return c;
}

PlanInput mixtral_input(int64_t gpus) {
  PlanInput in;
  in.cluster = cluster_preset("h100-ib");
  in.cluster.nodes = gpus / in.cluster.gpus_per_node;
  in.model = cli::plan_model("mixtral-8x7b");
  in.train.global_batch_tokens = gpus * 4096 * 4;
  in.routing.trials = 8;
  return in;
}

}  // namespace

// ---- dispatch bytes ------------------------------------------------------------------------------

TEST(PlanBytes, TwoRanksFourExpertsExact) {
  // Experts 0, 1 on rank 0; 2, 3 on rank 1. Rows of d = 3 bf16 elements: 6 bytes.
  const DispatchShape s{2, 4, 3, 2};
  const std::vector<int64_t> counts = {5, 1, 2, 3,   // rank 0: 2 + 3 rows leave for rank 1
                                       4, 0, 7, 1};  // rank 1: 4 + 0 rows leave for rank 0
  const DispatchBytes b = dispatch_bytes(s, counts);
  EXPECT_EQ(b.sent, (std::vector<int64_t>{30, 24}));
  EXPECT_EQ(b.received, (std::vector<int64_t>{24, 30}));
  EXPECT_EQ(b.total(), 54);
  // All rows local: nothing crosses.
  EXPECT_EQ(dispatch_bytes(s, {3, 9, 0, 0, 0, 0, 2, 8}).total(), 0);
  // One rank: the self block only.
  EXPECT_EQ(dispatch_bytes(DispatchShape{1, 4, 3, 2}, {1, 2, 3, 4}).total(), 0);
}

TEST(PlanBytes, FourRanksOneExpertEach) {
  // counts[s][e] = 10 s + e rows; rank s sends every row except counts[s][s].
  const DispatchShape s{4, 4, 8, 4};  // 32-byte rows
  std::vector<int64_t> counts;
  for (int src = 0; src < 4; ++src)
    for (int e = 0; e < 4; ++e) counts.push_back(10 * src + e);
  const DispatchBytes b = dispatch_bytes(s, counts);
  for (int r = 0; r < 4; ++r) {
    int64_t sent = 0, recv = 0;
    for (int j = 0; j < 4; ++j) {
      if (j == r) continue;
      sent += 10 * r + j, recv += 10 * j + r;
    }
    EXPECT_EQ(b.sent[r], 32 * sent) << r;
    EXPECT_EQ(b.received[r], 32 * recv) << r;
  }
}

TEST(PlanBytes, ExpectedMatchesExactAtTheMean) {
  // p = (0.5, 0.2, 0.2, 0.1): q = (0.7, 0.3). T = 10 tokens, k = 2: 20 rows per rank, on average
  // (10, 4, 4, 2) per expert, which are integers, so the exact count gives the same bytes.
  const DispatchShape s{2, 4, 3, 2};
  const ExpectedDispatchBytes e = expected_dispatch_bytes(s, 10, 2, {0.5, 0.2, 0.2, 0.1});
  expect_rel(e.sent[0], 20 * 0.3 * 6), expect_rel(e.sent[1], 20 * 0.7 * 6);
  expect_rel(e.received[0], 20 * 0.7 * 6), expect_rel(e.received[1], 20 * 0.3 * 6);
  const DispatchBytes x = dispatch_bytes(s, {10, 4, 4, 2, 10, 4, 4, 2});
  for (int r = 0; r < 2; ++r) {
    expect_rel(e.sent[r], static_cast<double>(x.sent[r]));
    expect_rel(e.received[r], static_cast<double>(x.received[r]));
  }
  // Unnormalised loads are normalised; uniform routing: T k (1 − 1/ep) d b for every rank.
  const ExpectedDispatchBytes u =
      expected_dispatch_bytes(DispatchShape{8, 64, 4096, 2}, 4096, 8, std::vector<double>(64, 3.0));
  for (double v : u.sent) expect_rel(v, 4096.0 * 8 * (1 - 1.0 / 8) * 4096 * 2);
  expect_rel(u.mean_sent(), 4096.0 * 8 * (1 - 1.0 / 8) * 4096 * 2);
}

TEST(PlanBytes, BadShapesAreErrors) {
  expect_error(
      [] {
        dispatch_bytes(DispatchShape{3, 4, 3, 2}, std::vector<int64_t>(12, 1));
      },
      "does not divide");
  expect_error([] { dispatch_bytes(DispatchShape{2, 4, 3, 2}, std::vector<int64_t>(7, 1)); }, "8 entries");
  expect_error([] { dispatch_bytes(DispatchShape{2, 4, 3, 2}, {1, 1, 1, 1, 1, -1, 1, 1}); }, "negative");
  expect_error([] { expected_dispatch_bytes(DispatchShape{2, 4, 3, 2}, 10, 5, {1, 1, 1, 1}); }, "top_k");
  expect_error([] { expected_dispatch_bytes(DispatchShape{2, 4, 3, 2}, 10, 2, {0, 0, 0, 0}); }, "positive");
}

// ---- collectives ---------------------------------------------------------------------------------

TEST(PlanCollectives, ExchangeByHand) {
  // 2 nodes of 2 GPUs, EP 4 over both; uniform loads; every rank routes 1000 × 2 rows of 1000 bytes.
  const ClusterSpec c = test_cluster(2, 2);
  const EpPlacement p = ep_placement(c, 4);
  EXPECT_EQ(p.ranks_per_node, 2);
  EXPECT_EQ(p.nodes, 2);
  ExchangeInput in{1000, 2, 1000, {0.25, 0.25, 0.25, 0.25}, false};
  const double rows = 2e6;
  // Flat: NVLink carries max(sent 0.25, received 1 × 0.25) of the rows, the network max(0.5, 2 × 0.25).
  ExchangeCost f = exchange_cost(c, p, in);
  expect_rel(f.intra_bytes, 0.25 * rows), expect_rel(f.inter_bytes, 0.5 * rows);
  expect_rel(f.latency_s, 1 * 1e-6 + 2 * 10e-6);
  expect_rel(f.seconds, std::max(0.25 * rows / 100e9, 0.5 * rows / 10e9) + 21e-6);
  // Two stages: inside the node everything bound for the other local index (half the rows), then one
  // block per node pair (2 GPUs' quarter each).
  in.hierarchical = true;
  ExchangeCost h = exchange_cost(c, p, in);
  expect_rel(h.intra_bytes, 0.5 * rows), expect_rel(h.inter_bytes, 0.5 * rows);
  expect_rel(h.latency_s, 1e-6 + 10e-6);
  expect_rel(h.seconds, 0.5 * rows / 100e9 + 0.5 * rows / 10e9 + 11e-6);
  // A hot rank: rank 0 gets 40 %. It receives 3 × 0.4 of a rank's rows, 2 × 0.4 over the network.
  in.hierarchical = false;
  in.rank_load = {0.4, 0.2, 0.2, 0.2};
  f = exchange_cost(c, p, in);
  expect_rel(f.inter_bytes, 0.8 * rows);
  expect_rel(f.seconds, 0.8 * rows / 10e9 + 21e-6);
  // EP inside one node: no network bytes, no network latency.
  const ExchangeCost one =
      exchange_cost(c, ep_placement(c, 2), ExchangeInput{1000, 2, 1000, {0.5, 0.5}, false});
  EXPECT_EQ(one.inter_bytes, 0.0);
  expect_rel(one.seconds, 0.5 * rows / 100e9 + 1e-6);
  EXPECT_EQ(exchange_cost(c, ep_placement(c, 1), ExchangeInput{1000, 2, 1000, {1.0}, false}).seconds, 0.0);
}

TEST(PlanCollectives, RingByHand) {
  const ClusterSpec c = test_cluster(2, 2);
  // 4 ranks on 2 nodes: a node's data crosses 2 NICs (2 × 10 GB/s < 100 GB/s NVLink).
  expect_rel(ring_allreduce_s(c, 4, 2, 1e9), 2 * 0.75 * 1e9 / 20e9 + 2 * 3 * 10e-6);
  // 2 ranks, one per node (an expert-DP group with ep = 2): one NIC.
  expect_rel(ring_allreduce_s(c, 2, 1, 1e9), 2 * 0.5 * 1e9 / 10e9 + 2 * 10e-6);
  // Inside one node: NVLink.
  expect_rel(ring_allreduce_s(c, 2, 2, 1e9), 2 * 0.5 * 1e9 / 100e9 + 2 * 1e-6);
  expect_rel(ring_half_s(c, 4, 2, 1e9), 0.75 * 1e9 / 20e9 + 3 * 10e-6);
  EXPECT_EQ(ring_allreduce_s(c, 1, 1, 1e9), 0.0);
}

TEST(PlanCollectives, PlacementErrors) {
  const ClusterSpec c = test_cluster(6, 8);  // 48 GPUs
  EXPECT_EQ(ep_placement(c, 16).nodes, 2);
  EXPECT_EQ(ep_placement(c, 4).nodes, 1);
  expect_error([&] { ep_placement(c, 12); }, "neither divides");
  expect_error([&] { ep_placement(c, 64); }, "does not divide the world");
}

// ---- FLOPs and memory ----------------------------------------------------------------------------

TEST(PlanMemory, TinyModelByHand) {
  const ModelShape m = tiny_model();
  // Embeddings 2 × 10 × 4 + final norm 4 + 2 × (attention 64 + norms 8) + 2 × (4 experts × 96 + router 16).
  EXPECT_EQ(m.n_params(), 80 + 4 + 144 + 800);
  EXPECT_EQ(m.routed_expert_params(), 768);
  EXPECT_EQ(m.dense_params(), 260);
  EXPECT_EQ(m.n_active_params(), 1028 - 2 * 2 * 96);
  const ClusterSpec c = test_cluster(1, 4);  // EP 2 → expert-DP groups of 2; dense replicated on 4
  TrainShape t;
  t.seq_len = 8, t.micro_batch_tokens = 8, t.global_batch_tokens = 32;
  // Per rank: 260 dense + 384 expert parameters.
  MemoryBreakdown z0 = memory_per_rank(c, m, t, 2, 0, 1.0);
  EXPECT_EQ(z0.params, 644 * 2);
  EXPECT_EQ(z0.grads, 644 * 4);
  EXPECT_EQ(z0.optimizer, 644 * 12);  // fp32 master + two fp32 moments
  EXPECT_EQ(z0.gather_buffers, 0);
  // Activations per token: attention 20 × 2; MoE 2d × 2 + 4 fp32 router + k × (2d + 3f) × 2 =
  // 16 + 16 + 128 = 160; head 4 × 2 + 10 fp32 logits = 48. Two layers, 8 tokens.
  EXPECT_EQ(z0.activations, 8 * (2 * 40 + 2 * 160 + 48));
  EXPECT_EQ(z0.reserve, 0);
  // A straggler with 1.5× the mean load keeps 1.5× the expert rows.
  EXPECT_EQ(memory_per_rank(c, m, t, 2, 0, 1.5).activations, 8 * (2 * 40 + 2 * (32 + 192) + 48));
  // ZeRO: optimizer state sharded over 4 (dense) and 2 (experts) ranks, then gradients, then weights.
  const double sharded = 260.0 / 4 + 384.0 / 2;
  EXPECT_EQ(memory_per_rank(c, m, t, 2, 1, 1.0).optimizer, sharded * 12);
  EXPECT_EQ(memory_per_rank(c, m, t, 2, 1, 1.0).grads, 644 * 4);
  EXPECT_EQ(memory_per_rank(c, m, t, 2, 2, 1.0).grads, sharded * 4);
  const MemoryBreakdown z3 = memory_per_rank(c, m, t, 2, 3, 1.0);
  EXPECT_EQ(z3.params, sharded * 2);
  // Largest layer on a rank: attention 64 + norms 8 + 2 local experts × 96 + router 16 = 280, twice, bf16.
  EXPECT_EQ(z3.gather_buffers, 2 * 280 * 2);
  // Recomputation: layer inputs (2 × 4 × 2) + one layer's attention and MoE activations + head.
  t.recompute = true;
  EXPECT_EQ(memory_per_rank(c, m, t, 2, 0, 1.0).activations, 8 * (16 + 40 + 160 + 48));
  ClusterSpec r = c;
  r.reserve_gib = 2;
  EXPECT_EQ(memory_per_rank(r, m, t, 2, 0, 1.0).reserve, 2.0 * 1024 * 1024 * 1024);
  expect_error([&] { memory_per_rank(c, m, t, 2, 4, 1.0); }, "--zero");
}

TEST(PlanFlops, TinyModelByHand) {
  const ModelShape m = tiny_model();
  // Per layer: 2 × 64 projections + 2 heads × (2 + 2) × (8 + 1) scores + router 2 × 4 × 4; head 2 × 10 × 4.
  expect_rel(dense_flops_per_token(m, 8), 2 * (128 + 72 + 32) + 80);
  expect_rel(expert_flops_per_assignment(m), 6 * 4 * 8);
}

// ---- one layout ----------------------------------------------------------------------------------

TEST(PlanLayout, PureDataParallelStepByHand) {
  PlanInput in;
  in.cluster = test_cluster(2, 2);
  in.model = tiny_model();
  in.train.seq_len = 8, in.train.micro_batch_tokens = 16, in.train.global_batch_tokens = 4 * 40;
  in.routing.trials = 4;
  const LayoutResult r = evaluate_layout(in, 1, 0);
  EXPECT_EQ(r.tokens_per_rank, 40);
  EXPECT_EQ(r.micro_batches, 3);  // 16 + 16 + 8
  EXPECT_DOUBLE_EQ(r.max_load, 1.0);
  EXPECT_EQ(r.t_a2a, 0.0);
  EXPECT_EQ(r.a2a_bytes, 0.0);
  const double rate = 100e12 * 0.5;
  expect_rel(r.t_dense, 40 * dense_flops_per_token(in.model, 8) * 3 / rate);
  expect_rel(r.t_expert, 40 * 2 * 2 * 192.0 * 3 / rate, 1e-9);  // 40 tokens × k × 2 layers × 6df
  // Every parameter replicated on 4 ranks over 2 nodes: fp32 all-reduces of the dense parameters and
  // of the experts (whose DP group is the whole world when ep = 1).
  expect_rel(r.t_grad,
             ring_allreduce_s(in.cluster, 4, 2, 260.0 * 4) + ring_allreduce_s(in.cluster, 4, 2, 768.0 * 4));
  expect_rel(r.grad_bytes, 2 * 0.75 * 1028.0 * 4);
  expect_rel(r.t_step, r.t_dense + r.t_expert + r.t_grad);
  expect_rel(r.mfu, 3 * 40 * (dense_flops_per_token(in.model, 8) + 2 * 2 * 192.0) / (r.t_step * 100e12));
}

TEST(PlanLayout, AllToAllBytesPerStep) {
  PlanInput in;
  in.cluster = test_cluster(2, 2);
  in.model = tiny_model();
  in.train.seq_len = 8, in.train.micro_batch_tokens = 8, in.train.global_batch_tokens = 4 * 32;
  in.train.dispatch_bytes = 1;
  in.routing.trials = 4;
  // 32 tokens × k 2 × d 4 × 2 layers, (1 fp8 dispatch + 3 bf16 exchanges), 3/4 of it to other ranks,
  // 1/2 (the other node) over the network.
  const LayoutResult r = evaluate_layout(in, 4, 0);
  expect_rel(r.a2a_bytes, 32.0 * 2 * 4 * 2 * (1 + 3 * 2) * 0.75);
  expect_rel(r.a2a_inter_bytes, 32.0 * 2 * 4 * 2 * (1 + 3 * 2) * 0.5);
  EXPECT_TRUE(r.spans_nodes);
  EXPECT_GT(r.t_a2a, 0.0);
  EXPECT_GE(r.t_a2a, r.t_a2a_latency);
  // 4 micro-batches × 2 layers × 4 exchanges × (1 intra + 2 inter peer latencies).
  expect_rel(r.t_a2a_latency, 4 * 2 * 4 * (1e-6 + 2 * 10e-6), 1e-9);
}

TEST(PlanLayout, MoreNetworkBandwidthIsNeverSlower) {
  for (int64_t ep : {1, 2, 4, 8, 16, 32}) {
    double last[2] = {INFINITY, INFINITY};  // flat, hierarchical
    for (double bw : {5.0, 12.5, 25.0, 50.0, 100.0, 400.0}) {
      PlanInput in;
      in.cluster = test_cluster(8, 4);
      in.cluster.inter_gbps = bw;
      in.model = tiny_model();
      in.model.n_experts = 32, in.model.top_k = 4;
      in.train.seq_len = 64, in.train.micro_batch_tokens = 256, in.train.global_batch_tokens = 32 * 1024;
      in.routing.kind = LoadKind::Zipf, in.routing.zipf_s = 1.1, in.routing.trials = 8;
      for (bool hier : {false, true}) {
        in.options.hierarchical = hier;
        const LayoutResult r = evaluate_layout(in, ep, 1);
        EXPECT_LE(r.t_step, last[hier] * (1 + 1e-12)) << "ep " << ep << " bw " << bw << " hier " << hier;
        last[hier] = r.t_step;
      }
    }
  }
}

TEST(PlanLayout, EpBeyondTheNodeAddsNetworkTime) {
  PlanInput in = mixtral_input(64);
  in.model.n_experts = 64;  // a fine-grained variant so that EP can exceed 8
  const LayoutResult inside = evaluate_layout(in, 8, 1);
  const LayoutResult across = evaluate_layout(in, 16, 1);
  EXPECT_FALSE(inside.spans_nodes);
  EXPECT_TRUE(across.spans_nodes);
  EXPECT_EQ(inside.a2a_inter_bytes, 0.0);
  EXPECT_GT(across.a2a_inter_bytes, 0.0);
  EXPECT_GT(across.t_a2a, inside.t_a2a);
  // The network speed changes the all-to-all only of the layout that uses the network.
  PlanInput fast = in;
  fast.cluster.inter_gbps *= 4;
  EXPECT_DOUBLE_EQ(evaluate_layout(fast, 8, 1).t_a2a, inside.t_a2a);
  EXPECT_LT(evaluate_layout(fast, 16, 1).t_a2a, across.t_a2a);
}

// ---- routing Monte Carlo -------------------------------------------------------------------------

TEST(PlanRouting, StragglerOfMeasuredAndZipfLoads) {
  PlanInput in;
  in.cluster = test_cluster(1, 2);
  in.model = tiny_model();
  in.train.seq_len = 4096, in.train.micro_batch_tokens = 4096, in.train.global_batch_tokens = 2 * 4096;
  in.routing.trials = 16;
  const LayoutResult uniform = evaluate_layout(in, 2, 0);
  // 2 · 4096 · 2 = 16384 assignments: the noise of the busier rank's share is ~ 0.4 % (σ = 0.5/√16384).
  EXPECT_GE(uniform.max_load, 1.0);
  EXPECT_LT(uniform.max_load, 1.03);
  // Measured: experts 0 and 1 (rank 0) take 80 %.
  in.routing.kind = LoadKind::Measured;
  in.routing.measured = {{0.7, 0.1, 0.1, 0.1}};
  const LayoutResult skewed = evaluate_layout(in, 2, 0);
  EXPECT_NEAR(skewed.max_load, 1.6, 0.03);
  EXPECT_NEAR(skewed.t_expert / uniform.t_expert, 1.6 / uniform.max_load, 0.03);
  EXPECT_GT(skewed.t_a2a, uniform.t_a2a);
  // Per-layer loads: a balanced layer and a skewed one average to 1.3.
  in.routing.measured = {{1, 1, 1, 1}, {0.7, 0.1, 0.1, 0.1}};
  EXPECT_NEAR(evaluate_layout(in, 2, 0).max_load, 0.5 * (uniform.max_load + 1.6), 0.03);
  // Zipf s = 2 on 4 experts: the top expert alone has 1/(1 + 1/4 + 1/9 + 1/16) = 70 %.
  in.routing.kind = LoadKind::Zipf, in.routing.zipf_s = 2.0, in.routing.measured.clear();
  const LayoutResult z = evaluate_layout(in, 2, 0);
  EXPECT_GT(z.max_load, 1.4);
  EXPECT_EQ(evaluate_layout(in, 2, 0).t_step, z.t_step);  // seeded: deterministic
  const std::vector<double> p = expert_distribution(in.routing, 4);
  EXPECT_NEAR(p[0], 1 / (1 + 0.25 + 1.0 / 9 + 1.0 / 16), 1e-15);
}

TEST(PlanRouting, LoadFiles) {
  EXPECT_EQ(parse_expert_loads("[1, 3]", "x").at(0), (std::vector<double>{0.25, 0.75}));
  const auto two = parse_expert_loads("[[1, 1], [0, 2]]", "x");
  ASSERT_EQ(two.size(), 2u);
  EXPECT_EQ(two[1], (std::vector<double>{0, 1}));
  EXPECT_EQ(parse_expert_loads(R"({"step": 3, "expert_load": [[2, 2]]})", "x").at(0),
            (std::vector<double>{0.5, 0.5}));
}

TEST(PlanRouting, MetricsLogOfATrainingRun) {
  // The test run of `moe report` (tests/cli/data/report_run): 30 steps, 2 MoE layers of 4 experts,
  // with NaN tokens in a skipped step. The loads are the mean of the last 10 steps.
  const std::string path = MOE_TEST_FIXTURES "/../cli/data/report_run/metrics.jsonl";
  const train::RunMetrics m = train::read_metrics(path);
  const auto run = cli::plan_expert_loads(path);
  ASSERT_EQ(run.size(), 2u);
  ASSERT_EQ(run[0].size(), 4u);
  for (size_t l = 0; l < 2; ++l) {
    std::vector<double> want(4, 0.0);
    double sum = 0;
    for (size_t i = m.steps.size() - 10; i < m.steps.size(); ++i)
      for (size_t e = 0; e < 4; ++e)
        want[e] += m.steps[i].expert_load[l][e], sum += m.steps[i].expert_load[l][e];
    for (size_t e = 0; e < 4; ++e) EXPECT_NEAR(run[l][e], want[e] / sum, 1e-15) << l << " " << e;
  }
  // A plain JSON file goes through parse_expert_loads.
  const auto fixture = cli::plan_expert_loads(MOE_TEST_FIXTURES "/../cli/data/plan_loads.json");
  EXPECT_EQ(fixture.size(), 1u);
  expect_error(
      [] { cli::plan_expert_loads(MOE_TEST_FIXTURES "/../cli/data/report_malformed/metrics.jsonl"); },
      "metrics.jsonl:3: invalid JSON");
  expect_error([] { cli::plan_expert_loads(MOE_TEST_FIXTURES "/../cli/data/layer_ok.json"); },
               "no \"expert_load\"");
}

TEST(PlanRouting, MalformedLoadFilesAreErrors) {
  expect_error([] { parse_expert_loads("{\"a\": 1}\n{oops\n", "bad.json"); }, "bad.json: invalid JSON");
  expect_error([] { parse_expert_loads("[1, \"x\"]", "f.json"); }, "f.json[1] must be a number");
  expect_error([] { parse_expert_loads("[1, -2]", "f.json"); }, "must be >= 0");
  expect_error([] { parse_expert_loads("[0, 0]", "f.json"); }, "all zero");
  expect_error([] { parse_expert_loads("[[1, 2], [1, 2, 3]]", "f.json"); }, "f.json[1] has 3 experts");
  expect_error([] { parse_expert_loads("{\"loss\": 1}", "f.json"); }, "no \"expert_load\"");
  expect_error([] { parse_expert_loads("[]", "f.json"); }, "must be a list");
  expect_error([] { load_expert_loads("/no/such/loads.json"); }, "cannot open expert load file");
  // Loads that do not match the model.
  RoutingSpec r;
  r.kind = LoadKind::Measured;
  r.measured = {{0.5, 0.5}};
  expect_error([&] { r.validate(tiny_model()); }, "has 2 experts, the model has 4");
  r.measured = {{1, 1, 1, 1}, {1, 1, 1, 1}, {1, 1, 1, 1}};
  expect_error([&] { r.validate(tiny_model()); }, "3 layers");
  r.measured = {{1, 1, -1, 1}};
  expect_error([&] { r.validate(tiny_model()); }, "not a finite number >= 0");
  r.measured = {{0, 0, 0, 0}};
  expect_error([&] { r.validate(tiny_model()); }, "all zero");
}

// ---- the plan ------------------------------------------------------------------------------------

TEST(Plan, RecommendsTheFastestLayoutThatFits) {
  const PlanInput in = mixtral_input(128);
  const Plan p = make_plan(in);
  ASSERT_EQ(p.layouts.size(), 4u);  // EP 1, 2, 4, 8 (8 experts)
  ASSERT_EQ(p.best, 0);
  for (size_t i = 0; i < p.layouts.size(); ++i) {
    const LayoutResult& r = p.layouts[i];
    EXPECT_EQ(r.fits, r.memory.total() <= in.cluster.memory_gib * 1024.0 * 1024 * 1024);
    if (i > 0 && r.fits) {
      EXPECT_GE(r.t_step, p.layouts[i - 1].t_step);
      EXPECT_TRUE(p.layouts[i - 1].fits);
    }
    if (r.fits && r.zero > 0) {  // auto ZeRO: the lowest stage that fits
      EXPECT_FALSE(evaluate_layout(in, r.ep, r.zero - 1).fits) << r.ep;
    }
    EXPECT_EQ(r.ep * r.dp, 128);
  }
  // A given list of EP sizes.
  PlanInput some = in;
  some.options.ep_sizes = {2, 8};
  EXPECT_EQ(make_plan(some).layouts.size(), 2u);
}

TEST(Plan, DeepSeekV3On2048Gpus) {
  PlanInput in;
  in.cluster = cluster_preset("h800-ib");
  in.cluster.nodes = 256;
  in.model = cli::plan_model("deepseek-v3");
  in.train.global_batch_tokens = 16384LL * 4096;
  in.train.recompute = true;  // 4096-token micro-batches of 61 layers do not fit in 80 GB otherwise
  const Plan p = make_plan(in);
  EXPECT_EQ(p.layouts.size(), 9u);  // EP 1 .. 256
  ASSERT_GE(p.best, 0);
  const LayoutResult& b = p.layouts[p.best];
  EXPECT_GT(b.ep, 1);
  EXPECT_GT(b.mfu, 0.0);
  EXPECT_LT(b.mfu, in.cluster.mfu);
}

TEST(Plan, BadInputsAreErrors) {
  PlanInput in = mixtral_input(64);
  in.options.ep_sizes = {3};
  expect_error([&] { make_plan(in); }, "EP size 3 does not divide the 8 experts");
  expect_error([&] { evaluate_layout(in, 3, 0); }, "does not divide the 8 experts");
  in.options.ep_sizes = {};
  in.cluster.inter_gbps = 0;
  expect_error([&] { make_plan(in); }, "inter-node bandwidth must be > 0");
  in.cluster.inter_gbps = 50, in.cluster.intra_gbps = 0;
  expect_error([&] { make_plan(in); }, "intra-node bandwidth must be > 0");
  in.cluster.intra_gbps = 450, in.cluster.mfu = 1.5;
  expect_error([&] { make_plan(in); }, "MFU must be in (0, 1]");
  in.cluster.mfu = 0.5;
  in.train.global_batch_tokens = 4096 * 64 + 4096;
  expect_error([&] { make_plan(in); }, "does not split into whole sequences");
  in.train.global_batch_tokens = 4096 * 64;
  in.train.micro_batch_tokens = 1000;
  expect_error([&] { make_plan(in); }, "multiple of --seq-len");
  in.train.micro_batch_tokens = 4096;
  in.options.a2a_overlap = 2;
  expect_error([&] { make_plan(in); }, "--a2a-overlap");
  in.options.a2a_overlap = 0, in.options.zero = 5;
  expect_error([&] { make_plan(in); }, "--zero");
  expect_error([] { cluster_preset("x100-ib"); }, "unknown cluster preset 'x100-ib' (known: h100-ib");
  expect_error([] { cli::plan_model("mixtral-9x9b"); }, "neither a preset");
  ModelShape m = tiny_model();
  m.top_k = 5;
  expect_error([&] { m.validate(); }, "top_k");
}

// ---- model presets and config.json ---------------------------------------------------------------

TEST(PlanModel, PresetsMatchTheConfigLoader) {
  for (const cli::PlanModelPreset& p : cli::plan_model_presets()) {
    const model::ModelConfig c = model::model_config_from_json(p.config_json);
    const ModelShape s = cli::plan_model(p.name);
    EXPECT_EQ(s.n_params(), c.n_params()) << p.name;
    EXPECT_EQ(s.n_active_params(), c.n_active_params()) << p.name;
  }
  const ModelShape ds = cli::plan_model("deepseek-v3");
  EXPECT_EQ(ds.n_params(), 671026404352);  // as transformers' DeepseekV3ForCausalLM counts it
  EXPECT_EQ(ds.num_moe_layers, 58);
  EXPECT_EQ(ds.n_experts, 256);
  EXPECT_EQ(ds.top_k, 8);
  EXPECT_EQ(ds.shared_ffn, 2048);
  EXPECT_EQ(ds.attn_qk_dim, 192);
  EXPECT_NEAR(static_cast<double>(cli::plan_model("mixtral-8x7b").n_params()) / 1e9, 46.7, 0.1);
  EXPECT_NEAR(static_cast<double>(cli::plan_model("mixtral-8x7b").n_active_params()) / 1e9, 12.9, 0.1);
  EXPECT_NEAR(static_cast<double>(cli::plan_model("mixtral-8x22b").n_params()) / 1e9, 141, 1);
  EXPECT_NEAR(static_cast<double>(cli::plan_model("qwen3-235b-a22b").n_params()) / 1e9, 235, 1);
  EXPECT_NEAR(static_cast<double>(cli::plan_model("qwen3-235b-a22b").n_active_params()) / 1e9, 22, 0.5);
  EXPECT_NEAR(static_cast<double>(cli::plan_model("olmoe").n_params()) / 1e9, 6.9, 0.1);
  EXPECT_NEAR(static_cast<double>(cli::plan_model("olmoe").n_active_params()) / 1e9, 1.3, 0.05);
  // A model directory of Hugging Face transformers (tests/fixtures/hf).
  const ModelShape tiny = cli::plan_model(MOE_TEST_FIXTURES "/hf/mixtral");
  EXPECT_EQ(tiny.n_experts, 4);
  EXPECT_EQ(tiny.num_moe_layers, 2);
  const ModelShape q2 = cli::plan_model(MOE_TEST_FIXTURES "/hf/qwen2_moe/config.json");
  EXPECT_EQ(q2.n_params(),
            model::load_model_config(MOE_TEST_FIXTURES "/hf/qwen2_moe/config.json").n_params());
}
