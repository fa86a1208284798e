// The routing ops beyond the consistency harness: the Cpu path bit for bit equal to the reference
// whatever the thread count, known answers (ties, -inf, the bias, tile metadata), argument errors,
// and the layer's statistics equal to balance_losses (whose gradients the backward uses).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "layer_testutil.h"
#include "moe/core/error.h"
#include "moe/core/parallel.h"
#include "moe/kernels/ops_routing.h"
#include "moe/moe/balance.h"
#include "moe/moe/router.h"

namespace moe::testing {
namespace {

using kernels::Backend;
using kernels::RouterGroupScore;
using kernels::RouterOrder;
using kernels::RouterScore;

// Restores the thread count at the end of a test.
struct ThreadsGuard {
  int saved = num_threads();
  ~ThreadsGuard() { set_num_threads(saved); }
};

template <typename T>
bool same_bytes(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

// router_topk's outputs for one argument set.
template <typename T>
struct TopkOut {
  std::vector<T> scores, weight;
  std::vector<int32_t> expert;
  std::vector<double> weight_f64;
};

template <typename T>
TopkOut<T> run_topk(Backend b, kernels::RouterTopkArgs<T> a) {
  TopkOut<T> o;
  o.scores.assign(static_cast<size_t>(a.T_ * a.E), T(-7));
  o.weight.assign(static_cast<size_t>(a.T_ * a.k), T(-7));
  o.expert.assign(static_cast<size_t>(a.T_ * a.k), -7);
  o.weight_f64.assign(static_cast<size_t>(a.T_ * a.k), -7.0);
  a.scores = o.scores.data();
  a.weight = o.weight.data();
  a.expert = o.expert.data();
  a.weight_f64 = o.weight_f64.data();
  kernels::router_topk(b, a);
  return o;
}

template <typename T>
void check_topk_bits() {
  ThreadsGuard guard;
  const int64_t nT = 301, E = 64;
  const Tensor logits = random_tensor({nT, E}, dtype_of<T>::value, 5);
  std::vector<double> bias(static_cast<size_t>(E));
  for (int64_t e = 0; e < E; ++e) bias[e] = 0.01 * static_cast<double>((e * 37) % 11);
  const std::vector<kernels::RouterTopkArgs<T>> configs = {
      {.T_ = nT, .E = E, .k = 8},
      {.T_ = nT,
       .E = E,
       .k = 6,
       .score = RouterScore::Sigmoid,
       .n_groups = 8,
       .topk_groups = 3,
       .normalize = true,
       .scaling = 2.5},
      {.T_ = nT, .E = E, .k = 20, .order = RouterOrder::TopkThenSoftmax},
      {.T_ = nT, .E = E, .k = 4, .n_groups = 4, .topk_groups = 2, .group_score = RouterGroupScore::Max}};
  for (kernels::RouterTopkArgs<T> a : configs) {
    for (bool with_bias : {false, true}) {
      a.logits = logits.data<T>();
      a.bias = with_bias ? bias.data() : nullptr;
      const TopkOut<T> ref = run_topk(Backend::Ref, a);
      for (int threads : {1, 2, 5}) {
        set_num_threads(threads);
        const TopkOut<T> cpu = run_topk(Backend::Cpu, a);
        EXPECT_TRUE(same_bytes(cpu.scores, ref.scores)) << "k = " << a.k << ", threads " << threads;
        EXPECT_TRUE(same_bytes(cpu.expert, ref.expert)) << "k = " << a.k << ", threads " << threads;
        EXPECT_TRUE(same_bytes(cpu.weight, ref.weight)) << "k = " << a.k << ", threads " << threads;
        EXPECT_TRUE(same_bytes(cpu.weight_f64, ref.weight_f64)) << "k = " << a.k << ", threads " << threads;
      }
    }
  }
}

TEST(RoutingOps, TopkCpuMatchesRefBitForBitWhateverTheThreads) {
  check_topk_bits<float>();
  check_topk_bits<double>();
}

// Ties go to the lower expert, -inf is never preferred over a finite value (a -inf logit stays -inf
// with a bias), and the bias selects without entering the weights.
TEST(RoutingOps, TopkTiesInfinitiesAndBias) {
  const double l[] = {1.0, 3.0, 3.0, -INFINITY, 2.0, 3.0};
  for (Backend b : {Backend::Ref, Backend::Cpu}) {
    kernels::RouterTopkArgs<double> a{.T_ = 1, .E = 6, .k = 6, .logits = l};
    TopkOut<double> o = run_topk(b, a);
    EXPECT_EQ(o.expert, (std::vector<int32_t>{1, 2, 5, 4, 0, 3})) << kernels::backend_name(b);
    EXPECT_EQ(o.scores[3], 0.0);
    const double bias[] = {0.0, 0.0, 0.0, 100.0, 0.0, 0.0};
    a.k = 2;
    a.bias = bias;
    a.order = RouterOrder::TopkThenSoftmax;  // selection on the logits: -inf + bias stays -inf
    o = run_topk(b, a);
    EXPECT_EQ(o.expert, (std::vector<int32_t>{1, 2}));
    EXPECT_EQ(o.weight[0], 0.5);
    a.order = RouterOrder::ScoreThenTopk;  // selection on the scores: s = 0 is finite
    o = run_topk(b, a);
    EXPECT_EQ(o.expert, (std::vector<int32_t>{3, 1}));
    EXPECT_EQ(o.weight[0], 0.0) << "the bias does not weight";
    const double bias2[] = {0.0, 0.0, 0.0, 0.0, 5.0, 0.0};
    a.bias = bias2;
    o = run_topk(b, a);
    EXPECT_EQ(o.expert, (std::vector<int32_t>{4, 1}));
    EXPECT_EQ(o.weight[0], o.scores[4]) << "the bias does not weight";
    EXPECT_EQ(o.weight[1], o.scores[1]);
  }
}

TEST(RoutingOps, TopkArgumentErrors) {
  const float l[8] = {};
  float s[8], w[8];
  int32_t ex[8];
  for (Backend b : {Backend::Ref, Backend::Cpu}) {
    kernels::RouterTopkArgs<float> a{
        .T_ = 2, .E = 4, .k = 5, .logits = l, .scores = s, .expert = ex, .weight = w};
    const auto expect = [&](const std::string& what) {
      try {
        kernels::router_topk(b, a);
        ADD_FAILURE() << "no moe::Error for " << what;
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
      }
    };
    expect("router_topk: k must be in [1, E = 4], got 5");
    a.k = 3, a.n_groups = 3;
    expect("router_topk: n_groups = 3 must be >= 1 and divide E = 4");
    a.n_groups = 2;
    expect("router_topk: k = 3 exceeds the 2 experts of topk_groups = 1 groups");
    a.k = 2, a.scores = nullptr;
    expect("router_topk: scores is null");
  }
}

TEST(RoutingOps, CudaSaysNotImplemented) {
  const kernels::RouterTopkArgs<float> topk;
  const kernels::RoutingStatsArgs<float> stats;
  for (const kernels::Support& s :
       {kernels::supports(Backend::Cuda, topk), kernels::supports(Backend::Cuda, stats)}) {
    EXPECT_FALSE(s.ok);
    EXPECT_NE(s.reason.find("not implemented on cuda"), std::string::npos) << s.reason;
  }
}

// Kept rows per expert 3, 0, 5, 1 in tiles of 2: padded 4, 0, 6, 2.
TEST(RoutingOps, PermuteTileMetadata) {
  const std::vector<int32_t> expert = {2, 0, 2, 3, 0, 2, 2, 0, 2, 0};
  const std::vector<uint8_t> kept = {1, 1, 1, 1, 1, 1, 1, 1, 1, 0};
  for (Backend b : {Backend::Ref, Backend::Cpu}) {
    std::vector<int32_t> offsets(5), perm(10), pos(10), tile_offsets(5), tile_expert(10, -1),
        tile_row(10, -1);
    kernels::PermuteArgs p{.N = 10,
                           .E = 4,
                           .expert = expert.data(),
                           .kept = kept.data(),
                           .offsets = offsets.data(),
                           .perm = perm.data(),
                           .pos = pos.data(),
                           .tile_m = 2,
                           .tile_offsets = tile_offsets.data(),
                           .tile_expert = tile_expert.data(),
                           .tile_row = tile_row.data()};
    kernels::permute(b, p);
    EXPECT_EQ(offsets, (std::vector<int32_t>{0, 3, 3, 8, 9}));
    EXPECT_EQ(tile_offsets, (std::vector<int32_t>{0, 4, 4, 10, 12}));
    tile_expert.resize(6), tile_row.resize(6);
    EXPECT_EQ(tile_expert, (std::vector<int32_t>{0, 0, 2, 2, 2, 3}));
    EXPECT_EQ(tile_row, (std::vector<int32_t>{0, 2, 3, 5, 7, 8}));
    p.tile_m = 0;
    try {
      kernels::permute(b, p);
      ADD_FAILURE() << "no moe::Error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("permute: tile_offsets, tile_expert and tile_row need tile_m > 0"),
                std::string::npos)
          << e.what();
    }
  }
}

TEST(RoutingOps, StatsCpuMatchesRefBitForBitWhateverTheThreads) {
  ThreadsGuard guard;
  const int64_t nT = 240, E = 32, k = 4, N = nT * k;
  const Tensor logits = random_tensor({nT, E}, DType::F32, 9);
  const Tensor scores = random_tensor({nT, E}, DType::F32, 10);
  const Tensor weight = random_tensor({N}, DType::F32, 11);
  std::vector<int32_t> token(N), expert(N);
  std::vector<uint8_t> kept(N);
  for (int64_t a = 0; a < N; ++a) {
    token[a] = static_cast<int32_t>(a / k);
    expert[a] = static_cast<int32_t>((a * 7 + a / 5) % E);
    kept[a] = a % 9 != 0;
  }
  struct Out {
    std::vector<int32_t> routed, kept, not_kept, seq_routed;
    std::vector<double> weight, prob, seq_prob, lse;
  };
  const auto run = [&](Backend b, RouterScore score) {
    Out o{std::vector<int32_t>(E),     std::vector<int32_t>(E), std::vector<int32_t>(1),
          std::vector<int32_t>(3 * E), std::vector<double>(E),  std::vector<double>(E),
          std::vector<double>(3 * E),  std::vector<double>(1)};
    kernels::routing_stats<float>(b, {.N = N,
                                      .T_ = nT,
                                      .E = E,
                                      .score = score,
                                      .seq_len = nT / 3,
                                      .token = token.data(),
                                      .expert = expert.data(),
                                      .kept = kept.data(),
                                      .weight = weight.data<float>(),
                                      .scores = scores.data<float>(),
                                      .logits = logits.data<float>(),
                                      .routed = o.routed.data(),
                                      .kept_count = o.kept.data(),
                                      .not_kept = o.not_kept.data(),
                                      .weight_sum = o.weight.data(),
                                      .prob_sum = o.prob.data(),
                                      .seq_routed = o.seq_routed.data(),
                                      .seq_prob_sum = o.seq_prob.data(),
                                      .lse_sq_sum = o.lse.data()});
    return o;
  };
  for (RouterScore score : {RouterScore::Softmax, RouterScore::Sigmoid}) {
    const Out ref = run(Backend::Ref, score);
    EXPECT_EQ(ref.not_kept[0], (N + 8) / 9);
    for (int threads : {1, 3, 8}) {
      set_num_threads(threads);
      const Out cpu = run(Backend::Cpu, score);
      EXPECT_TRUE(same_bytes(cpu.routed, ref.routed) && same_bytes(cpu.kept, ref.kept) &&
                  same_bytes(cpu.not_kept, ref.not_kept) && same_bytes(cpu.seq_routed, ref.seq_routed))
          << threads;
      EXPECT_TRUE(same_bytes(cpu.weight, ref.weight) && same_bytes(cpu.prob, ref.prob) &&
                  same_bytes(cpu.seq_prob, ref.seq_prob) && same_bytes(cpu.lse, ref.lse))
          << threads;
    }
  }
}

TEST(RoutingOps, StatsArgumentErrors) {
  const int32_t expert[3] = {0, 4, 1}, token[3] = {0, 1, 2};
  int32_t routed[4], seq[16];
  for (Backend b : {Backend::Ref, Backend::Cpu}) {
    kernels::RoutingStatsArgs<float> a{
        .N = 3, .T_ = 3, .E = 4, .token = token, .expert = expert, .routed = routed};
    const auto expect = [&](const std::string& what) {
      try {
        kernels::routing_stats(b, a);
        ADD_FAILURE() << "no moe::Error for " << what;
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
      }
    };
    expect("routing_stats: expert[1] = 4 is outside [0, E = 4)");
    a.E = 5, a.seq_routed = seq, a.seq_len = 2;
    expect("routing_stats: token count 3 is not a multiple of seq_len 2");
    a.seq_len = 0;
    expect("routing_stats: seq_len must be >= 1");
  }
}

// The layer's statistics come from the routing_stats op; their losses are balance_losses' values
// exactly (the backward differentiates those), and the counts are those of the routing.
template <typename T>
void check_stats_equal_balance_losses() {
  for (int variant = 0; variant < 6; ++variant) {
    MoEConfig c = small_config(12, 8, 8, 2);
    c.router.score = variant % 2 ? ScoreFn::Sigmoid : ScoreFn::Softmax;
    c.router.capacity_factor = variant == 2 ? 0.75 : 0.0;
    c.router.routing = variant == 4 ? RouterType::ExpertChoice : RouterType::TokenChoice;
    c.balance.aux_coef = 0.01;
    c.balance.seq_aux_coef = variant == 3 ? 0.0 : 0.003;
    c.balance.seq_len = variant >= 4 ? 6 : 0;
    c.balance.z_coef = variant == 5 ? 0.0 : 0.002;
    MoELayer L(c, dtype_of<T>::value);
    L.init_params(31 + variant);
    const MoEForward f = L.forward(random_tensor({24, 12}, dtype_of<T>::value, 40 + variant));
    const BalanceLosses bl = balance_losses(c, f.routing, nullptr);
    EXPECT_EQ(f.stats.aux_loss, bl.aux) << variant;
    EXPECT_EQ(f.stats.seq_aux_loss, bl.seq_aux) << variant;
    EXPECT_EQ(f.stats.z_loss, bl.z) << variant;
    EXPECT_GT(f.stats.aux_loss, 0.0);
    EXPECT_EQ(f.stats.routed_per_expert, routed_counts(f.routing, c.n_experts)) << variant;
    std::vector<double> w(static_cast<size_t>(c.n_experts), 0.0);
    std::vector<int64_t> kept(static_cast<size_t>(c.n_experts), 0);
    int64_t dropped = 0;
    for (int64_t a = 0; a < f.routing.n_assign; ++a) {
      const int32_t e = f.routing.expert.data<int32_t>()[a];
      w[e] += static_cast<double>(f.routing.weight.data<T>()[a]);
      if (f.routing.kept.data<uint8_t>()[a])
        ++kept[e];
      else
        ++dropped;
    }
    EXPECT_EQ(f.stats.routed_weight_per_expert, w) << variant;
    EXPECT_EQ(f.stats.tokens_per_expert, kept) << variant;
    EXPECT_EQ(f.stats.dropped, dropped) << variant;
  }
}

TEST(RoutingOps, LayerStatsEqualBalanceLosses) {
  check_stats_equal_balance_losses<float>();
  check_stats_equal_balance_losses<double>();
}

}  // namespace
}  // namespace moe::testing
