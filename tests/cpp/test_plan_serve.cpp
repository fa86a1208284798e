// `moe plan --serve` (include/moe/dist/plan_serve.h): step times worked out by hand for a tiny model,
// the expected slowest rank's experts against their closed form, memory per rank, and bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "moe/core/error.h"
#include "moe/dist/plan_serve.h"

using namespace moe;
using namespace moe::dist;

namespace {

// d = 4, 2 layers, both MoE, 4 experts of width 8 (96 weights each), top-2, vocab 10.
ModelShape tiny_model() {
  ModelShape m;
  m.name = "tiny";
  m.hidden_size = 4, m.num_layers = 2, m.num_moe_layers = 2, m.n_experts = 4, m.top_k = 2, m.expert_ffn = 8;
  m.attn_params = 64, m.attn_heads = 2, m.attn_qk_dim = 2, m.attn_v_dim = 2, m.attn_act_dim = 20;
  m.vocab_size = 10;
  return m;
}

// 1 GB/s, fully achieved, and compute far faster: every part costs its bytes in nanoseconds.
ServeCluster bytes_bound(int64_t ranks_per_node) {
  ServeCluster c;
  c.ranks_per_node = ranks_per_node;
  c.mem_gbps = 1, c.mbu = 1, c.gflops = 1e12;
  c.shm_gbps = 1, c.shm_latency_us = 1, c.net_gbps = 0.5, c.net_latency_us = 10;
  return c;
}

ServeShape shape(int64_t ranks, int64_t conc) {
  ServeShape s;
  s.ranks = ranks, s.concurrency = conc, s.context = 10, s.kv_dim = 8;
  return s;
}

RoutingSpec uniform(int trials) {
  RoutingSpec r;
  r.trials = trials;
  return r;
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

}  // namespace

TEST(PlanServe, OneRankBatchOneByHand) {
  const ServePrediction p =
      predict_serve(tiny_model(), bytes_bound(1), serve_format("f32"), shape(1, 1), uniform(8));
  // Per layer: attention 64 weights + the KV cache (10 positions x 8) = 144 f32 = 576 bytes; router
  // 4 x 4 = 16 weights = 64 bytes; one rank holds every expert, a token reads its 2: 768 bytes.
  EXPECT_NEAR(p.dense_s, 2 * (576 + 64) * 1e-9, 1e-15);
  EXPECT_NEAR(p.expert_s, 2 * 768 * 1e-9, 1e-15);
  EXPECT_DOUBLE_EQ(p.max_experts, 2.0);
  EXPECT_NEAR(p.head_s, 40 * 4 * 1e-9, 1e-15);  // rank 0: 10 x 4 weights
  EXPECT_EQ(p.exchange_s, 0.0);
  EXPECT_EQ(p.announce_s, 0.0);
  EXPECT_NEAR(p.step_s, 2976e-9, 1e-15);
  EXPECT_NEAR(p.tokens_per_s, 1.0 / 2976e-9, 1e-6 / 2976e-9);
  // Memory: every weight but the experts (n_params - 2 x 4 x 96), all 768 expert weights, the cache.
  const ModelShape m = tiny_model();
  EXPECT_DOUBLE_EQ(p.dense_bytes, static_cast<double>(m.n_params() - 768) * 4);
  EXPECT_DOUBLE_EQ(p.expert_bytes, 768.0 * 4);
  EXPECT_DOUBLE_EQ(p.kv_bytes, 1.0 * 10 * 8 * 2 * 4);
}

TEST(PlanServe, TwoRanksSlowestRankByMonteCarlo) {
  // Two ranks on one node share its bandwidth (0.5 GB/s each). A token's 2 experts fall on one rank
  // with probability 2 / C(4, 2) = 1/3, so the slowest rank reads 1 + 1/3 experts on average.
  const ServePrediction p =
      predict_serve(tiny_model(), bytes_bound(2), serve_format("f32"), shape(2, 1), uniform(6000));
  EXPECT_NEAR(p.max_experts, 4.0 / 3.0, 0.03);
  // Both on one rank: it reads 768 bytes alone at the node's 1 GB/s; split: each reads 384 bytes at
  // 0.5 GB/s. Either way 768 ns per layer.
  EXPECT_NEAR(p.expert_s, 2 * 768e-9, 1e-15);
  EXPECT_NEAR(p.dense_s, 2 * (576 + 64) / 0.5e9, 1e-15);  // replicated: every rank reads it all
  // One all-reduce per MoE layer: 2 rows of 4 f32 = 32 bytes, ring of 2: (32 / 1 GB/s) + 2 x 1 us.
  EXPECT_NEAR(p.exchange_s, 2 * (32e-9 + 2e-6), 1e-15);
  EXPECT_NEAR(p.announce_s, 2e-6, 1e-15);
  EXPECT_DOUBLE_EQ(p.expert_bytes, 768.0 * 4 / 2);  // half the experts per rank
  // Across two nodes the ring uses the network and each rank has a whole node's bandwidth.
  const ServePrediction q =
      predict_serve(tiny_model(), bytes_bound(1), serve_format("f32"), shape(2, 1), uniform(6000));
  EXPECT_EQ(q.nodes, 2);
  EXPECT_NEAR(q.exchange_s, 2 * (32 / 0.5e9 + 2 * 10e-6), 1e-15);
  EXPECT_NEAR(q.dense_s, p.dense_s / 2, 1e-15);
}

TEST(PlanServe, OneCoreCannotDrawTheWholeNode) {
  // 2 cores, one per rank, each drawing at most 0.6 GB/s alone: a rank holding both experts of the
  // token reads them at 0.6 GB/s (1280 ns), a split reads each at 0.5 GB/s (768 ns).
  ServeCluster c = bytes_bound(2);
  c.cores = 2, c.core_gbps = 0.6;
  const ServePrediction p = predict_serve(tiny_model(), c, serve_format("f32"), shape(2, 1), uniform(6000));
  const double one_rank = (p.max_experts - 1.0);  // the share of trials with both on one rank
  EXPECT_NEAR(one_rank, 1.0 / 3.0, 0.03);
  EXPECT_NEAR(p.expert_s, 2 * (one_rank * 768 / 0.6e9 + (1 - one_rank) * 768e-9), 1e-13);
  EXPECT_NEAR(p.head_s, 160 / 0.6e9, 1e-15);  // rank 0 alone, on its one core
}

TEST(PlanServe, BatchesShareTheWeightReads) {
  // Bandwidth-bound decoding: 16 sequences read the weights about once, so tokens/s grow with them;
  // the KV cache read grows with the sequences.
  const ServePrediction one =
      predict_serve(tiny_model(), bytes_bound(1), serve_format("f32"), shape(1, 1), uniform(64));
  const ServePrediction many =
      predict_serve(tiny_model(), bytes_bound(1), serve_format("f32"), shape(1, 16), uniform(64));
  // Per layer 64 attention weights + 16 sequences' caches (16 x 80), the router's 16, all 4 experts
  // (384 weights each); the head once: 14112 bytes for 16 tokens against 2976 for one.
  EXPECT_NEAR(many.step_s, 14112e-9, 0.01 * 14112e-9);
  EXPECT_GT(many.tokens_per_s, 3 * one.tokens_per_s);
  EXPECT_NEAR(many.max_experts, 4.0, 0.05);  // 16 tokens choose all 4 experts (2 each, so always)
  // Compute-bound when the rate is low: 2 FLOPs per weight and row.
  ServeCluster slow = bytes_bound(1);
  slow.gflops = 1e-3;  // 1e6 FLOP/s
  const ServePrediction c = predict_serve(tiny_model(), slow, serve_format("f32"), shape(1, 1), uniform(8));
  EXPECT_NEAR(c.head_s, 2.0 * 40 / 1e6, 1e-12);
}

TEST(PlanServe, FormatsAndMemory) {
  const ServeFormat bf16 = serve_format("bf16"), i4 = serve_format("int4"), i8 = serve_format("int8");
  EXPECT_EQ(bf16.expert_read, 2);
  EXPECT_EQ(bf16.expert_held, 2);            // packed at load, no f32 copy held
  EXPECT_DOUBLE_EQ(i8.expert_read, 1.0625);  // int8 + an f16 scale per 32
  EXPECT_DOUBLE_EQ(i4.expert_read, 0.625);   // int4 + an f16 scale and min per 32
  EXPECT_EQ(i4.dense_read, 4);
  const ServePrediction f =
      predict_serve(tiny_model(), bytes_bound(1), serve_format("f32"), shape(1, 1), uniform(8));
  const ServePrediction b = predict_serve(tiny_model(), bytes_bound(1), bf16, shape(1, 1), uniform(8));
  EXPECT_NEAR(b.expert_s, f.expert_s / 2, 1e-15);
  ServeCluster small = bytes_bound(1);
  small.memory_gib = 1e-6;  // 1 KiB: the tiny model does not fit
  EXPECT_FALSE(predict_serve(tiny_model(), small, bf16, shape(1, 1), uniform(8)).fits);
}

TEST(PlanServe, BadInput) {
  expect_error([] { serve_format("fp8"); }, "--format");
  expect_error(
      [] { predict_serve(tiny_model(), bytes_bound(1), serve_format("f32"), shape(3, 1), uniform(8)); },
      "divide the experts");
  expect_error(
      [] { predict_serve(tiny_model(), bytes_bound(1), serve_format("f32"), shape(1, 0), uniform(8)); },
      "--concurrency");
  ServeCluster c = bytes_bound(1);
  c.mbu = 1.5;
  expect_error([&] { predict_serve(tiny_model(), c, serve_format("f32"), shape(1, 1), uniform(8)); },
               "--mbu");
  c = bytes_bound(1);
  c.mem_gbps = 0;
  expect_error([&] { predict_serve(tiny_model(), c, serve_format("f32"), shape(1, 1), uniform(8)); },
               "--mem-gbps");
  c = bytes_bound(1);
  c.core_gbps = -1;
  expect_error([&] { predict_serve(tiny_model(), c, serve_format("f32"), shape(1, 1), uniform(8)); },
               "--core-gbps");
}
