// Expert parallelism at inference (ExpertParallel::replicated_tokens, ReplicatedTokensDispatcher)
// against a single process. Every rank holds the same tokens; its layer holds only its shard of the
// routed experts (E / R), computes its experts' rows of every token, and one all-reduce sums the
// weighted rows (each row non-zero on exactly one rank). Every rank builds the single-process layer
// holding all E experts from the same seed and runs it on the same tokens: y must be bit-identical,
// and the routing statistics equal (they are computed from the replicated routing).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "layer_testutil.h"
#include "moe/core/error.h"
#include "moe/dist/comm.h"
#include "moe/moe/expert_parallel.h"
#include "moe/moe/layer.h"
#include "mpi_testutil.h"

namespace moe {
namespace {

constexpr int64_t kExperts = 12;  // divisible by 2, 4 and 6 ranks

bool bit_equal(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape() || a.dtype() != b.dtype()) return false;
  const size_t bytes = static_cast<size_t>(a.numel()) * static_cast<size_t>(dtype_bits(a.dtype())) / 8;
  return bytes == 0 || std::memcmp(a.raw(), b.raw(), bytes) == 0;
}

// Rows [first, first + n) of t, as a contiguous copy.
Tensor rows(const Tensor& t, int64_t first, int64_t n) { return t.slice(0, first, first + n).contiguous(); }

// Elements of a and b whose bits differ (a and b of one shape and dtype).
int64_t differing_elements(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape() || a.dtype() != b.dtype()) return -1;
  const size_t elem = static_cast<size_t>(dtype_bits(a.dtype()) / 8);
  const auto* pa = static_cast<const unsigned char*>(a.raw());
  const auto* pb = static_cast<const unsigned char*>(b.raw());
  int64_t n = 0;
  for (int64_t i = 0; i < a.numel(); ++i) n += std::memcmp(pa + i * elem, pb + i * elem, elem) != 0;
  return n;
}

MoEConfig infer_config() {
  MoEConfig c;
  c.d_model = 32;
  c.d_ff = 48;
  c.n_experts = kExperts;
  c.router.top_k = 2;  // token choice, softmax scores (the defaults)
  c.activation = kernels::Activation::SwiGLU;
  return c;
}

class EpInfer : public test::MpiTest {
 protected:
  // The single-process layer (all E experts) and this rank's replicated-tokens layer, both from
  // `seed`. False when the experts do not split over the ranks.
  bool make_layers(const MoEConfig& cfg, DType dtype, uint64_t seed) {
    if (cfg.n_experts % size() != 0) return false;
    full_ = std::make_unique<MoELayer>(cfg, dtype);
    full_->init_params(seed);
    ExpertParallel ep{comm_ptr()};
    ep.replicated_tokens = true;
    ep_ = std::make_unique<MoELayer>(cfg, dtype, kernels::Backend::Cpu, false, ep);
    ep_->init_params(seed);
    El_ = ep_->local_experts();
    first_ = ep_->first_expert();
    EXPECT_EQ(El_, cfg.n_experts / size());
    EXPECT_EQ(first_, rank() * El_);
    EXPECT_TRUE(ep_->expert_parallel().replicated_tokens);
    // This rank's experts are the single process's slice; the router and shared experts replicas.
    const MoEParams &pe = ep_->params(), &pf = full_->params();
    if (pf.w_gate.defined()) {
      EXPECT_TRUE(bit_equal(pe.w_gate, rows(pf.w_gate, first_, El_))) << "rank " << rank();
    }
    EXPECT_TRUE(bit_equal(pe.w_up, rows(pf.w_up, first_, El_))) << "rank " << rank();
    EXPECT_TRUE(bit_equal(pe.w_down, rows(pf.w_down, first_, El_))) << "rank " << rank();
    EXPECT_TRUE(bit_equal(pe.router_w, pf.router_w));
    if (cfg.shared_width() > 0) {
      EXPECT_TRUE(bit_equal(pe.shared_w_up, pf.shared_w_up));
      EXPECT_TRUE(bit_equal(pe.shared_w_down, pf.shared_w_down));
    }
    return true;
  }

  // Sets the selection bias of both layers (router.use_bias must be on).
  void set_bias(const std::vector<double>& b) {
    for (int64_t e = 0; e < static_cast<int64_t>(b.size()); ++e) {
      full_->params().router_bias.set(e, b[e]);
      ep_->params().router_bias.set(e, b[e]);
    }
  }

  // Runs both layers on x (the same on every rank) and compares; returns the reference forward.
  // Also checks that the forward made exactly one all-reduce of the (N, d) weighted rows.
  MoEForward compare(const Tensor& x, const std::string& what) {
    SCOPED_TRACE(what + " (" + std::to_string(x.size(0)) + " tokens, rank " + std::to_string(rank()) +
                 " of " + std::to_string(size()) + ")");
    comm().reset_stats();
    const MoEForward fe = ep_->forward(x);
    const dist::CommStats cs = comm().stats();
    const MoEForward fr = full_->forward(x);
    EXPECT_TRUE(bit_equal(fe.y, fr.y))
        << "y differs in " << differing_elements(fe.y, fr.y) << " of " << fr.y.numel()
        << " elements, max rel " << testing::rel_err(fe.y, fr.y);
    EXPECT_EQ(fe.stats.tokens_per_expert, fr.stats.tokens_per_expert);
    EXPECT_EQ(fe.stats.routed_per_expert, fr.stats.routed_per_expert);
    EXPECT_EQ(fe.stats.dropped, fr.stats.dropped);
    EXPECT_EQ(fe.stats.skipped, fr.stats.skipped);
    EXPECT_EQ(fe.routing.n_assign, fr.routing.n_assign);
    if (size() > 1 && x.size(0) > 0) {
      EXPECT_EQ(cs.allreduce_calls, 1) << "one all-reduce per forward";
      EXPECT_EQ(cs.allreduce_bytes,
                fr.routing.n_assign * x.size(1) * static_cast<int64_t>(dtype_bits(x.dtype()) / 8));
      EXPECT_EQ(cs.alltoall_calls, 0) << "no token row travels";
    }
    return fr;
  }

  std::unique_ptr<MoELayer> full_, ep_;
  int64_t El_ = 0, first_ = 0;
};

// Skips on every rank alike (the world size); a failed check of the weights goes on, so that every
// rank still runs the same collectives.
#define EP_INFER_LAYERS(cfg, dtype, seed)                                                   \
  if (!make_layers(cfg, dtype, seed)) {                                                     \
    GTEST_SKIP() << (cfg).n_experts << " experts do not split over " << size() << " ranks"; \
  }

// 1. f32, token-choice softmax top-2, SwiGLU, an odd number of random tokens.
TEST_F(EpInfer, F32SoftmaxTop2SwiGLU) {
  const MoEConfig cfg = infer_config();
  EP_INFER_LAYERS(cfg, DType::F32, 11);
  const uint64_t seed = shared_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const Tensor x = testing::random_tensor({37, cfg.d_model}, DType::F32, seed);
  const MoEForward fr = compare(x, "f32 top-2");
  // The check says something only when several ranks' experts computed rows.
  int shards_used = 0;
  for (int r = 0; r < size(); ++r) {
    int64_t n = 0;
    for (int64_t e = r * El_; e < (r + 1) * El_; ++e) n += fr.stats.tokens_per_expert[e];
    shards_used += n > 0;
  }
  EXPECT_GE(shards_used, std::min(size(), 2)) << "the routing used the experts of too few ranks";
  // Again with fresh tokens on the same layers (the dispatcher's state is per forward).
  compare(testing::random_tensor({37, cfg.d_model}, DType::F32, seed + 1), "f32 top-2, second batch");
}

// 2. Shared experts (with a sigmoid gate) and a capacity factor that drops assignments, f64 and f32.
TEST_F(EpInfer, F64SharedExpertsAndCapacityDrops) {
  MoEConfig cfg = infer_config();
  cfg.n_shared_experts = 1;
  cfg.shared_gate = true;
  cfg.router.capacity_factor = 0.5;
  EP_INFER_LAYERS(cfg, DType::F64, 21);
  const Tensor x = testing::random_tensor({37, cfg.d_model}, DType::F64, 22);
  const MoEForward fr = compare(x, "f64 shared + capacity");
  EXPECT_GT(fr.stats.dropped, 0) << "capacity dropped nothing: the check says little";
}

TEST_F(EpInfer, F32SharedExpertsAndCapacityDropsByProbs) {
  MoEConfig cfg = infer_config();
  cfg.n_shared_experts = 2;
  cfg.d_ff_shared = 24;
  cfg.router.top_k = 3;
  cfg.router.normalize = true;
  cfg.router.capacity_factor = 0.75;
  cfg.router.drop_policy = DropPolicy::Probs;
  EP_INFER_LAYERS(cfg, DType::F32, 23);
  const Tensor x = testing::random_tensor({41, cfg.d_model}, DType::F32, 24);
  const MoEForward fr = compare(x, "f32 shared + capacity (probs)");
  EXPECT_GT(fr.stats.dropped, 0) << "capacity dropped nothing: the check says little";
}

// 3. bf16 expert weights (inference path) on both layers, routed and shared experts.
TEST_F(EpInfer, Bf16ExpertWeights) {
  MoEConfig cfg = infer_config();
  cfg.n_shared_experts = 1;
  EP_INFER_LAYERS(cfg, DType::F32, 31);
  full_->set_bf16_expert_weights(true);
  ep_->set_bf16_expert_weights(true);
  ASSERT_TRUE(ep_->has_bf16_expert_weights());
  ASSERT_TRUE(full_->has_bf16_expert_weights());
  ASSERT_EQ(ep_->bf16_expert_weights().w_in.size(0), El_) << "the bf16 copy holds this rank's experts";
  compare(testing::random_tensor({37, cfg.d_model}, DType::F32, 32), "bf16 experts");
  compare(testing::random_tensor({1, cfg.d_model}, DType::F32, 33), "bf16 experts, one token");
  compare(testing::random_tensor({0, cfg.d_model}, DType::F32, 34), "bf16 experts, no tokens");
}

// 4. Every token routed to the experts of one rank (selection bias), then batches of 0 and 1 tokens:
// no hang (the ranks without rows still join the all-reduce), outputs equal.
TEST_F(EpInfer, AllTokensToOneRanksExperts) {
  MoEConfig cfg = infer_config();
  cfg.router.use_bias = true;
  EP_INFER_LAYERS(cfg, DType::F32, 41);
  for (int owner : {size() - 1, 0}) {
    SCOPED_TRACE("every token to the experts of rank " + std::to_string(owner));
    std::vector<double> bias(static_cast<size_t>(cfg.n_experts), 0.0);
    for (int64_t e = owner * El_; e < (owner + 1) * El_; ++e) bias[e] = 50.0;
    set_bias(bias);
    const MoEForward fr =
        compare(testing::random_tensor({37, cfg.d_model}, DType::F32, 42 + owner), "biased");
    for (int64_t e = 0; e < cfg.n_experts; ++e) {
      const bool owned = e >= owner * El_ && e < (owner + 1) * El_;
      if (!owned) {
        EXPECT_EQ(fr.stats.tokens_per_expert[e], 0) << "expert " << e;
      }
    }
    EXPECT_EQ(
        std::accumulate(fr.stats.tokens_per_expert.begin(), fr.stats.tokens_per_expert.end(), int64_t{0}),
        37 * cfg.router.top_k);
  }
}

TEST_F(EpInfer, BatchesOfZeroAndOneToken) {
  const MoEConfig cfg = infer_config();
  EP_INFER_LAYERS(cfg, DType::F32, 51);
  // One layer through batches of changing size, empty ones between.
  const std::vector<int64_t> sizes = {0, 1, 0, 37, 1, 0, 2};
  for (size_t i = 0; i < sizes.size(); ++i) {
    const Tensor x = testing::random_tensor({sizes[i], cfg.d_model}, DType::F32, 52 + i);
    const MoEForward fr = compare(x, "batch " + std::to_string(i));
    EXPECT_EQ(fr.y.size(0), sizes[i]);
  }
}

TEST_F(EpInfer, BatchesOfZeroAndOneTokenF64WithShared) {
  MoEConfig cfg = infer_config();
  cfg.n_shared_experts = 1;
  cfg.router.capacity_factor = 1.0;
  EP_INFER_LAYERS(cfg, DType::F64, 61);
  for (int64_t n : {int64_t{0}, int64_t{1}, int64_t{0}, int64_t{5}}) {
    compare(testing::random_tensor({n, cfg.d_model}, DType::F64, 62 + n), "f64 batch");
  }
}

// Inference-only routing options (adaptive top-p, skipping low weights) drop assignments through
// `kept` as capacity does: the same on every rank, outputs equal.
TEST_F(EpInfer, TopPAndSkipThreshold) {
  MoEConfig cfg = infer_config();
  cfg.router.top_k = 4;
  EP_INFER_LAYERS(cfg, DType::F32, 71);
  full_->set_router_top_p(0.3, 1);
  ep_->set_router_top_p(0.3, 1);
  const MoEForward fp = compare(testing::random_tensor({37, cfg.d_model}, DType::F32, 72), "top-p 0.3");
  EXPECT_LT(fp.stats.mean_k, cfg.router.top_k) << "top-p selected every candidate: the check says little";
  full_->set_router_top_p(0.0);
  ep_->set_router_top_p(0.0);
  full_->set_skip_threshold(0.09);
  ep_->set_skip_threshold(0.09);
  const MoEForward fr = compare(testing::random_tensor({37, cfg.d_model}, DType::F32, 73), "skip 0.09");
  EXPECT_GT(fr.stats.skipped, 0) << "nothing skipped: the check says little";
}

// 5. The backward of a replicated-tokens forward throws moe::Error on every rank, before any
// collective: a barrier afterwards completes and the layer still computes the same outputs.
TEST_F(EpInfer, BackwardThrowsOnEveryRank) {
  MoEConfig cfg = infer_config();
  cfg.n_shared_experts = 1;
  EP_INFER_LAYERS(cfg, DType::F32, 81);
  for (int64_t n : {int64_t{9}, int64_t{0}}) {
    SCOPED_TRACE(std::to_string(n) + " tokens");
    const Tensor x = testing::random_tensor({n, cfg.d_model}, DType::F32, 82);
    const Tensor dy = testing::random_tensor({n, cfg.d_model}, DType::F32, 83);
    {
      const MoEForward f = ep_->forward(x);
      std::string msg;
      try {
        ep_->backward(f, dy);
        ADD_FAILURE() << "backward of a replicated-tokens forward returned on rank " << rank();
      } catch (const Error& e) {
        msg = e.what();
      }
      EXPECT_NE(msg.find("replicated tokens"), std::string::npos) << "rank " << rank() << ": " << msg;
    }
    {
      const MoEForward f = ep_->forward(x);
      MoEGrads acc;
      EXPECT_THROW(ep_->backward_into(f, dy, acc), Error) << "rank " << rank();
    }
    comm().barrier();  // every rank threw before any collective: still in step
    compare(x, "after the failed backward");
  }
}

}  // namespace
}  // namespace moe
