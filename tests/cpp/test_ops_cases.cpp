// The op test cases and their registry. Each case states its tolerance with the principle behind it.
//
// Tolerance principles (u = unit roundoff of T: 2^-24 for float, 2^-53 for double):
//  * Sums of n products (gemm, grouped gemm, wgrad, combine, dot products): any summation order
//    has |computed - exact| <= gamma_n * sum_i |x_i y_i|, gamma_n = n u / (1 - n u) (Higham,
//    Accuracy and Stability, Thm 3.5 / (3.5)). The reference accumulates in double, so its own
//    error is one rounding to T (u |exact|) plus a negligible double term. We allow
//    (n + 4) u * magnitude, magnitude = sum |terms| (+ |beta * C| for the old value).
//  * Integer-valued inputs whose partial sums stay below 2^24: every operation is exact in float
//    and double, so the results must be equal (tolerance 0), whatever the order.
//  * One correctly rounded multiplication (combine_backward's dX = w * dY) and max (relu): exact.
//  * Elementwise transcendental activations: a fixed chain of fewer than 8 operations, each with
//    an error <= 2 ulp (libm exp/erf are within 1-2 ulp), gives <= 16 u relative to the largest
//    intermediate term; magnitude = |a| (silu, gelu), |a b| (swiglu), |dout| (1 + |a|) (derivatives,
//    whose terms s and a s (1 - s) are each at most 1 + |a| in size).
#include <algorithm>
#include <cmath>
#include <memory>
#include <string>

#include "moe/core/error.h"
#include "op_cases.h"

namespace moe::ops_test {

namespace {

using kernels::Activation;

template <typename T>
const char* type_tag() {
  return std::is_same_v<T, float> ? "f32" : "f64";
}

template <typename T>
class TypedCase : public OpCase {
 public:
  bool is_double() const override { return std::is_same_v<T, double>; }
  std::string name() const override { return op() + "[" + type_tag<T>() + "](" + params() + ")"; }
  virtual std::string params() const = 0;
};

// Tolerance (n + 4) u * magnitude for a sum of n terms (see the top of this file).
template <typename T>
double sum_tol(int64_t n, double magnitude) {
  return static_cast<double>(n + 4) * unit_roundoff<T>() * magnitude;
}

// ---------------------------------------------------------------------------------------------
// gemm

struct GemmShape {
  int64_t M, N, K;
  bool ta = false, tb = false;
  double alpha = 1, beta = 0;
  int64_t pad = 0;    // extra elements per row in lda, ldb, ldc
  int int_range = 0;  // > 0: integer-valued inputs in [-r, r] (exact)
};

template <typename T>
class GemmCase : public TypedCase<T> {
 public:
  explicit GemmCase(GemmShape s) : s_(s) {}
  std::string op() const override { return "gemm"; }
  std::string params() const override {
    return cat("M=", s_.M, ",N=", s_.N, ",K=", s_.K, ",ta=", s_.ta, ",tb=", s_.tb, ",alpha=", s_.alpha,
               ",beta=", s_.beta, s_.pad ? ",padded" : "", s_.int_range ? ",int" : "");
  }
  int64_t lda() const { return (s_.ta ? s_.M : s_.K) + s_.pad; }
  int64_t ldb() const { return (s_.tb ? s_.K : s_.N) + s_.pad; }
  int64_t ldc() const { return s_.N + s_.pad; }
  Buffers make(uint64_t seed) const override {
    const Rng rng(seed);
    Buffers b;
    const int64_t a_rows = s_.ta ? s_.K : s_.M, b_rows = s_.tb ? s_.N : s_.K;
    b.add<T>("A", a_rows * lda());                                        // (M, K) or (K, M)
    b.add<T>("B", b_rows * ldb());                                        // (K, N) or (N, K)
    b.add<T>("C", s_.M * ldc(), s_.beta == 0 ? Role::Out : Role::InOut);  // (M, N)
    fill_values(rng.fork(0), b.host<T>(kA), b[kA].count, s_.int_range);
    fill_values(rng.fork(1), b.host<T>(kB), b[kB].count, s_.int_range);
    if (s_.beta != 0) fill_values(rng.fork(2), b.host<T>(kC), b[kC].count, s_.int_range);
    return b;
  }
  template <class F>
  decltype(auto) with_args(Buffers& b, F&& f) const {
    kernels::GemmArgs<T> g;
    g.M = s_.M, g.N = s_.N, g.K = s_.K;
    g.A = b.arg<T>(kA), g.lda = lda(), g.trans_a = s_.ta;
    g.B = b.arg<T>(kB), g.ldb = ldb(), g.trans_b = s_.tb;
    g.C = b.arg<T>(kC), g.ldc = ldc();
    g.alpha = static_cast<T>(s_.alpha), g.beta = static_cast<T>(s_.beta);
    return f(g);
  }
  MOE_OP_CASE_ARGS
  std::vector<double> tolerance(const Buffers& in, int id) const override {
    std::vector<double> tol(static_cast<size_t>(in[id].count), kNotCompared);  // padding stays out
    for (int64_t i = 0; i < s_.M; ++i) {
      for (int64_t j = 0; j < s_.N; ++j) {
        double mag = 0;
        for (int64_t k = 0; k < s_.K && s_.int_range == 0; ++k) {
          const double a = in[kA].get(s_.ta ? k * lda() + i : i * lda() + k);
          const double bv = in[kB].get(s_.tb ? j * ldb() + k : k * ldb() + j);
          mag += std::fabs(a * bv);
        }
        mag = std::fabs(s_.alpha) * mag;
        if (s_.beta != 0) mag += std::fabs(s_.beta * in[kC].get(i * ldc() + j));
        // Integer-valued inputs: exact.
        tol[static_cast<size_t>(i * ldc() + j)] = s_.int_range > 0 ? 0.0 : sum_tol<T>(s_.K + 2, mag);
      }
    }
    return tol;
  }
  int64_t compare_count(const Buffers& ref, int id) const override { return ref[id].count; }
  double flops() const override { return 2.0 * s_.M * s_.N * s_.K; }
  double bytes() const override {
    return static_cast<double>(sizeof(T)) * (s_.M * s_.K + s_.K * s_.N + 2 * s_.M * s_.N);
  }

 private:
  enum { kA, kB, kC };
  GemmShape s_;
};

// ---------------------------------------------------------------------------------------------
// permute (integer: exact)

struct RouteShape {
  int64_t T, E, k;
  Pattern pattern = Pattern::Random;
  double drop = 0;
};

std::string route_params(const RouteShape& r) {
  return cat("T=", r.T, ",E=", r.E, ",k=", r.k, ",", pattern_name(r.pattern),
             r.drop > 0 ? cat(",drop=", r.drop) : "");
}

class PermuteCase : public TypedCase<float> {
 public:
  PermuteCase(RouteShape r, bool with_kept) : r_(r), with_kept_(with_kept) {}
  std::string op() const override { return "permute"; }
  bool is_double() const override { return false; }
  std::string params() const override { return route_params(r_) + (with_kept_ ? ",kept" : ",kept=null"); }
  std::string name() const override { return "permute(" + params() + ")"; }
  Buffers make(uint64_t seed) const override {
    const Routing rt = make_routing(Rng(seed), r_.T, r_.E, r_.k, r_.pattern, with_kept_ ? r_.drop : 0.0);
    const int64_t n = r_.T * r_.k;
    Buffers b;
    b.add<int32_t>("expert", n);
    b.add<uint8_t>("kept", with_kept_ ? n : 0);
    b.add<int32_t>("offsets", r_.E + 1, Role::Out);
    b.add<int32_t>("perm", n, Role::Out);
    b.add<int32_t>("pos", n, Role::Out);
    std::copy(rt.expert.begin(), rt.expert.end(), b.host<int32_t>(kExpert));
    if (with_kept_) std::copy(rt.kept.begin(), rt.kept.end(), b.host<uint8_t>(kKept));
    return b;
  }
  template <class F>
  decltype(auto) with_args(Buffers& b, F&& f) const {
    kernels::PermuteArgs p;
    p.N = r_.T * r_.k;
    p.E = r_.E;
    p.expert = b.arg<int32_t>(kExpert);
    p.kept = with_kept_ ? b.arg<uint8_t>(kKept) : nullptr;
    p.offsets = b.arg<int32_t>(kOffsets);
    p.perm = b.arg<int32_t>(kPerm);
    p.pos = b.arg<int32_t>(kPos);
    return f(p);
  }
  MOE_OP_CASE_ARGS
  // Only the first offsets[E] entries of perm are defined.
  int64_t compare_count(const Buffers& ref, int id) const override {
    if (id == kPerm) return static_cast<int64_t>(ref[kOffsets].get(r_.E));
    return ref[id].count;
  }
  double flops() const override { return static_cast<double>(r_.T * r_.k); }
  double bytes() const override { return 4.0 * 4 * r_.T * r_.k; }

 private:
  enum { kExpert, kKept, kOffsets, kPerm, kPos };
  RouteShape r_;
  bool with_kept_;
};

// ---------------------------------------------------------------------------------------------
// grouped_gemm and grouped_gemm_wgrad

struct GroupedShape {
  RouteShape route;
  int64_t N, K;
  bool gather = true;
  bool trans_w = false;
  double beta = 0;
  int64_t pad = 0;
  int int_range = 0;
};

std::string grouped_params(const GroupedShape& s) {
  return cat(route_params(s.route), ",N=", s.N, ",K=", s.K, s.gather ? ",gather" : ",gather=null",
             s.trans_w ? ",trans_w" : "", ",beta=", s.beta, s.pad ? ",padded" : "",
             s.int_range ? ",int" : "");
}

// Shared by both: routing, A (rows of length K), offsets, gather.
template <typename T>
class GroupedBase : public TypedCase<T> {
 public:
  explicit GroupedBase(GroupedShape s) : s_(s) {}
  std::string params() const override { return grouped_params(s_); }
  int64_t lda() const { return s_.K + s_.pad; }
  int64_t ldc() const { return s_.N + s_.pad; }
  // Rows of A: tokens when gathering (row(p) = token of perm[p]), else the sorted rows themselves.
  int64_t a_rows(const Routing& rt) const { return s_.gather ? s_.route.T : rt.rows(); }
  Routing routing(uint64_t seed) const {
    return make_routing(Rng(seed), s_.route.T, s_.route.E, s_.route.k, s_.route.pattern, s_.route.drop);
  }
  int64_t nominal_rows() const { return s_.route.T * s_.route.k; }

 protected:
  // Adds offsets (E + 1), gather (rows) and A (a_rows, K) as buffers 0, 1, 2.
  void add_common(const Rng& rng, const Routing& rt, Buffers& b) const {
    b.add<int32_t>("offsets", s_.route.E + 1);
    b.add<int32_t>("gather", s_.gather ? rt.rows() : 0);
    b.add<T>("A", a_rows(rt) * lda());
    std::copy(rt.offsets.begin(), rt.offsets.end(), b.host<int32_t>(0));
    for (int64_t p = 0; s_.gather && p < rt.rows(); ++p)
      b.host<int32_t>(1)[p] = rt.perm[p] / static_cast<int32_t>(s_.route.k);
    fill_values(rng.fork(10), b.host<T>(2), b[2].count, s_.int_range);
  }
  int64_t row_of(const Buffers& in, int64_t p) const { return s_.gather ? in.host<int32_t>(1)[p] : p; }
  GroupedShape s_;
};

template <typename T>
class GroupedGemmCase : public GroupedBase<T> {
  using B = GroupedBase<T>;

 public:
  using B::B;
  std::string op() const override { return "grouped_gemm"; }
  Buffers make(uint64_t seed) const override {
    const Routing rt = this->routing(seed);
    const Rng rng(seed);
    Buffers b;
    this->add_common(rng, rt, b);
    const GroupedShape& s = this->s_;
    b.add<T>("W", s.route.E * s.N * s.K);                                           // (E, N, K) or (E, K, N)
    b.add<T>("C", rt.rows() * this->ldc(), s.beta == 0 ? Role::Out : Role::InOut);  // (rows, N)
    fill_values(rng.fork(11), b.host<T>(kW), b[kW].count, s.int_range);
    if (s.beta != 0) fill_values(rng.fork(12), b.host<T>(kC), b[kC].count, s.int_range);
    return b;
  }
  template <class F>
  decltype(auto) with_args(Buffers& b, F&& f) const {
    const GroupedShape& s = this->s_;
    kernels::GroupedGemmArgs<T> g;
    g.E = s.route.E, g.N = s.N, g.K = s.K;
    g.offsets = b.arg<int32_t>(0);
    g.A = b.arg<T>(2), g.lda = this->lda();
    g.gather = s.gather ? b.arg<int32_t>(1) : nullptr;
    g.W = b.arg<T>(kW), g.trans_w = s.trans_w;
    g.C = b.arg<T>(kC), g.ldc = this->ldc();
    g.beta = static_cast<T>(s.beta);
    return f(g);
  }
  MOE_OP_CASE_ARGS
  std::vector<double> tolerance(const Buffers& in, int id) const override {
    const GroupedShape& s = this->s_;
    std::vector<double> tol(static_cast<size_t>(in[id].count), kNotCompared);  // padding stays out
    const int32_t* off = in.host<int32_t>(0);
    for (int64_t e = 0; e < s.route.E; ++e) {
      for (int64_t p = off[e]; p < off[e + 1]; ++p) {
        const int64_t row = this->row_of(in, p);
        for (int64_t n = 0; n < s.N; ++n) {
          double mag = 0;
          for (int64_t k = 0; k < s.K && s.int_range == 0; ++k) {
            const int64_t w = e * s.N * s.K + (s.trans_w ? k * s.N + n : n * s.K + k);
            mag += std::fabs(in[2].get(row * this->lda() + k) * in[kW].get(w));
          }
          if (s.beta != 0) mag += std::fabs(s.beta * in[kC].get(p * this->ldc() + n));
          tol[static_cast<size_t>(p * this->ldc() + n)] = s.int_range > 0 ? 0.0 : sum_tol<T>(s.K + 1, mag);
        }
      }
    }
    return tol;
  }
  double flops() const override { return 2.0 * this->nominal_rows() * this->s_.N * this->s_.K; }
  double bytes() const override {
    const GroupedShape& s = this->s_;
    return static_cast<double>(sizeof(T)) * (this->nominal_rows() * (s.K + s.N) + s.route.E * s.N * s.K);
  }

 private:
  enum { kW = 3, kC = 4 };
};

template <typename T>
class WgradCase : public GroupedBase<T> {
  using B = GroupedBase<T>;

 public:
  using B::B;
  std::string op() const override { return "grouped_gemm_wgrad"; }
  Buffers make(uint64_t seed) const override {
    const Routing rt = this->routing(seed);
    const Rng rng(seed);
    Buffers b;
    this->add_common(rng, rt, b);
    const GroupedShape& s = this->s_;
    b.add<T>("dC", rt.rows() * this->ldc());                                       // (rows, N)
    b.add<T>("dW", s.route.E * s.N * s.K, s.beta == 0 ? Role::Out : Role::InOut);  // (E, N, K)
    fill_values(rng.fork(11), b.host<T>(kDC), b[kDC].count, s.int_range);
    if (s.beta != 0) fill_values(rng.fork(12), b.host<T>(kDW), b[kDW].count, s.int_range);
    return b;
  }
  template <class F>
  decltype(auto) with_args(Buffers& b, F&& f) const {
    const GroupedShape& s = this->s_;
    kernels::GroupedWgradArgs<T> g;
    g.E = s.route.E, g.N = s.N, g.K = s.K;
    g.offsets = b.arg<int32_t>(0);
    g.dC = b.arg<T>(kDC), g.ldc = this->ldc();
    g.A = b.arg<T>(2), g.lda = this->lda();
    g.gather = s.gather ? b.arg<int32_t>(1) : nullptr;
    g.dW = b.arg<T>(kDW);
    g.beta = static_cast<T>(s.beta);
    return f(g);
  }
  MOE_OP_CASE_ARGS
  std::vector<double> tolerance(const Buffers& in, int id) const override {
    const GroupedShape& s = this->s_;
    std::vector<double> tol(static_cast<size_t>(in[id].count), 0.0);
    if (s.int_range > 0) return tol;
    const int32_t* off = in.host<int32_t>(0);
    for (int64_t e = 0; e < s.route.E; ++e) {
      for (int64_t n = 0; n < s.N; ++n) {
        for (int64_t k = 0; k < s.K; ++k) {
          const int64_t w = (e * s.N + n) * s.K + k;
          double mag = s.beta != 0 ? std::fabs(s.beta * in[kDW].get(w)) : 0.0;
          for (int64_t p = off[e]; p < off[e + 1]; ++p) {
            mag += std::fabs(in[kDC].get(p * this->ldc() + n) *
                             in[2].get(this->row_of(in, p) * this->lda() + k));
          }
          tol[static_cast<size_t>(w)] = sum_tol<T>(off[e + 1] - off[e] + 1, mag);
        }
      }
    }
    return tol;
  }
  double flops() const override { return 2.0 * this->nominal_rows() * this->s_.N * this->s_.K; }
  double bytes() const override {
    const GroupedShape& s = this->s_;
    return static_cast<double>(sizeof(T)) * (this->nominal_rows() * (s.K + s.N) + s.route.E * s.N * s.K);
  }

 private:
  enum { kDC = 3, kDW = 4 };
};

}  // namespace

// Defined in test_ops_cases_elementwise.cpp: activation and combine cases.
void add_activation_cases(CaseList& out);
void add_combine_cases(CaseList& out);
void add_activation_perf_cases(CaseList& out);
void add_combine_perf_cases(CaseList& out);
// Defined in test_ops_cases_ffn.cpp: the fused expert FFN ops.
void add_ffn_cases(CaseList& out);
void add_ffn_perf_cases(CaseList& out);
// Defined in test_ops_cases_weights.cpp: the GEMMs over bf16 and int8/int4 weights.
void add_weight_format_cases(CaseList& out);
// Defined in test_ops_cases_routing.cpp: router_topk, routing_stats, permute's tile metadata.
void add_routing_cases(CaseList& out);
void add_moves_cases(CaseList& out);
void add_routing_perf_cases(CaseList& out);

namespace {

template <typename T>
void add_gemm_cases(CaseList& out) {
  for (int ta = 0; ta < 2; ++ta) {
    for (int tb = 0; tb < 2; ++tb) {
      out.push_back(std::make_unique<GemmCase<T>>(GemmShape{1, 1, 1, ta != 0, tb != 0}));
      out.push_back(std::make_unique<GemmCase<T>>(GemmShape{7, 5, 3, ta != 0, tb != 0}));
      out.push_back(std::make_unique<GemmCase<T>>(GemmShape{33, 17, 65, ta != 0, tb != 0, -1.5, 0.5}));
      out.push_back(
          std::make_unique<GemmCase<T>>(GemmShape{130, 97, 300, ta != 0, tb != 0}));  // K > one block
      out.push_back(
          std::make_unique<GemmCase<T>>(GemmShape{19, 23, 29, ta != 0, tb != 0, 1, 1, 5}));  // padded
      // Integer-valued: |partial sums| <= 4 * 4 * 520 < 2^24, exact in float.
      out.push_back(std::make_unique<GemmCase<T>>(GemmShape{64, 80, 520, ta != 0, tb != 0, 1, 0, 0, 4}));
    }
  }
  out.push_back(std::make_unique<GemmCase<T>>(GemmShape{200, 300, 70, false, false}));  // several tiles
  out.push_back(
      std::make_unique<GemmCase<T>>(GemmShape{100, 300, 100, false, true, 2, -1, 3, 3}));  // int, beta
  out.push_back(std::make_unique<GemmCase<T>>(GemmShape{5, 6, 0, false, false, 1, 0}));    // K = 0: C = 0
  out.push_back(
      std::make_unique<GemmCase<T>>(GemmShape{5, 6, 0, false, false, 1, 2.5}));    // K = 0: C = beta C
  out.push_back(std::make_unique<GemmCase<T>>(GemmShape{0, 6, 4, false, false}));  // M = 0
}

template <typename T>
void add_grouped_cases(CaseList& out) {
  std::vector<GroupedShape> shapes;
  for (bool gather : {true, false}) {
    for (bool trans_w : {false, true}) {
      shapes.push_back({{17, 4, 2}, 24, 40, gather, trans_w});
      shapes.push_back({{17, 4, 2, Pattern::Random, 0.25}, 24, 40, gather, trans_w, 0.5});
    }
  }
  shapes.push_back({{61, 8, 1, Pattern::AllToOne}, 33, 70});       // one expert has every row
  shapes.push_back({{45, 16, 2, Pattern::EvenOnly}, 20, 30});      // odd experts have no rows
  shapes.push_back({{9, 4, 4}, 12, 20});                           // k = E
  shapes.push_back({{5, 1, 1}, 7, 9, false});                      // E = 1
  shapes.push_back({{64, 128, 8}, 16, 32});                        // E = 128
  shapes.push_back({{31, 6, 2}, 18, 22, true, false, 1.0, 3});     // padded strides, beta = 1
  shapes.push_back({{40, 4, 2}, 32, 300, true, false, 0, 0, 4});   // integer-valued: exact
  shapes.push_back({{40, 4, 2}, 32, 300, true, true, 1.0, 0, 4});  // integer-valued with beta: exact
  shapes.push_back({{300, 8, 2}, 300, 270});                       // several tiles per expert
  shapes.push_back({{200, 4, 1, Pattern::AllToOne}, 40, 50, true, false, 0, 0, 0});
  for (const GroupedShape& s : shapes) {
    out.push_back(std::make_unique<GroupedGemmCase<T>>(s));
    out.push_back(std::make_unique<WgradCase<T>>(s));
  }
}

}  // namespace

CaseList consistency_cases() {
  CaseList out;
  add_gemm_cases<float>(out);
  add_gemm_cases<double>(out);
  for (bool kept : {true, false}) {
    for (RouteShape r :
         {RouteShape{1, 1, 1}, RouteShape{17, 4, 1}, RouteShape{33, 8, 2, Pattern::Random, 0.2},
          RouteShape{64, 128, 8, Pattern::Random, 0.1}, RouteShape{10, 6, 6},
          RouteShape{50, 8, 1, Pattern::AllToOne}, RouteShape{37, 16, 2, Pattern::EvenOnly, 0.3},
          RouteShape{20, 4, 2, Pattern::Random, 1.0}, RouteShape{50000, 64, 2, Pattern::Random, 0.05},
          RouteShape{0, 4, 2}}) {
      out.push_back(std::make_unique<PermuteCase>(r, kept));
    }
  }
  add_grouped_cases<float>(out);
  add_grouped_cases<double>(out);
  add_activation_cases(out);
  add_combine_cases(out);
  add_ffn_cases(out);
  add_weight_format_cases(out);
  add_routing_cases(out);
  add_moves_cases(out);
  return out;
}

CaseList perf_cases() {
  CaseList out;
  out.push_back(std::make_unique<GemmCase<float>>(GemmShape{512, 512, 512}));
  out.push_back(std::make_unique<GemmCase<float>>(GemmShape{1024, 1024, 1024, false, true}));
  out.push_back(std::make_unique<PermuteCase>(RouteShape{16384, 64, 8, Pattern::Random, 0.05}, true));
  // A Mixtral-like layer slice: 2048 tokens, 8 experts, top-2, d = 1024, d_ff = 1024.
  out.push_back(std::make_unique<GroupedGemmCase<float>>(GroupedShape{{2048, 8, 2}, 1024, 1024}));
  out.push_back(std::make_unique<GroupedGemmCase<float>>(GroupedShape{{2048, 64, 8}, 256, 1024}));
  out.push_back(std::make_unique<WgradCase<float>>(GroupedShape{{2048, 8, 2}, 1024, 1024}));
  add_activation_perf_cases(out);
  add_combine_perf_cases(out);
  add_ffn_perf_cases(out);
  add_routing_perf_cases(out);
  return out;
}

}  // namespace moe::ops_test
