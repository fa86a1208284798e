// Cases of the fused expert FFN ops: grouped_ffn_up, grouped_ffn_down_backward, grouped_gemm_cat,
// grouped_gemm_scatter, and grouped_gemm_wgrad with a gathered dC. Tolerance principles: see
// test_ops_cases.cpp.
//  * GEMM parts: (n + 4) u * Σ|terms| (Higham's gamma_n bound plus the reference's rounding).
//  * Epilogues: the GEMM error e of a pre-activation propagates through the activation with at most
//    its derivative bound (|silu'| <= 1.1, |gelu'| <= 1.13, |relu'| <= 1), and the elementwise chain
//    adds 16 u relative to its largest intermediate term (as for `activation`).
//  * dscale = Σ q h: each term carries q's GEMM error times |h| plus 16 u |q h|, summed in double.
#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "moe/core/dtype.h"
#include "moe/core/error.h"
#include "moe/kernels/weight_view.h"
#include "op_cases.h"

namespace moe::ops_test {

namespace {

using kernels::Activation;

constexpr double kActSlope = 1.13;  // max |act'| over silu, gelu, relu

template <typename T>
double tol_sum(int64_t n, double magnitude) {
  return static_cast<double>(n + 4) * unit_roundoff<T>() * magnitude;
}

double sigmoid(double a) { return 1.0 / (1.0 + std::exp(-a)); }

// h of element k of a stored pre-activation row x ([G | U] with halves of `half` values for
// SwiGLU, else `half` values U) and a bound on its rounding error (the elementwise chain, 16 u
// relative to its largest factors).
template <typename T>
double pre_h(Activation act, int64_t half, const double* x, int64_t k, double& err) {
  const double u16 = 16 * unit_roundoff<T>();
  if (act == Activation::SwiGLU) {
    const double gv = x[k], u = x[half + k];
    err = u16 * (std::fabs(gv) + 1) * std::fabs(u);
    return gv * sigmoid(gv) * u;
  }
  const double u = x[k];
  err = u16 * (std::fabs(u) + 1);
  if (act == Activation::Relu) return std::max(u, 0.0);
  if (act == Activation::Silu) return u * sigmoid(u);
  return 0.5 * u * (1.0 + std::erf(u / std::sqrt(2.0)));
}

struct FfnShape {
  int64_t T, E, k;
  Pattern pattern = Pattern::Random;
  double drop = 0;
  int64_t F = 8, K = 8;  // K is D for the down backward, N for cat (with K1 = K2 = F)
  Activation act = Activation::SwiGLU;
  bool gather = true;
  bool packed = true;    // [G | U] in one buffer with row stride 2F (as the layer stores them)
  bool optional = true;  // optional outputs requested (G/U for up; Hs, dscale and scale for down)
  double beta = 0;       // cat only
  bool trans_w = false;  // scatter only
  bool preact = false;   // scatter and wgrad(dC_gather): A given as pre-activations (a_preact)
  bool inplace = false;  // down backward: dG, dU written over G, U (packed only)
  bool bf16w = false;    // down backward (f32): W_down as bf16-packed weights (W_down_w), dY rounded to bf16
};

std::string ffn_params(const FfnShape& s) {
  return cat("T=", s.T, ",E=", s.E, ",k=", s.k, ",", pattern_name(s.pattern),
             s.drop > 0 ? cat(",drop=", s.drop) : "", ",F=", s.F, ",K=", s.K, ",",
             kernels::activation_name(s.act), s.gather ? ",gather" : ",gather=null",
             s.packed ? ",packed" : "", s.optional ? "" : ",no-optional",
             s.beta != 0 ? cat(",beta=", s.beta) : "", s.preact ? ",preact" : "", s.inplace ? ",inplace" : "",
             s.bf16w ? ",W=bf16-packed" : "");
}

template <typename T>
class FfnBase : public OpCase {
 public:
  explicit FfnBase(FfnShape s) : s_(s) {}
  bool is_double() const override { return std::is_same_v<T, double>; }
  std::string name() const override {
    return op() + "[" + (std::is_same_v<T, float> ? "f32" : "f64") + "](" + ffn_params(s_) + ")";
  }
  bool swiglu() const { return s_.act == Activation::SwiGLU; }

 protected:
  Routing routing(uint64_t seed) const {
    return make_routing(Rng(seed), s_.T, s_.E, s_.k, s_.pattern, s_.drop);
  }
  // Buffers 0, 1, 2: offsets (E + 1), gather (rows), rows source X (T or rows, width) N(0, 1).
  void add_common(const Rng& rng, const Routing& rt, int64_t width, Buffers& b) const {
    b.add<int32_t>("offsets", s_.E + 1);
    b.add<int32_t>("gather", s_.gather ? rt.rows() : 0);
    b.add<T>("X", (s_.gather ? s_.T : rt.rows()) * width);
    std::copy(rt.offsets.begin(), rt.offsets.end(), b.host<int32_t>(0));
    for (int64_t p = 0; s_.gather && p < rt.rows(); ++p)
      b.host<int32_t>(1)[p] = rt.perm[p] / static_cast<int32_t>(s_.k);
    fill_values(rng.fork(10), b.host<T>(2), b[2].count);
  }
  int64_t rows(const Buffers& in) const { return in.host<int32_t>(0)[s_.E]; }
  int64_t row_of(const Buffers& in, int64_t p) const { return s_.gather ? in.host<int32_t>(1)[p] : p; }
  int64_t expert_of(const Buffers& in, int64_t p) const {
    const int32_t* off = in.host<int32_t>(0);
    int64_t e = 0;
    while (off[e + 1] <= p) ++e;
    return e;
  }
  int64_t ld() const { return swiglu() && s_.packed ? 2 * s_.F : s_.F; }
  // Width of the A rows a preact case stores: ld() for pre-activations, else F.
  int64_t a_width() const { return s_.preact ? (swiglu() ? 2 * s_.F : s_.F) : s_.F; }
  FfnShape s_;
};

// ---------------------------------------------------------------------------------------------
// grouped_ffn_up

template <typename T>
class FfnUpCase : public FfnBase<T> {
  using B = FfnBase<T>;

 public:
  using B::B;
  std::string op() const override { return "grouped_ffn_up"; }
  Buffers make(uint64_t seed) const override {
    const FfnShape& s = this->s_;
    const Routing rt = this->routing(seed);
    const Rng rng(seed);
    Buffers b;
    this->add_common(rng, rt, s.K, b);
    b.add<T>("W_gate", this->swiglu() ? s.E * s.F * s.K : 0);
    b.add<T>("W_up", s.E * s.F * s.K);
    b.add<T>("H", rt.rows() * s.F, Role::Out);
    // G and U share one buffer (row stride 2F) when packed; U lives in kGU2 otherwise.
    b.add<T>("GU", s.optional ? rt.rows() * this->ld() : 0, Role::Out);
    b.add<T>("U", s.optional && this->swiglu() && !s.packed ? rt.rows() * s.F : 0, Role::Out);
    fill_values(rng.fork(11), b.host<T>(kWg), b[kWg].count);
    fill_values(rng.fork(12), b.host<T>(kWu), b[kWu].count);
    return b;
  }
  T* g_ptr(const Buffers& b) const { return this->s_.optional && this->swiglu() ? b.arg<T>(kGU) : nullptr; }
  T* u_ptr(const Buffers& b) const {
    if (!this->s_.optional) return nullptr;
    if (!this->swiglu()) return b.arg<T>(kGU);
    return this->s_.packed ? b.arg<T>(kGU) + this->s_.F : b.arg<T>(kU);
  }
  template <class F>
  decltype(auto) with_args(Buffers& b, F&& f) const {
    const FfnShape& s = this->s_;
    kernels::FfnUpArgs<T> g;
    g.act = s.act, g.E = s.E, g.F = s.F, g.K = s.K;
    g.offsets = b.arg<int32_t>(0), g.A = b.arg<T>(2), g.lda = s.K;
    g.gather = s.gather ? b.arg<int32_t>(1) : nullptr;
    g.W_gate = this->swiglu() ? b.arg<T>(kWg) : nullptr, g.W_up = b.arg<T>(kWu);
    g.H = b.arg<T>(kH), g.ldh = s.F;
    g.G = g_ptr(b), g.ldg = this->ld();
    g.U = u_ptr(b), g.ldu = this->swiglu() && !s.packed ? s.F : this->ld();
    return f(g);
  }
  MOE_OP_CASE_ARGS
  // Exact dot of row p with weight row f of W, and its tolerance.
  void dot(const Buffers& in, int w_id, int64_t p, int64_t f, double& val, double& tol) const {
    const FfnShape& s = this->s_;
    const int64_t e = this->expert_of(in, p), row = this->row_of(in, p);
    double acc = 0, mag = 0;
    for (int64_t k = 0; k < s.K; ++k) {
      const double t = in[2].get(row * s.K + k) * in[w_id].get((e * s.F + f) * s.K + k);
      acc += t;
      mag += std::fabs(t);
    }
    val = acc;
    tol = tol_sum<T>(s.K + 1, mag);
  }
  std::vector<double> tolerance(const Buffers& in, int id) const override {
    const FfnShape& s = this->s_;
    std::vector<double> tol(static_cast<size_t>(in[id].count), kNotCompared);
    if (tol.empty()) return tol;
    const double u16 = 16 * unit_roundoff<T>();
    for (int64_t p = 0; p < this->rows(in); ++p) {
      for (int64_t f = 0; f < s.F; ++f) {
        double u, tu, gv = 0, tg = 0;
        dot(in, kWu, p, f, u, tu);
        if (this->swiglu()) dot(in, kWg, p, f, gv, tg);
        const double au = std::fabs(u) + tu, ag = std::fabs(gv) + tg;
        if (id == kH) {
          tol[static_cast<size_t>(p * s.F + f)] =
              this->swiglu() ? 1.1 * tg * au + ag * tu + u16 * ag * au : kActSlope * tu + u16 * (au + 1);
        } else if (id == kGU) {
          if (this->swiglu()) {
            tol[static_cast<size_t>(p * this->ld() + f)] = tg;
            if (s.packed) tol[static_cast<size_t>(p * this->ld() + s.F + f)] = tu;
          } else {
            tol[static_cast<size_t>(p * s.F + f)] = tu;
          }
        } else if (id == kU) {
          tol[static_cast<size_t>(p * s.F + f)] = tu;
        }
      }
    }
    return tol;
  }
  double flops() const override {
    return 2.0 * this->s_.T * this->s_.k * this->s_.F * this->s_.K * (this->swiglu() ? 2 : 1);
  }
  double bytes() const override {
    const FfnShape& s = this->s_;
    return sizeof(T) * (s.T * s.k * (s.K + 3.0 * s.F) + (this->swiglu() ? 2.0 : 1.0) * s.E * s.F * s.K);
  }

 private:
  enum { kWg = 3, kWu = 4, kH = 5, kGU = 6, kU = 7 };
};

// ---------------------------------------------------------------------------------------------
// grouped_ffn_down_backward

template <typename T>
class FfnDownBackwardCase : public FfnBase<T> {
  using B = FfnBase<T>;

 public:
  using B::B;
  std::string op() const override { return "grouped_ffn_down_backward"; }
  Buffers make(uint64_t seed) const override {
    const FfnShape& s = this->s_;
    const Routing rt = this->routing(seed);
    const Rng rng(seed);
    Buffers b;
    this->add_common(rng, rt, s.K, b);  // X is dY (T or rows, D = K)
    const int64_t M = rt.rows();
    b.add<T>("W_down", s.E * s.K * s.F);
    b.add<uint8_t>("W (bf16-packed)", s.bf16w ? s.E * kernels::packed_bf16_bytes(s.F, s.K) : 0);
    b.add<T>("scale", s.optional ? M : 0);
    b.add<T>("GU", M * this->ld());
    b.add<T>("U", this->swiglu() && !s.packed ? M * s.F : 0);
    b.add<T>("dGU", M * this->ld(), Role::Out);
    b.add<T>("dU", this->swiglu() && !s.packed ? M * s.F : 0, Role::Out);
    b.add<T>("Hs", s.optional ? M * s.F : 0, Role::Out);
    b.add<T>("dscale", s.optional ? M : 0, Role::Out);
    fill_values(rng.fork(11), b.host<T>(kW), b[kW].count);
    // bf16-packed W_down: W's values rounded to bf16 (so that W also serves the tolerance), packed as
    // op(W) (D, F) from W (E, D, F) = (K, N).
    if (s.bf16w) {
      for (int64_t i = 0; i < b[kW].count; ++i)
        b.host<T>(kW)[i] = static_cast<T>(bf16_to_f32(f32_to_bf16(static_cast<float>(b.host<T>(kW)[i]))));
      if constexpr (std::is_same_v<T, float>)
        kernels::pack_bf16_weights(
            {.format = kernels::WeightFormat::F32, .N = s.F, .K = s.K, .trans = true, .data = b.host<T>(kW)},
            s.E, b.host<uint8_t>(kWp));
    }
    fill_values(rng.fork(12), b.host<T>(kScale), b[kScale].count);
    fill_values(rng.fork(13), b.host<T>(kGU), b[kGU].count);
    fill_values(rng.fork(14), b.host<T>(kU), b[kU].count);
    for (int64_t i = 0; i < b[kGU].count; ++i) b.host<T>(kGU)[i] *= T(2);  // tails of the sigmoid too
    return b;
  }
  // Offsets of g and u of (p, f) within their buffers.
  int64_t g_at(int64_t p, int64_t f) const { return p * this->ld() + f; }
  int64_t u_at(int64_t p, int64_t f) const {
    if (!this->swiglu() || !this->s_.packed) return p * (this->swiglu() ? this->s_.F : this->ld()) + f;
    return p * this->ld() + this->s_.F + f;
  }
  int u_id() const { return this->swiglu() && !this->s_.packed ? kU : kGU; }
  int du_id() const { return this->swiglu() && !this->s_.packed ? kDU : kDGU; }
  template <class F>
  decltype(auto) with_args(Buffers& b, F&& f) const {
    const FfnShape& s = this->s_;
    const bool sep = this->swiglu() && !s.packed;
    kernels::FfnDownBackwardArgs<T> g;
    g.act = s.act, g.E = s.E, g.F = s.F, g.D = s.K;
    g.offsets = b.arg<int32_t>(0), g.dY = b.arg<T>(2), g.ldy = s.K;
    g.gather = s.gather ? b.arg<int32_t>(1) : nullptr;
    g.scale = s.optional ? b.arg<T>(kScale) : nullptr;
    g.W_down = b.arg<T>(kW);
    if (s.bf16w) {
      g.W_down = nullptr;
      g.W_down_w = {
          .format = kernels::WeightFormat::Bf16Packed, .N = s.F, .K = s.K, .data = b.arg<uint8_t>(kWp)};
    }
    const int64_t uoff = this->swiglu() && s.packed ? s.F : 0;
    T* gu = b.arg<T>(kGU);
    T* dgu = b.arg<T>(kDGU);
    if (s.inplace && dgu) {  // dG, dU over G, U: run on a copy of GU held in dGU
      std::copy(gu, gu + b[kGU].count, dgu);
      gu = dgu;
    }
    g.G = this->swiglu() ? gu : nullptr, g.ldg = this->ld();
    g.U = sep ? b.arg<T>(kU) : (gu ? gu + uoff : nullptr), g.ldu = sep ? s.F : this->ld();
    g.dG = this->swiglu() ? dgu : nullptr, g.lddg = this->ld();
    g.dU = sep ? b.arg<T>(kDU) : (dgu ? dgu + uoff : nullptr), g.lddu = sep ? s.F : this->ld();
    g.Hs = s.optional ? b.arg<T>(kHs) : nullptr, g.ldhs = s.F;
    g.dscale = s.optional ? b.arg<T>(kDscale) : nullptr;
    return f(g);
  }
  MOE_OP_CASE_ARGS
  std::vector<double> tolerance(const Buffers& in, int id) const override {
    const FfnShape& s = this->s_;
    std::vector<double> tol(static_cast<size_t>(in[id].count), kNotCompared);
    if (tol.empty()) return tol;
    const double uu = unit_roundoff<T>(), u16 = 16 * uu;
    for (int64_t p = 0; p < this->rows(in); ++p) {
      const int64_t e = this->expert_of(in, p), row = this->row_of(in, p);
      const double sc = s.optional ? std::fabs(in[kScale].get(p)) : 1.0;
      double ds_tol = 0, ds_mag = 0;
      for (int64_t f = 0; f < s.F; ++f) {
        double q = 0, qmag = 0;
        for (int64_t k = 0; k < s.K; ++k) {
          double dy = in[2].get(row * s.K + k);
          if (s.bf16w) dy = bf16_to_f32(f32_to_bf16(static_cast<float>(dy)));  // as the format reads it
          const double t = dy * in[kW].get((e * s.K + k) * s.F + f);
          q += t;
          qmag += std::fabs(t);
        }
        const double tq = tol_sum<T>(s.K + 1, qmag), aq = std::fabs(q) + tq;
        const double u = in[u_id()].get(u_at(p, f)), au = std::fabs(u);
        const double gv = this->swiglu() ? in[kGU].get(g_at(p, f)) : 0.0, ag = std::fabs(gv);
        double h, t_du, t_dg = 0, t_hs;
        if (this->swiglu()) {
          h = gv * sigmoid(gv) * u;
          // dU = s q silu(g), dG = s q u silu'(g): q's error times the factor, plus the chain.
          t_du = sc * (tq * ag + u16 * aq * (ag + 1));
          t_dg = sc * (1.1 * tq * au + u16 * aq * au * (ag + 1));
          t_hs = u16 * sc * (ag + 1) * au;
        } else {
          const double sg = sigmoid(u);
          h = s.act == Activation::Relu   ? std::max(u, 0.0)
              : s.act == Activation::Silu ? u * sg
                                          : 0.5 * u * (1.0 + std::erf(u / std::sqrt(2.0)));
          t_du = sc * (kActSlope * tq + u16 * aq * (au + 1));
          t_hs = u16 * sc * (au + 1);
        }
        ds_tol += tq * std::fabs(h) + u16 * aq * (std::fabs(h) + u16 * (au + 1) * (ag + 1));
        ds_mag += std::fabs(q * h);
        if (id == du_id()) tol[static_cast<size_t>(u_at(p, f))] = t_du;
        if (id == kDGU && this->swiglu()) tol[static_cast<size_t>(g_at(p, f))] = t_dg;
        if (id == kHs) tol[static_cast<size_t>(p * s.F + f)] = t_hs;
      }
      if (id == kDscale) tol[static_cast<size_t>(p)] = ds_tol + 2 * uu * ds_mag;
    }
    return tol;
  }
  double flops() const override { return 2.0 * this->s_.T * this->s_.k * this->s_.F * this->s_.K; }
  double bytes() const override {
    const FfnShape& s = this->s_;
    return sizeof(T) * (s.T * s.k * (s.K + 5.0 * s.F) + 1.0 * s.E * s.F * s.K);
  }

 private:
  enum { kW = 3, kWp = 4, kScale = 5, kGU = 6, kU = 7, kDGU = 8, kDU = 9, kHs = 10, kDscale = 11 };
};

// ---------------------------------------------------------------------------------------------
// grouped_gemm_cat: C = beta C + A[:, :F] · W1_e + A[:, F:2F] · W2_e (K2 = 0 for plain activations)

template <typename T>
class GemmCatCase : public FfnBase<T> {
  using B = FfnBase<T>;

 public:
  using B::B;
  std::string op() const override { return "grouped_gemm_cat"; }
  int64_t k2() const { return this->swiglu() ? this->s_.F : 0; }
  int64_t kk() const { return this->s_.F + k2(); }
  Buffers make(uint64_t seed) const override {
    const FfnShape& s = this->s_;
    const Routing rt = this->routing(seed);
    const Rng rng(seed);
    Buffers b;
    this->add_common(rng, rt, kk(), b);
    b.add<T>("W1", s.E * s.F * s.K);
    b.add<T>("W2", s.E * k2() * s.K);
    b.add<T>("C", rt.rows() * s.K, s.beta == 0 ? Role::Out : Role::InOut);
    fill_values(rng.fork(11), b.host<T>(kW1), b[kW1].count);
    fill_values(rng.fork(12), b.host<T>(kW2), b[kW2].count);
    if (s.beta != 0) fill_values(rng.fork(13), b.host<T>(kC), b[kC].count);
    return b;
  }
  template <class F>
  decltype(auto) with_args(Buffers& b, F&& f) const {
    const FfnShape& s = this->s_;
    kernels::GroupedGemmCatArgs<T> g;
    g.E = s.E, g.N = s.K, g.K1 = s.F, g.K2 = k2();
    g.offsets = b.arg<int32_t>(0), g.A = b.arg<T>(2), g.lda = kk();
    g.gather = s.gather ? b.arg<int32_t>(1) : nullptr;
    g.W1 = b.arg<T>(kW1), g.W2 = b.arg<T>(kW2);
    g.C = b.arg<T>(kC), g.ldc = s.K, g.beta = static_cast<T>(s.beta);
    return f(g);
  }
  MOE_OP_CASE_ARGS
  std::vector<double> tolerance(const Buffers& in, int id) const override {
    const FfnShape& s = this->s_;
    std::vector<double> tol(static_cast<size_t>(in[id].count), kNotCompared);
    if (tol.empty()) return tol;
    for (int64_t p = 0; p < this->rows(in); ++p) {
      const int64_t e = this->expert_of(in, p), row = this->row_of(in, p);
      for (int64_t n = 0; n < s.K; ++n) {
        double mag = s.beta != 0 ? std::fabs(s.beta * in[kC].get(p * s.K + n)) : 0.0;
        for (int64_t k = 0; k < kk(); ++k) {
          const double w =
              k < s.F ? in[kW1].get((e * s.F + k) * s.K + n) : in[kW2].get((e * s.F + k - s.F) * s.K + n);
          mag += std::fabs(in[2].get(row * kk() + k) * w);
        }
        tol[static_cast<size_t>(p * s.K + n)] = tol_sum<T>(kk() + 1, mag);
      }
    }
    return tol;
  }
  double flops() const override { return 2.0 * this->s_.T * this->s_.k * this->s_.K * kk(); }
  double bytes() const override {
    const FfnShape& s = this->s_;
    return sizeof(T) * (s.T * s.k * (s.K + kk()) + 1.0 * s.E * kk() * s.K);
  }

 private:
  enum { kW1 = 3, kW2 = 4, kC = 5 };
};

// ---------------------------------------------------------------------------------------------
// grouped_gemm_scatter: C[out_row[p]] = scale[p] * A[row(p)] · W_e^T, W_e (N = K field, K = F field).
// out_row = the assignment of each row (slot order) with gather, null without; C starts filled
// with values that rows not written must keep.

template <typename T>
class ScatterCase : public FfnBase<T> {
  using B = FfnBase<T>;

 public:
  using B::B;
  std::string op() const override { return "grouped_gemm_scatter"; }
  int64_t c_rows(const Routing& rt) const { return this->s_.gather ? this->s_.T * this->s_.k : rt.rows(); }
  Buffers make(uint64_t seed) const override {
    const FfnShape& s = this->s_;
    const Routing rt = this->routing(seed);
    const Rng rng(seed);
    Buffers b;
    this->add_common(rng, rt, this->a_width(), b);
    b.add<T>("W", s.E * s.F * s.K);
    b.add<T>("scale", s.optional ? rt.rows() : 0);
    b.add<int32_t>("out_row", s.gather ? rt.rows() : 0);
    b.add<T>("C", c_rows(rt) * s.K, Role::InOut);
    fill_values(rng.fork(11), b.host<T>(kW), b[kW].count);
    fill_values(rng.fork(12), b.host<T>(kScale), b[kScale].count);
    fill_values(rng.fork(13), b.host<T>(kC), b[kC].count);
    for (int64_t p = 0; s.gather && p < rt.rows(); ++p) b.host<int32_t>(kOut)[p] = rt.perm[p];
    return b;
  }
  template <class F>
  decltype(auto) with_args(Buffers& b, F&& f) const {
    const FfnShape& s = this->s_;
    kernels::GroupedGemmScatterArgs<T> g;
    g.E = s.E, g.N = s.K, g.K = s.F;
    g.offsets = b.arg<int32_t>(0), g.A = b.arg<T>(2), g.lda = this->a_width();
    g.a_preact = s.preact, g.act = s.act;
    g.gather = s.gather ? b.arg<int32_t>(1) : nullptr;
    g.W = b.arg<T>(kW), g.trans_w = s.trans_w;
    g.scale = s.optional ? b.arg<T>(kScale) : nullptr;
    g.out_row = s.gather ? b.arg<int32_t>(kOut) : nullptr;
    g.C = b.arg<T>(kC), g.ldc = s.K;
    return f(g);
  }
  MOE_OP_CASE_ARGS
  std::vector<double> tolerance(const Buffers& in, int id) const override {
    const FfnShape& s = this->s_;
    std::vector<double> tol(static_cast<size_t>(in[id].count), 0.0);  // rows not written: exact
    for (int64_t p = 0; p < this->rows(in); ++p) {
      const int64_t e = this->expert_of(in, p), row = this->row_of(in, p);
      const double sc = s.optional ? std::fabs(in[kScale].get(p)) : 1.0;
      const int64_t out = s.gather ? in.host<int32_t>(kOut)[p] : p;
      std::vector<double> a(static_cast<size_t>(s.F)), aerr(static_cast<size_t>(s.F), 0.0);
      std::vector<double> x(static_cast<size_t>(this->a_width()));
      for (int64_t k = 0; k < this->a_width(); ++k)
        x[static_cast<size_t>(k)] = in[2].get(row * this->a_width() + k);
      for (int64_t k = 0; k < s.F; ++k)
        a[static_cast<size_t>(k)] = s.preact ? pre_h<T>(s.act, s.F, x.data(), k, aerr[static_cast<size_t>(k)])
                                             : x[static_cast<size_t>(k)];
      for (int64_t n = 0; n < s.K; ++n) {
        double mag = 0, herr = 0;
        for (int64_t k = 0; k < s.F; ++k) {
          const double w = std::fabs(in[kW].get(e * s.F * s.K + (s.trans_w ? k * s.K + n : n * s.F + k)));
          mag += std::fabs(a[static_cast<size_t>(k)]) * w;
          herr += aerr[static_cast<size_t>(k)] * w;
        }
        tol[static_cast<size_t>(out * s.K + n)] = tol_sum<T>(s.F + 2, sc * mag) + sc * herr;
      }
    }
    return tol;
  }
  double flops() const override { return 2.0 * this->s_.T * this->s_.k * this->s_.F * this->s_.K; }
  double bytes() const override {
    const FfnShape& s = this->s_;
    return sizeof(T) * (s.T * s.k * (s.K + s.F) + 1.0 * s.E * s.F * s.K);
  }

 private:
  enum { kW = 3, kScale = 4, kOut = 5, kC = 6 };
};

// ---------------------------------------------------------------------------------------------
// grouped_gemm_wgrad with dC rows gathered (dW_e (F, K) = Σ_p dC[gather(p)]^T · A[p]).

template <typename T>
class WgradGatherCase : public FfnBase<T> {
  using B = FfnBase<T>;

 public:
  using B::B;
  std::string op() const override { return "grouped_gemm_wgrad(dC_gather)"; }
  Buffers make(uint64_t seed) const override {
    const FfnShape& s = this->s_;
    const Routing rt = this->routing(seed);
    const Rng rng(seed);
    Buffers b;
    this->add_common(rng, rt, s.F, b);  // X is dC: (T or rows, F)
    b.add<T>("A", rt.rows() * a_w());
    b.add<T>("dW", s.E * s.F * s.K, Role::Out);
    b.add<T>("a_scale", s.preact && s.optional ? rt.rows() : 0);
    fill_values(rng.fork(11), b.host<T>(kA), b[kA].count);
    fill_values(rng.fork(12), b.host<T>(kScale), b[kScale].count);
    return b;
  }
  // A's row width: K values, or with preact the pre-activations of K values (2K for SwiGLU).
  int64_t a_w() const { return this->s_.preact && this->swiglu() ? 2 * this->s_.K : this->s_.K; }
  template <class F>
  decltype(auto) with_args(Buffers& b, F&& f) const {
    const FfnShape& s = this->s_;
    kernels::GroupedWgradArgs<T> g;
    g.E = s.E, g.N = s.F, g.K = s.K;
    g.offsets = b.arg<int32_t>(0);
    g.dC = b.arg<T>(2), g.ldc = s.F, g.dC_gather = s.gather ? b.arg<int32_t>(1) : nullptr;
    g.A = b.arg<T>(kA), g.lda = a_w();
    g.a_preact = s.preact, g.act = s.act;
    g.a_scale = s.preact && s.optional ? b.arg<T>(kScale) : nullptr;
    g.dW = b.arg<T>(kDW);
    return f(g);
  }
  MOE_OP_CASE_ARGS
  std::vector<double> tolerance(const Buffers& in, int id) const override {
    const FfnShape& s = this->s_;
    std::vector<double> tol(static_cast<size_t>(in[id].count), 0.0);
    const int32_t* off = in.host<int32_t>(0);
    // A's values (scale * h with preact) and their errors, (rows, K).
    const int64_t M = this->rows(in);
    std::vector<double> a(static_cast<size_t>(M * s.K)), aerr(static_cast<size_t>(M * s.K), 0.0);
    std::vector<double> x(static_cast<size_t>(a_w()));
    for (int64_t p = 0; p < M; ++p) {
      for (int64_t k = 0; k < a_w(); ++k) x[static_cast<size_t>(k)] = in[kA].get(p * a_w() + k);
      const double sc = s.preact && s.optional ? in[kScale].get(p) : 1.0;
      for (int64_t k = 0; k < s.K; ++k) {
        const size_t i = static_cast<size_t>(p * s.K + k);
        if (!s.preact) {
          a[i] = x[static_cast<size_t>(k)];
          continue;
        }
        double err = 0;
        const double h = pre_h<T>(s.act, s.K, x.data(), k, err);
        a[i] = sc * h;
        aerr[i] = std::fabs(sc) * (err + unit_roundoff<T>() * std::fabs(h));
      }
    }
    for (int64_t e = 0; e < s.E; ++e) {
      for (int64_t n = 0; n < s.F; ++n) {
        for (int64_t k = 0; k < s.K; ++k) {
          double mag = 0, herr = 0;
          for (int64_t p = off[e]; p < off[e + 1]; ++p) {
            const double dc = std::fabs(in[2].get(this->row_of(in, p) * s.F + n));
            mag += dc * std::fabs(a[static_cast<size_t>(p * s.K + k)]);
            herr += dc * aerr[static_cast<size_t>(p * s.K + k)];
          }
          tol[static_cast<size_t>((e * s.F + n) * s.K + k)] = tol_sum<T>(off[e + 1] - off[e] + 1, mag) + herr;
        }
      }
    }
    return tol;
  }
  double flops() const override { return 2.0 * this->s_.T * this->s_.k * this->s_.F * this->s_.K; }
  double bytes() const override {
    const FfnShape& s = this->s_;
    return sizeof(T) * (s.T * s.k * (s.K + s.F) + 1.0 * s.E * s.F * s.K);
  }

 private:
  enum { kA = 3, kDW = 4, kScale = 5 };
};

template <typename T>
void add_ffn_cases_typed(CaseList& out) {
  std::vector<FfnShape> shapes;
  for (Activation act : {Activation::SwiGLU, Activation::Gelu, Activation::Relu, Activation::Silu}) {
    for (bool gather : {true, false}) shapes.push_back({17, 4, 2, Pattern::Random, 0.2, 13, 11, act, gather});
  }
  shapes.push_back({17, 4, 2, Pattern::Random, 0, 13, 11, Activation::SwiGLU, true, false});  // G, U apart
  shapes.push_back(
      {17, 4, 2, Pattern::Random, 0, 13, 11, Activation::SwiGLU, true, true, false});  // no optional
  shapes.push_back({17, 4, 2, Pattern::Random, 0, 13, 11, Activation::Gelu, false, true, false});
  shapes.push_back({61, 8, 1, Pattern::AllToOne, 0, 9, 7});    // one expert has every row; k = 1
  shapes.push_back({45, 16, 2, Pattern::EvenOnly, 0, 10, 6});  // odd experts have no rows
  shapes.push_back({9, 4, 4, Pattern::Random, 0, 7, 5});       // k = E
  shapes.push_back({5, 1, 1, Pattern::Random, 0, 6, 4, Activation::SwiGLU, false});  // E = 1
  shapes.push_back({20, 4, 2, Pattern::Random, 1.0, 8, 8});       // everything dropped: no rows
  shapes.push_back({0, 4, 2, Pattern::Random, 0, 8, 8});          // no tokens
  shapes.push_back({200, 3, 2, Pattern::Random, 0.1, 300, 270});  // several row, column and K tiles
  // A as pre-activations (scatter, wgrad) and the down backward in place, every activation.
  std::vector<FfnShape> pre;
  for (Activation act : {Activation::SwiGLU, Activation::Gelu, Activation::Relu, Activation::Silu}) {
    pre.push_back({17, 4, 2, Pattern::Random, 0.2, 13, 11, act, true});
    pre.push_back({17, 4, 2, Pattern::Random, 0.2, 13, 11, act, false, true, false});
  }
  pre.push_back({200, 3, 2, Pattern::Random, 0.1, 300, 270});  // several row, column and K tiles
  pre.push_back({45, 16, 2, Pattern::EvenOnly, 0, 10, 6});
  for (FfnShape s : pre) {
    s.preact = true;
    FfnShape sc = s;
    sc.trans_w = !s.gather;
    out.push_back(std::make_unique<ScatterCase<T>>(sc));
    out.push_back(std::make_unique<WgradGatherCase<T>>(s));
    FfnShape ip = s;
    ip.preact = false;
    ip.inplace = true;
    out.push_back(std::make_unique<FfnDownBackwardCase<T>>(ip));
  }
  if constexpr (std::is_same_v<T, float>) {  // the down backward on bf16-packed weights (bf16 compute)
    // SwiGLU and GELU, gathered or not, G and U apart, no optional outputs, one expert with every row,
    // experts with none, no tokens, several row, column and K tiles
    for (FfnShape s : {shapes[0], shapes[1], shapes[2], shapes[8], shapes[9], shapes[11], shapes[12],
                       shapes[16], shapes[17]}) {
      s.bf16w = true;
      out.push_back(std::make_unique<FfnDownBackwardCase<T>>(s));
      s.inplace = s.packed;
      if (s.inplace) out.push_back(std::make_unique<FfnDownBackwardCase<T>>(s));
    }
  }
  for (const FfnShape& s : shapes) {
    out.push_back(std::make_unique<FfnUpCase<T>>(s));
    out.push_back(std::make_unique<FfnDownBackwardCase<T>>(s));
    FfnShape c = s;
    c.beta = s.gather ? 0.0 : 0.5;
    out.push_back(std::make_unique<GemmCatCase<T>>(c));
    out.push_back(std::make_unique<WgradGatherCase<T>>(s));
    FfnShape sc = s;
    sc.trans_w = !s.gather;
    out.push_back(std::make_unique<ScatterCase<T>>(sc));
  }
}

}  // namespace

void add_ffn_cases(CaseList& out) {
  add_ffn_cases_typed<float>(out);
  add_ffn_cases_typed<double>(out);
}

void add_ffn_perf_cases(CaseList& out) {
  // Mixtral-small slice: 2048 tokens, 8 experts, top-2, d = 1024, d_ff = 3584.
  const FfnShape mix{2048, 8, 2, Pattern::Random, 0, 3584, 1024};
  out.push_back(std::make_unique<FfnUpCase<float>>(mix));
  out.push_back(std::make_unique<FfnDownBackwardCase<float>>(mix));
  out.push_back(std::make_unique<GemmCatCase<float>>(mix));
}

}  // namespace moe::ops_test
