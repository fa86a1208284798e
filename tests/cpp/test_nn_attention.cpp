// Causal grouped-query attention (moe/model/nn.h): a plain double reference written here, float
// and double against it, finite-difference gradients in double (hq != hkv, sq < sk, several query
// blocks), KV-cache consistency, bit-identical results for 1, 2 and 4 threads, edges and bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "moe/core/error.h"
#include "moe/model/nn.h"
#include "nn_testutil.h"

namespace moe::testing::nn {
namespace {

using moe::nn::AttentionArgs;

AttentionArgs args(int64_t batch, int64_t sq, int64_t sk, int64_t hq, int64_t hkv, int64_t hd,
                   double scale = 0) {
  AttentionArgs a;
  a.batch = batch;
  a.sq = sq;
  a.sk = sk;
  a.hq = hq;
  a.hkv = hkv;
  a.hd = hd;
  a.scale = scale;
  return a;
}

int64_t q_size(const AttentionArgs& a) { return a.batch * a.sq * a.hq * a.hd; }
int64_t kv_size(const AttentionArgs& a) { return a.batch * a.sk * a.hkv * a.hd; }
int64_t lse_size(const AttentionArgs& a) { return a.batch * a.hq * a.sq; }

// The definition, in plain loops: query i of head h sees keys j <= (sk − sq) + i of kv head
// h / (hq / hkv); out = Σ_j softmax_j(scale · q·k_j) v_j, lse = log Σ_j exp(scale · q·k_j).
void ref_attention(const AttentionArgs& a, const std::vector<double>& q, const std::vector<double>& k,
                   const std::vector<double>& v, std::vector<double>& out, std::vector<double>& lse) {
  const double scale = a.scale != 0 ? a.scale : 1.0 / std::sqrt(static_cast<double>(a.hd));
  out.assign(static_cast<size_t>(q_size(a)), 0.0);
  lse.assign(static_cast<size_t>(lse_size(a)), 0.0);
  std::vector<double> s(static_cast<size_t>(a.sk));
  for (int64_t b = 0; b < a.batch; ++b) {
    for (int64_t h = 0; h < a.hq; ++h) {
      const int64_t kvh = h / (a.hq / a.hkv);
      for (int64_t i = 0; i < a.sq; ++i) {
        const int64_t last = a.sk - a.sq + i;
        const double* qi = &q[((b * a.sq + i) * a.hq + h) * a.hd];
        double m = -INFINITY;
        for (int64_t j = 0; j <= last; ++j) {
          const double* kj = &k[((b * a.sk + j) * a.hkv + kvh) * a.hd];
          double dotp = 0;
          for (int64_t d = 0; d < a.hd; ++d) dotp += qi[d] * kj[d];
          s[j] = scale * dotp;
          m = std::max(m, s[j]);
        }
        double l = 0;
        for (int64_t j = 0; j <= last; ++j) l += std::exp(s[j] - m);
        double* o = &out[((b * a.sq + i) * a.hq + h) * a.hd];
        for (int64_t j = 0; j <= last; ++j) {
          const double p = std::exp(s[j] - m) / l;
          const double* vj = &v[((b * a.sk + j) * a.hkv + kvh) * a.hd];
          for (int64_t d = 0; d < a.hd; ++d) o[d] += p * vj[d];
        }
        lse[(b * a.hq + h) * a.sq + i] = m + std::log(l);
      }
    }
  }
}

struct Inputs {
  std::vector<double> q, k, v, dout;
};

Inputs random_inputs(const AttentionArgs& a, uint64_t seed) {
  return {randn(q_size(a), seed), randn(kv_size(a), seed + 1), randn(kv_size(a), seed + 2),
          randn(q_size(a), seed + 3)};
}

template <typename T>
struct Outputs {
  std::vector<T> out, lse, dq, dk, dv;
};

// Forward then backward of the library in precision T, outputs poisoned first.
template <typename T>
Outputs<T> run(const AttentionArgs& a, const Inputs& in) {
  const std::vector<T> q = cast<T>(in.q), k = cast<T>(in.k), v = cast<T>(in.v), dout = cast<T>(in.dout);
  Outputs<T> o{poisoned<T>(q_size(a)), poisoned<T>(lse_size(a)), poisoned<T>(q_size(a)),
               poisoned<T>(kv_size(a)), poisoned<T>(kv_size(a))};
  moe::nn::attention_forward<T>(a, q.data(), k.data(), v.data(), o.out.data(), o.lse.data());
  moe::nn::attention_backward<T>(a, q.data(), k.data(), v.data(), o.out.data(), o.lse.data(), dout.data(),
                                 o.dq.data(), o.dk.data(), o.dv.data());
  return o;
}

// Shapes: odd lengths, sq < sk (KV cache), GQA and MQA, several query blocks (> 64 queries).
std::vector<AttentionArgs> shapes() {
  return {args(1, 1, 1, 1, 1, 1),          args(2, 5, 5, 4, 2, 6),     args(2, 3, 7, 4, 2, 5),
          args(1, 1, 9, 6, 3, 4),          args(3, 7, 7, 2, 1, 3),     args(1, 70, 70, 2, 1, 8),
          args(1, 67, 130, 4, 4, 16, 0.3), args(2, 129, 129, 8, 2, 32)};
}

std::string name(const AttentionArgs& a) {
  return cat("batch ", a.batch, " sq ", a.sq, " sk ", a.sk, " hq ", a.hq, " hkv ", a.hkv, " hd ", a.hd);
}

TEST(NnAttention, ForwardMatchesReference) {
  for (const AttentionArgs& a : shapes()) {
    const Inputs in = random_inputs(a, 7);
    std::vector<double> out_ref, lse_ref;
    ref_attention(a, in.q, in.k, in.v, out_ref, lse_ref);
    const Outputs<double> o64 = run<double>(a, in);
    EXPECT_LE(rel_err(o64.out, out_ref), 1e-13) << name(a);
    EXPECT_LE(rel_err(o64.lse, lse_ref), 1e-13) << name(a);
    // f32: reductions over hd (scores) and over the keys (softmax sum, P·V).
    const Outputs<float> o32 = run<float>(a, in);
    const double tol = f32_tol(std::max(a.hd, a.sk));
    EXPECT_LE(rel_err(o32.out, out_ref), tol) << name(a);
    EXPECT_LE(rel_err(o32.lse, lse_ref), tol) << name(a);
  }
}

TEST(NnAttention, GradientFiniteDifference) {
  // Small shapes (every entry is perturbed): GQA with sq < sk, MQA with sq = sk over two query
  // blocks, and a single query over a long cache.
  for (const AttentionArgs& a :
       {args(2, 3, 5, 4, 2, 3), args(1, 70, 70, 2, 1, 2), args(1, 1, 6, 2, 1, 4, 0.7)}) {
    Inputs in = random_inputs(a, 17);
    const Outputs<double> o = run<double>(a, in);
    auto loss = [&] {
      std::vector<double> out, lse;
      ref_attention(a, in.q, in.k, in.v, out, lse);
      return dot(in.dout, out);
    };
    EXPECT_LE(rel_err(o.dq, numeric_grad(in.q, loss)), 1e-7) << name(a);
    EXPECT_LE(rel_err(o.dk, numeric_grad(in.k, loss)), 1e-7) << name(a);
    EXPECT_LE(rel_err(o.dv, numeric_grad(in.v, loss)), 1e-7) << name(a);
  }
}

TEST(NnAttention, FloatBackwardMatchesDouble) {
  for (const AttentionArgs& a : shapes()) {
    const Inputs in = random_inputs(a, 27);
    const Outputs<double> o64 = run<double>(a, in);
    const Outputs<float> o32 = run<float>(a, in);
    // dK, dV also sum over the queries and the heads of a group.
    const double tol = f32_tol(std::max(a.hd, a.sq * (a.hq / a.hkv)) + a.sk);
    EXPECT_LE(rel_err(o32.dq, to_double(o64.dq)), tol) << name(a);
    EXPECT_LE(rel_err(o32.dk, to_double(o64.dk)), tol) << name(a);
    EXPECT_LE(rel_err(o32.dv, to_double(o64.dv)), tol) << name(a);
  }
}

// Decoding with a KV cache: the last few queries against all keys (sq < sk) give the same outputs
// as the full sequence.
TEST(NnAttention, DecodeMatchesFullSequence) {
  const AttentionArgs full = args(2, 75, 75, 4, 2, 16);
  const Inputs in = random_inputs(full, 37);
  const Outputs<float> f = run<float>(full, in);
  for (int64_t tail : {1, 3, 70}) {
    const AttentionArgs dec = args(2, tail, 75, 4, 2, 16);
    const int64_t row = full.hq * full.hd;
    std::vector<float> q;
    for (int64_t b = 0; b < 2; ++b)
      for (int64_t i = full.sq - tail; i < full.sq; ++i)
        for (int64_t c = 0; c < row; ++c) q.push_back(static_cast<float>(in.q[(b * full.sq + i) * row + c]));
    const std::vector<float> k = cast<float>(in.k), v = cast<float>(in.v);
    std::vector<float> out = poisoned<float>(q_size(dec)), lse = poisoned<float>(lse_size(dec));
    moe::nn::attention_forward<float>(dec, q.data(), k.data(), v.data(), out.data(), lse.data());
    std::vector<double> want_out, want_lse;
    for (int64_t b = 0; b < 2; ++b)
      for (int64_t i = full.sq - tail; i < full.sq; ++i)
        for (int64_t c = 0; c < row; ++c) want_out.push_back(f.out[(b * full.sq + i) * row + c]);
    for (int64_t b = 0; b < 2; ++b)
      for (int64_t h = 0; h < full.hq; ++h)
        for (int64_t i = full.sq - tail; i < full.sq; ++i)
          want_lse.push_back(f.lse[(b * full.hq + h) * full.sq + i]);
    // Same sums, possibly in other blocks: a few f32 roundings at most.
    EXPECT_LE(rel_err(out, want_out), 8 * kU32) << "last " << tail << " queries";
    EXPECT_LE(rel_err(lse, want_lse), 8 * kU32) << "last " << tail << " queries";
  }
}

TEST(NnAttention, BitIdenticalAcrossThreadCounts) {
  for (const AttentionArgs& a : {args(3, 131, 131, 4, 2, 32), args(2, 5, 200, 8, 1, 16)}) {
    const Inputs in = random_inputs(a, 47);
    std::vector<Outputs<float>> outs;
    for (int threads : {1, 2, 4}) {
      ThreadCount tc(threads);
      outs.push_back(run<float>(a, in));
    }
    for (size_t t = 1; t < outs.size(); ++t) {
      EXPECT_TRUE(same_bits(outs[0].out, outs[t].out)) << name(a) << ", run " << t;
      EXPECT_TRUE(same_bits(outs[0].lse, outs[t].lse)) << name(a) << ", run " << t;
      EXPECT_TRUE(same_bits(outs[0].dq, outs[t].dq)) << name(a) << ", run " << t;
      EXPECT_TRUE(same_bits(outs[0].dk, outs[t].dk)) << name(a) << ", run " << t;
      EXPECT_TRUE(same_bits(outs[0].dv, outs[t].dv)) << name(a) << ", run " << t;
    }
  }
}

TEST(NnAttention, Edges) {
  // One position: the output is v (of the group's kv head), the gradients are dq = dk = 0, dv = dout.
  {
    const AttentionArgs a = args(2, 1, 1, 4, 2, 3);
    const Inputs in = random_inputs(a, 57);
    const Outputs<double> o = run<double>(a, in);
    for (int64_t b = 0; b < 2; ++b)
      for (int64_t h = 0; h < 4; ++h)
        for (int64_t d = 0; d < 3; ++d) {
          EXPECT_NEAR(o.out[(b * 4 + h) * 3 + d], in.v[(b * 2 + h / 2) * 3 + d], 1e-15);
          EXPECT_NEAR(o.dq[(b * 4 + h) * 3 + d], 0.0, 1e-15);
        }
    for (double x : o.dk) EXPECT_NEAR(x, 0.0, 1e-15);
    EXPECT_NEAR(o.dv[0], in.dout[0] + in.dout[3], 1e-15);  // kv head 0 is read by query heads 0 and 1
  }
  // No queries (sq = 0): nothing to compute; the key and value gradients are zero.
  {
    const AttentionArgs a = args(2, 0, 4, 2, 1, 3);
    std::vector<float> dk = poisoned<float>(kv_size(a)), dv = poisoned<float>(kv_size(a));
    const std::vector<float> k(static_cast<size_t>(kv_size(a)), 1.0f);
    moe::nn::attention_forward<float>(a, nullptr, k.data(), k.data(), nullptr, nullptr);
    moe::nn::attention_backward<float>(a, nullptr, k.data(), k.data(), nullptr, nullptr, nullptr, nullptr,
                                       dk.data(), dv.data());
    for (float x : dk) EXPECT_EQ(x, 0.0f);
    for (float x : dv) EXPECT_EQ(x, 0.0f);
  }
  // Empty batch: nothing is touched.
  moe::nn::attention_forward<float>(args(0, 5, 5, 2, 2, 4), nullptr, nullptr, nullptr, nullptr, nullptr);
  moe::nn::attention_backward<double>(args(0, 5, 5, 2, 2, 4), nullptr, nullptr, nullptr, nullptr, nullptr,
                                      nullptr, nullptr, nullptr, nullptr);
  // lse is optional in the forward pass.
  const AttentionArgs a = args(1, 4, 4, 2, 2, 4);
  const Inputs in = random_inputs(a, 58);
  const std::vector<float> q = cast<float>(in.q), k = cast<float>(in.k), v = cast<float>(in.v);
  std::vector<float> out = poisoned<float>(q_size(a));
  moe::nn::attention_forward<float>(a, q.data(), k.data(), v.data(), out.data(), nullptr);
  EXPECT_TRUE(same_bits(out, run<float>(a, in).out));
}

TEST(NnAttention, BadInput) {
  const std::vector<float> buf(1024, 0.5f);
  std::vector<float> out(1024);
  const float* p = buf.data();
  auto expect_error = [&](const AttentionArgs& a, const std::string& needle) {
    try {
      moe::nn::attention_forward<float>(a, p, p, p, out.data(), out.data());
      ADD_FAILURE() << "accepted " << name(a);
    } catch (const moe::Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error(args(1, 4, 4, 3, 2, 4), "hq must be a multiple of hkv");
  expect_error(args(1, 5, 4, 2, 2, 4), "sk must be >= sq");
  expect_error(args(1, 4, 4, 2, 0, 4), "hkv");
  expect_error(args(1, 4, 4, 2, 2, 0), "hd");
  expect_error(args(-1, 4, 4, 2, 2, 4), "batch");
  expect_error(args(1, 4, 4, 2, 2, 4, NAN), "scale");
  const AttentionArgs a = args(1, 4, 4, 2, 2, 4);
  EXPECT_THROW(moe::nn::attention_forward<float>(a, p, nullptr, p, out.data(), nullptr), moe::Error);
  EXPECT_THROW(
      moe::nn::attention_backward<float>(a, p, p, p, p, nullptr, p, out.data(), out.data(), out.data()),
      moe::Error);
  EXPECT_THROW(moe::nn::attention_backward<float>(args(1, 4, 4, 4, 3, 4), p, p, p, p, p, p, out.data(),
                                                  out.data(), out.data()),
               moe::Error);
}

}  // namespace
}  // namespace moe::testing::nn
