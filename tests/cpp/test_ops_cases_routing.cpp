// Routing op cases: router_topk, routing_stats and permute's tile metadata (moe/kernels/ops_routing.h,
// moe/kernels/ops.h). Tolerance principle: exact. The Cpu path performs the reference's double
// operations in the reference's order (selection, weights, every sum), and the tile metadata and
// counts are integers, so every output must equal the reference's.
#include <algorithm>
#include <cmath>
#include <memory>
#include <string>

#include "moe/core/error.h"
#include "moe/kernels/ops_routing.h"
#include "op_cases.h"

namespace moe::ops_test {

namespace {

using kernels::RouterGroupScore;
using kernels::RouterOrder;
using kernels::RouterScore;

// A routing drawn by make_routing: T tokens, E experts, k picks each, drop probability.
struct RouteShape {
  int64_t T, E, k;
  Pattern pattern = Pattern::Random;
  double drop = 0;
};

template <typename T>
class Typed : public OpCase {
 public:
  bool is_double() const override { return std::is_same_v<T, double>; }
  std::string name() const override {
    return op() + "[" + (std::is_same_v<T, float> ? "f32" : "f64") + "](" + params() + ")";
  }
  virtual std::string params() const = 0;
};

// ---------------------------------------------------------------------------------------------
// router_topk

enum class Logits {
  Normal,  // N(0, 1)
  Ties,    // integers in [-2, 2]: many equal values in a row
  NegInf,  // N(0, 1) with about a quarter -inf (never a whole row)
};

const char* logits_name(Logits l) {
  return l == Logits::Normal ? "normal" : l == Logits::Ties ? "ties" : "neg_inf";
}

struct TopkShape {
  int64_t T, E, k;
  RouterScore score = RouterScore::Softmax;
  RouterOrder order = RouterOrder::ScoreThenTopk;
  int64_t groups = 1, topk_groups = 1;
  RouterGroupScore group_score = RouterGroupScore::SumTop2;
  bool bias = false, normalize = false;
  double scaling = 1.0;
  Logits logits = Logits::Normal;
  bool f64_weights = true;  // weight_f64 requested
};

template <typename T>
class RouterTopkCase : public Typed<T> {
 public:
  explicit RouterTopkCase(TopkShape s) : s_(s) {}
  std::string op() const override { return "router_topk"; }
  std::string params() const override {
    return cat("T=", s_.T, ",E=", s_.E, ",k=", s_.k,
               s_.score == RouterScore::Sigmoid ? ",sigmoid" : ",softmax",
               s_.order == RouterOrder::TopkThenSoftmax ? ",topk_then_softmax" : "",
               s_.groups > 1 ? cat(",groups=", s_.groups, "/", s_.topk_groups,
                                   s_.group_score == RouterGroupScore::Max ? ",max" : ",sum_top2")
                             : "",
               s_.bias ? ",bias" : "", s_.normalize ? ",normalize" : "",
               s_.scaling != 1.0 ? cat(",scaling=", s_.scaling) : "", ",", logits_name(s_.logits),
               s_.f64_weights ? "" : ",weight_f64=null");
  }
  Buffers make(uint64_t seed) const override {
    const Rng rng(seed);
    Buffers b;
    b.add<T>("logits", s_.T * s_.E);
    b.add<double>("bias", s_.bias ? s_.E : 0);
    b.add<T>("scores", s_.T * s_.E, Role::Out);
    b.add<int32_t>("expert", s_.T * s_.k, Role::Out);
    b.add<T>("weight", s_.T * s_.k, Role::Out);
    b.add<double>("weight_f64", s_.f64_weights ? s_.T * s_.k : 0, Role::Out);
    T* l = b.host<T>(kLogits);
    fill_values(rng.fork(0), l, s_.T * s_.E, s_.logits == Logits::Ties ? 2 : 0);
    if (s_.logits == Logits::NegInf) {
      for (int64_t i = 0; i < s_.T * s_.E; ++i) {
        const bool first = i % s_.E == 0;  // each row keeps its first logit finite
        if (!first && rng.fork(1).below(static_cast<uint64_t>(i), 4) == 0) l[i] = -INFINITY;
      }
    }
    if (s_.bias) fill_values(rng.fork(2), b.host<double>(kBias), s_.E);
    return b;
  }
  template <class F>
  decltype(auto) with_args(Buffers& b, F&& f) const {
    const kernels::RouterTopkArgs<T> a{.T_ = s_.T,
                                       .E = s_.E,
                                       .k = s_.k,
                                       .score = s_.score,
                                       .order = s_.order,
                                       .n_groups = s_.groups,
                                       .topk_groups = s_.topk_groups,
                                       .group_score = s_.group_score,
                                       .normalize = s_.normalize,
                                       .scaling = s_.scaling,
                                       .logits = b.arg<T>(kLogits),
                                       .bias = s_.bias ? b.arg<double>(kBias) : nullptr,
                                       .scores = b.arg<T>(kScores),
                                       .expert = b.arg<int32_t>(kExpert),
                                       .weight = b.arg<T>(kWeight),
                                       .weight_f64 = s_.f64_weights ? b.arg<double>(kWeightF64) : nullptr};
    return f(a);
  }
  MOE_OP_CASE_ARGS
  double flops() const override { return static_cast<double>(s_.T) * (6.0 * s_.E + 4.0 * s_.k); }
  double bytes() const override { return static_cast<double>(s_.T) * (2.0 * sizeof(T) * s_.E + 8.0 * s_.k); }

 private:
  enum { kLogits, kBias, kScores, kExpert, kWeight, kWeightF64 };
  TopkShape s_;
};

// ---------------------------------------------------------------------------------------------
// routing_stats

struct StatsShape {
  RouteShape route;
  RouterScore score = RouterScore::Softmax;
  int64_t seq_len = 0;  // 0: the per-sequence sums are not requested
  bool with_kept = true;
};

template <typename T>
class RoutingStatsCase : public Typed<T> {
 public:
  explicit RoutingStatsCase(StatsShape s) : s_(s) {}
  std::string op() const override { return "routing_stats"; }
  std::string params() const override {
    const RouteShape& r = s_.route;
    return cat("T=", r.T, ",E=", r.E, ",k=", r.k, ",", pattern_name(r.pattern),
               r.drop > 0 ? cat(",drop=", r.drop) : "",
               s_.score == RouterScore::Sigmoid ? ",sigmoid" : ",softmax",
               s_.seq_len ? cat(",seq_len=", s_.seq_len) : "", s_.with_kept ? "" : ",kept=null");
  }
  int64_t n() const { return s_.route.T * s_.route.k; }
  int64_t seqs() const { return s_.seq_len ? s_.route.T / s_.seq_len : 0; }
  Buffers make(uint64_t seed) const override {
    const RouteShape& r = s_.route;
    const Routing rt = make_routing(Rng(seed), r.T, r.E, r.k, r.pattern, r.drop);
    const Rng rng(seed);
    Buffers b;
    b.add<int32_t>("token", n());
    b.add<int32_t>("expert", n());
    b.add<uint8_t>("kept", s_.with_kept ? n() : 0);
    b.add<T>("weight", n());
    b.add<T>("scores", r.T * r.E);
    b.add<T>("logits", r.T * r.E);
    b.add<int32_t>("routed", r.E, Role::Out);
    b.add<int32_t>("kept_count", r.E, Role::Out);
    b.add<int32_t>("not_kept", 1, Role::Out);
    b.add<double>("weight_sum", r.E, Role::Out);
    b.add<double>("prob_sum", r.E, Role::Out);
    b.add<int32_t>("seq_routed", seqs() * r.E, Role::Out);
    b.add<double>("seq_prob_sum", seqs() * r.E, Role::Out);
    b.add<double>("lse_sq_sum", 1, Role::Out);
    for (int64_t a = 0; a < n(); ++a) b.host<int32_t>(kToken)[a] = static_cast<int32_t>(a / r.k);
    std::copy(rt.expert.begin(), rt.expert.end(), b.host<int32_t>(kExpert));
    if (s_.with_kept) std::copy(rt.kept.begin(), rt.kept.end(), b.host<uint8_t>(kKept));
    T* w = b.host<T>(kWeight);
    T* s = b.host<T>(kScores);
    for (int64_t a = 0; a < n(); ++a) w[a] = static_cast<T>(rng.fork(3).uniform(static_cast<uint64_t>(a)));
    for (int64_t i = 0; i < r.T * r.E; ++i)
      s[i] = static_cast<T>(rng.fork(4).uniform(static_cast<uint64_t>(i)));
    fill_values(rng.fork(5), b.host<T>(kLogits), r.T * r.E);
    return b;
  }
  template <class F>
  decltype(auto) with_args(Buffers& b, F&& f) const {
    const RouteShape& r = s_.route;
    const kernels::RoutingStatsArgs<T> a{.N = n(),
                                         .T_ = r.T,
                                         .E = r.E,
                                         .score = s_.score,
                                         .seq_len = s_.seq_len,
                                         .token = b.arg<int32_t>(kToken),
                                         .expert = b.arg<int32_t>(kExpert),
                                         .kept = s_.with_kept ? b.arg<uint8_t>(kKept) : nullptr,
                                         .weight = b.arg<T>(kWeight),
                                         .scores = b.arg<T>(kScores),
                                         .logits = b.arg<T>(kLogits),
                                         .routed = b.arg<int32_t>(kRouted),
                                         .kept_count = b.arg<int32_t>(kKeptCount),
                                         .not_kept = b.arg<int32_t>(kNotKept),
                                         .weight_sum = b.arg<double>(kWeightSum),
                                         .prob_sum = b.arg<double>(kProbSum),
                                         .seq_routed = s_.seq_len ? b.arg<int32_t>(kSeqRouted) : nullptr,
                                         .seq_prob_sum = s_.seq_len ? b.arg<double>(kSeqProbSum) : nullptr,
                                         .lse_sq_sum = b.arg<double>(kLseSq)};
    return f(a);
  }
  MOE_OP_CASE_ARGS
  double flops() const override { return n() + 6.0 * s_.route.T * s_.route.E; }
  double bytes() const override {
    return n() * (9.0 + sizeof(T)) + 2.0 * sizeof(T) * s_.route.T * s_.route.E;
  }

 private:
  enum {
    kToken,
    kExpert,
    kKept,
    kWeight,
    kScores,
    kLogits,
    kRouted,
    kKeptCount,
    kNotKept,
    kWeightSum,
    kProbSum,
    kSeqRouted,
    kSeqProbSum,
    kLseSq
  };
  StatsShape s_;
};

// ---------------------------------------------------------------------------------------------
// permute with tile metadata (integer: exact)

class PermuteTilesCase : public Typed<float> {
 public:
  PermuteTilesCase(RouteShape r, int64_t tile_m, bool list = true) : r_(r), tile_m_(tile_m), list_(list) {}
  std::string op() const override { return "permute"; }
  bool is_double() const override { return false; }
  std::string params() const override {
    return cat("T=", r_.T, ",E=", r_.E, ",k=", r_.k, ",", pattern_name(r_.pattern),
               r_.drop > 0 ? cat(",drop=", r_.drop) : "", ",tile_m=", tile_m_,
               list_ ? "" : ",tile_offsets only");
  }
  std::string name() const override { return "permute(" + params() + ")"; }
  int64_t n() const { return r_.T * r_.k; }
  int64_t max_tiles() const { return n() / tile_m_ + r_.E; }
  Buffers make(uint64_t seed) const override {
    const Routing rt = make_routing(Rng(seed), r_.T, r_.E, r_.k, r_.pattern, r_.drop);
    Buffers b;
    b.add<int32_t>("expert", n());
    b.add<uint8_t>("kept", n());
    b.add<int32_t>("offsets", r_.E + 1, Role::Out);
    b.add<int32_t>("perm", n(), Role::Out);
    b.add<int32_t>("pos", n(), Role::Out);
    b.add<int32_t>("tile_offsets", r_.E + 1, Role::Out);
    b.add<int32_t>("tile_expert", list_ ? max_tiles() : 0, Role::Out);
    b.add<int32_t>("tile_row", list_ ? max_tiles() : 0, Role::Out);
    std::copy(rt.expert.begin(), rt.expert.end(), b.host<int32_t>(kExpert));
    std::copy(rt.kept.begin(), rt.kept.end(), b.host<uint8_t>(kKept));
    return b;
  }
  template <class F>
  decltype(auto) with_args(Buffers& b, F&& f) const {
    const kernels::PermuteArgs p{.N = n(),
                                 .E = r_.E,
                                 .expert = b.arg<int32_t>(kExpert),
                                 .kept = b.arg<uint8_t>(kKept),
                                 .offsets = b.arg<int32_t>(kOffsets),
                                 .perm = b.arg<int32_t>(kPerm),
                                 .pos = b.arg<int32_t>(kPos),
                                 .tile_m = tile_m_,
                                 .tile_offsets = b.arg<int32_t>(kTileOffsets),
                                 .tile_expert = list_ ? b.arg<int32_t>(kTileExpert) : nullptr,
                                 .tile_row = list_ ? b.arg<int32_t>(kTileRow) : nullptr};
    return f(p);
  }
  MOE_OP_CASE_ARGS
  // perm: the first offsets[E] entries are defined; the tile list: the first tile_offsets[E] / tile_m.
  int64_t compare_count(const Buffers& ref, int id) const override {
    if (id == kPerm) return static_cast<int64_t>(ref[kOffsets].get(r_.E));
    if (id == kTileExpert || id == kTileRow) {
      return list_ ? static_cast<int64_t>(ref[kTileOffsets].get(r_.E)) / tile_m_ : 0;
    }
    return ref[id].count;
  }
  double flops() const override { return static_cast<double>(n()); }
  double bytes() const override { return 4.0 * 4 * n(); }

 private:
  enum { kExpert, kKept, kOffsets, kPerm, kPos, kTileOffsets, kTileExpert, kTileRow };
  RouteShape r_;
  int64_t tile_m_;
  bool list_;
};

template <typename T>
void add_topk(CaseList& out) {
  using S = RouterScore;
  using O = RouterOrder;
  using G = RouterGroupScore;
  std::vector<TopkShape> shapes = {
      {1, 1, 1},                                                          // E = 1
      {17, 8, 1},                                                         // k = 1
      {17, 8, 8},                                                         // k = E
      {33, 16, 2, S::Sigmoid},                                            // sigmoid
      {33, 16, 4, S::Softmax, O::ScoreThenTopk, 1, 1, G::SumTop2, true},  // bias
      {33, 16, 4, S::Sigmoid, O::ScoreThenTopk, 1, 1, G::SumTop2, true, true,
       2.5},  // bias, normalize, scaling
      {29, 16, 3, S::Softmax, O::TopkThenSoftmax, 1, 1, G::SumTop2, true, false, 1.5},  // top-k then softmax
      {40, 16, 4, S::Sigmoid, O::ScoreThenTopk, 4, 2, G::SumTop2, true, true},       // groups, sum of top 2
      {40, 16, 3, S::Softmax, O::ScoreThenTopk, 8, 3, G::Max},                       // groups, max
      {40, 16, 4, S::Softmax, O::ScoreThenTopk, 16, 4, G::SumTop2},                  // one-expert groups
      {40, 64, 8, S::Sigmoid, O::ScoreThenTopk, 8, 4, G::SumTop2, true, true, 2.5},  // DeepSeek-like
      {50, 8, 3, S::Softmax, O::ScoreThenTopk, 1, 1, G::SumTop2, false, false, 1.0, Logits::Ties},  // ties
      {50, 8, 8, S::Sigmoid, O::ScoreThenTopk, 1, 1, G::SumTop2, false, true, 1.0,
       Logits::Ties},  // ties, k = E
      {50, 16, 4, S::Softmax, O::ScoreThenTopk, 4, 2, G::SumTop2, false, false, 1.0,
       Logits::Ties},  // tied groups
      {50, 8, 6, S::Softmax, O::ScoreThenTopk, 1, 1, G::SumTop2, false, false, 1.0, Logits::NegInf},  // -inf
      {50, 8, 4, S::Softmax, O::TopkThenSoftmax, 1, 1, G::SumTop2, false, false, 1.0, Logits::NegInf},
      {50, 8, 5, S::Sigmoid, O::ScoreThenTopk, 1, 1, G::SumTop2, true, true, 1.0, Logits::NegInf},
      {20, 40, 20, S::Softmax, O::ScoreThenTopk, 1, 1, G::SumTop2, true, true},  // k > 16: partial sort
      {300, 128, 8, S::Softmax, O::ScoreThenTopk, 1, 1, G::SumTop2, false, false, 1.0, Logits::Normal, false},
      {0, 8, 2},  // no tokens
  };
  for (const TopkShape& s : shapes) out.push_back(std::make_unique<RouterTopkCase<T>>(s));
}

template <typename T>
void add_stats(CaseList& out) {
  for (RouterScore score : {RouterScore::Softmax, RouterScore::Sigmoid}) {
    out.push_back(std::make_unique<RoutingStatsCase<T>>(StatsShape{{17, 4, 2, Pattern::Random, 0.2}, score}));
    out.push_back(
        std::make_unique<RoutingStatsCase<T>>(StatsShape{{32, 8, 2, Pattern::Random, 0.3}, score, 8}));
  }
  out.push_back(std::make_unique<RoutingStatsCase<T>>(StatsShape{{1, 1, 1}}));
  out.push_back(std::make_unique<RoutingStatsCase<T>>(
      StatsShape{{37, 16, 2, Pattern::EvenOnly, 0.3}}));  // empty experts
  out.push_back(std::make_unique<RoutingStatsCase<T>>(
      StatsShape{{50, 8, 1, Pattern::AllToOne}, RouterScore::Softmax, 25}));
  out.push_back(std::make_unique<RoutingStatsCase<T>>(
      StatsShape{{12, 6, 6}, RouterScore::Sigmoid, 12, false}));  // k = E
  out.push_back(std::make_unique<RoutingStatsCase<T>>(
      StatsShape{{600, 64, 8, Pattern::Random, 0.1}, RouterScore::Sigmoid, 200}));
  out.push_back(
      std::make_unique<RoutingStatsCase<T>>(StatsShape{{0, 4, 2}, RouterScore::Softmax, 4}));  // no tokens
}

}  // namespace

void add_routing_cases(CaseList& out) {
  add_topk<float>(out);
  add_topk<double>(out);
  add_stats<float>(out);
  add_stats<double>(out);
  for (int64_t tile_m : {1, 4, 1000}) {  // 1000: larger than any expert's rows
    for (RouteShape r : {RouteShape{33, 8, 2, Pattern::Random, 0.2}, RouteShape{37, 16, 2, Pattern::EvenOnly},
                         RouteShape{50, 8, 1, Pattern::AllToOne}, RouteShape{10, 6, 6},
                         RouteShape{20, 4, 2, Pattern::Random, 1.0}, RouteShape{0, 4, 2}}) {
      out.push_back(std::make_unique<PermuteTilesCase>(r, tile_m));
    }
  }
  out.push_back(std::make_unique<PermuteTilesCase>(RouteShape{5000, 64, 4, Pattern::Random, 0.05}, 16));
  out.push_back(std::make_unique<PermuteTilesCase>(RouteShape{33, 8, 2}, 3, false));
}

void add_routing_perf_cases(CaseList& out) {
  out.push_back(std::make_unique<RouterTopkCase<float>>(TopkShape{16384, 64, 8}));
  out.push_back(std::make_unique<RouterTopkCase<float>>(
      TopkShape{16384, 256, 8, RouterScore::Sigmoid, RouterOrder::ScoreThenTopk, 8, 4,
                RouterGroupScore::SumTop2, true, true, 2.5}));
  out.push_back(std::make_unique<RoutingStatsCase<float>>(
      StatsShape{{16384, 64, 8, Pattern::Random, 0.05}, RouterScore::Softmax, 4096}));
  out.push_back(std::make_unique<PermuteTilesCase>(RouteShape{16384, 64, 8, Pattern::Random, 0.05}, 64));
}

}  // namespace moe::ops_test
