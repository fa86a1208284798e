// Causal grouped-query attention, forward and backward (include/moe/model/nn.h).
//
// Work is split into blocks of at most kQBlock queries of one (batch row, head). For a block of
// queries [i0, i1) only keys [0, nk), nk = (sk − sq) + i1, can be seen, so every matrix product
// below is over that prefix of the keys; entries past a query's own limit are masked to 0.
//
//   forward,  one item per (b, h, query block), owning its rows of out and lse:
//     S  (nq, nk) = scale · Q_blk · K[:nk]ᵀ                                    gemm
//     P  (nq, nk) = exp(S − m) / l per row (m the row max, l the row sum), lse = m + log l
//     O_blk (nq, hd) = P · V[:nk]                                              gemm
//   backward, one item per (b, kv head), owning dK and dV of that head and dQ of the query heads
//   that read it (so the sums over queries and heads into dK, dV have a fixed order):
//     P  = exp(S − lse) recomputed,  dP (nq, nk) = dO_blk · V[:nk]ᵀ,  D_i = dO_i · O_i
//     dS = P ∘ (dP − D),  dQ_blk = scale · dS · K[:nk],  dK[:nk] += scale · dSᵀ · Q_blk,
//     dV[:nk] += Pᵀ · dO_blk
//
// The products run on kernels::gemm on the caller's backend (a host backend). Inside an item they run on the
// calling thread (moe::parallel_items runs inline in a parallel region); the gemm sums in an order fixed by
// the shapes, and each item's order of blocks is fixed, so results do not depend on the thread count.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "model/nn_math.h"
#include "moe/core/error.h"
#include "moe/core/parallel.h"
#include "moe/kernels/ops.h"
#include "moe/model/nn.h"

namespace moe::nn {

namespace {

constexpr int64_t kQBlock = 64;  // queries per block

void check_attention(const char* op, const AttentionArgs& a) {
  MOE_CHECK(a.batch >= 0, op, ": batch must be >= 0, got ", a.batch);
  MOE_CHECK(a.sq >= 0, op, ": sq must be >= 0, got ", a.sq);
  MOE_CHECK(a.sk >= a.sq, op, ": sk must be >= sq (queries are the last sq of sk positions), got sq = ", a.sq,
            ", sk = ", a.sk);
  MOE_CHECK(a.hq >= 1, op, ": hq must be >= 1, got ", a.hq);
  MOE_CHECK(a.hkv >= 1, op, ": hkv must be >= 1, got ", a.hkv);
  MOE_CHECK(a.hq % a.hkv == 0, op, ": hq must be a multiple of hkv, got hq = ", a.hq, ", hkv = ", a.hkv);
  MOE_CHECK(a.hd >= 1, op, ": head dim hd must be >= 1, got ", a.hd);
  MOE_CHECK(a.hd_v >= 0, op, ": value head dim hd_v must be >= 0 (0 = hd), got ", a.hd_v);
  MOE_CHECK(std::isfinite(a.scale), op, ": scale must be finite, got ", a.scale);
}

// The buffers are host memory and the softmax a host loop: the products must run on the host too.
void check_host_backend(const char* op, kernels::Backend be) {
  MOE_CHECK(be != kernels::Backend::Cuda, op, ": backend ", kernels::backend_name(be),
            " is not supported (host buffers and host softmax; use ref or cpu)");
}

void check_ptr(const char* op, const char* name, const void* p) {
  MOE_CHECK(p != nullptr, op, ": ", name, " is null");
}

double scale_of(const AttentionArgs& a) {
  return a.scale != 0 ? a.scale : 1.0 / std::sqrt(static_cast<double>(a.hd));
}

// Geometry of one (batch row, query head, query block): row strides and pointers.
struct Block {
  int64_t b = 0, h = 0, kvh = 0;
  int64_t i0 = 0, nq = 0;  // queries [i0, i0 + nq)
  int64_t nk = 0;          // keys [0, nk) visible to the block
  int64_t off = 0;         // sk − sq: query i sees keys j <= off + i
};

struct Layout {
  const AttentionArgs& a;
  int64_t ldq() const { return a.hq * a.hd; }       // row stride of q, dq
  int64_t ldk() const { return a.hkv * a.hd; }      // row stride of k, dk
  int64_t ldv() const { return a.hkv * a.vdim(); }  // row stride of v, dv
  int64_t ldo() const { return a.hq * a.vdim(); }   // row stride of out, dout
  // Element offset of query row i of head h in batch row b; of key row j of kv head kvh; the same
  // rows of values and outputs (head dim vdim).
  int64_t qrow(int64_t b, int64_t i, int64_t h) const { return ((b * a.sq + i) * a.hq + h) * a.hd; }
  int64_t krow(int64_t b, int64_t j, int64_t kvh) const { return ((b * a.sk + j) * a.hkv + kvh) * a.hd; }
  int64_t vrow(int64_t b, int64_t j, int64_t kvh) const { return ((b * a.sk + j) * a.hkv + kvh) * a.vdim(); }
  int64_t orow(int64_t b, int64_t i, int64_t h) const { return ((b * a.sq + i) * a.hq + h) * a.vdim(); }
};

// S (nq, nk) = scale · Q_blk · K[:nk]ᵀ.
template <typename T>
void scores(kernels::Backend be, const Layout& L, const Block& k, const T* q, const T* kk, T scale, T* S) {
  kernels::GemmArgs<T> g;
  g.M = k.nq;
  g.N = k.nk;
  g.K = L.a.hd;
  g.A = q + L.qrow(k.b, k.i0, k.h);
  g.lda = L.ldq();
  g.B = kk + L.krow(k.b, 0, k.kvh);
  g.ldb = L.ldk();
  g.trans_b = true;
  g.C = S;
  g.ldc = k.nk;
  g.alpha = scale;
  kernels::gemm(be, g);
}

// Number of keys query r of the block sees.
inline int64_t visible(const Block& k, int64_t r) { return k.off + k.i0 + r + 1; }

// Query block qb (of ceil(sq / kQBlock)) of head h in batch row b.
Block query_block(const AttentionArgs& a, int64_t b, int64_t h, int64_t qb) {
  Block k;
  k.b = b;
  k.h = h;
  k.kvh = h / (a.hq / a.hkv);
  k.i0 = qb * kQBlock;
  k.nq = std::min(kQBlock, a.sq - k.i0);
  k.off = a.sk - a.sq;
  k.nk = k.off + k.i0 + k.nq;
  return k;
}

}  // namespace

template <typename T>
void attention_forward(kernels::Backend be, const AttentionArgs& a, const T* q, const T* k, const T* v,
                       T* out, T* lse) {
  const char* op = "attention_forward";
  check_attention(op, a);
  check_host_backend(op, be);
  if (a.batch == 0 || a.sq == 0) return;
  check_ptr(op, "q", q);
  check_ptr(op, "k", k);
  check_ptr(op, "v", v);
  check_ptr(op, "out", out);
  const Layout L{a};
  const T scale = static_cast<T>(scale_of(a));
  const int64_t n_qblocks = (a.sq + kQBlock - 1) / kQBlock;
  // Items ordered (b, h, query block); later blocks see more keys and cost more.
  parallel_items(a.batch * a.hq * n_qblocks, [&](int64_t item) {
    const int64_t b = item / (a.hq * n_qblocks), h = item / n_qblocks % a.hq, qb = item % n_qblocks;
    const Block blk = query_block(a, b, h, qb);
    std::vector<T> P(static_cast<size_t>(blk.nq * blk.nk));  // (nq, nk): scores, then probabilities
    scores(be, L, blk, q, k, scale, P.data());
    for (int64_t r = 0; r < blk.nq; ++r) {
      T* p = P.data() + r * blk.nk;  // (nk)
      const int64_t n_vis = visible(blk, r);
      const T m = detail::row_max(p, n_vis);
      detail::exp_shifted(p, n_vis, m);
      const double l = detail::row_sum(p, n_vis);
      const T inv_l = static_cast<T>(1.0 / l);
      for (int64_t j = 0; j < n_vis; ++j) p[j] *= inv_l;
      std::fill(p + n_vis, p + blk.nk, T(0));
      if (lse) lse[(b * a.hq + h) * a.sq + blk.i0 + r] = static_cast<T>(static_cast<double>(m) + std::log(l));
    }
    // O_blk (nq, hd_v) = P · V[:nk].
    kernels::GemmArgs<T> g;
    g.M = blk.nq;
    g.N = a.vdim();
    g.K = blk.nk;
    g.A = P.data();
    g.lda = blk.nk;
    g.B = v + L.vrow(b, 0, blk.kvh);
    g.ldb = L.ldv();
    g.C = out + L.orow(b, blk.i0, h);
    g.ldc = L.ldo();
    kernels::gemm(be, g);
  });
}

template <typename T>
void attention_backward(kernels::Backend be, const AttentionArgs& a, const T* q, const T* k, const T* v,
                        const T* out, const T* lse, const T* dout, T* dq, T* dk, T* dv) {
  const char* op = "attention_backward";
  check_attention(op, a);
  check_host_backend(op, be);
  if (a.batch == 0 || a.sk == 0) return;
  check_ptr(op, "dk", dk);
  check_ptr(op, "dv", dv);
  if (a.sq > 0) {
    check_ptr(op, "q", q);
    check_ptr(op, "k", k);
    check_ptr(op, "v", v);
    check_ptr(op, "out", out);
    check_ptr(op, "lse", lse);
    check_ptr(op, "dout", dout);
    check_ptr(op, "dq", dq);
  }
  const Layout L{a};
  const T scale = static_cast<T>(scale_of(a));
  const int64_t group = a.hq / a.hkv;
  const int64_t n_qblocks = (a.sq + kQBlock - 1) / kQBlock;
  parallel_items(a.batch * a.hkv, [&](int64_t item) {
    const int64_t b = item / a.hkv, kvh = item % a.hkv;
    for (int64_t j = 0; j < a.sk; ++j) {
      std::fill_n(dk + L.krow(b, j, kvh), a.hd, T(0));
      std::fill_n(dv + L.vrow(b, j, kvh), a.vdim(), T(0));
    }
    std::vector<T> P, dS;  // (nq, nk) each
    for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h) {
      for (int64_t qb = 0; qb < n_qblocks; ++qb) {
        const Block blk = query_block(a, b, h, qb);
        const size_t sz = static_cast<size_t>(blk.nq * blk.nk);
        P.resize(sz);
        dS.resize(sz);
        scores(be, L, blk, q, k, scale, P.data());
        // dP (nq, nk) = dO_blk · V[:nk]ᵀ, into dS.
        kernels::GemmArgs<T> g;
        g.M = blk.nq;
        g.N = blk.nk;
        g.K = a.vdim();
        g.A = dout + L.orow(b, blk.i0, h);
        g.lda = L.ldo();
        g.B = v + L.vrow(b, 0, kvh);
        g.ldb = L.ldv();
        g.trans_b = true;
        g.C = dS.data();
        g.ldc = blk.nk;
        kernels::gemm(be, g);
        for (int64_t r = 0; r < blk.nq; ++r) {
          T* p = P.data() + r * blk.nk;    // (nk)
          T* ds = dS.data() + r * blk.nk;  // (nk)
          const int64_t n_vis = visible(blk, r);
          const T l = lse[(b * a.hq + h) * a.sq + blk.i0 + r];
          const T* o = out + L.orow(b, blk.i0 + r, h);    // (hd_v)
          const T* dO = dout + L.orow(b, blk.i0 + r, h);  // (hd_v)
          double D = 0;                                   // dO_i · O_i = Σ_j P_ij dP_ij
          for (int64_t d = 0; d < a.vdim(); ++d) D += static_cast<double>(dO[d]) * static_cast<double>(o[d]);
          const T Dt = static_cast<T>(D);
          detail::exp_shifted(p, n_vis, l);
          for (int64_t j = 0; j < n_vis; ++j) ds[j] = p[j] * (ds[j] - Dt);
          std::fill(p + n_vis, p + blk.nk, T(0));
          std::fill(ds + n_vis, ds + blk.nk, T(0));
        }
        // dQ_blk (nq, hd) = scale · dS · K[:nk].
        g = {};
        g.M = blk.nq;
        g.N = a.hd;
        g.K = blk.nk;
        g.A = dS.data();
        g.lda = blk.nk;
        g.B = k + L.krow(b, 0, kvh);
        g.ldb = L.ldk();
        g.C = dq + L.qrow(b, blk.i0, h);
        g.ldc = L.ldq();
        g.alpha = scale;
        kernels::gemm(be, g);
        // dK[:nk] (nk, hd) += scale · dSᵀ · Q_blk.
        g = {};
        g.M = blk.nk;
        g.N = a.hd;
        g.K = blk.nq;
        g.A = dS.data();
        g.lda = blk.nk;
        g.trans_a = true;
        g.B = q + L.qrow(b, blk.i0, h);
        g.ldb = L.ldq();
        g.C = dk + L.krow(b, 0, kvh);
        g.ldc = L.ldk();
        g.alpha = scale;
        g.beta = 1;
        kernels::gemm(be, g);
        // dV[:nk] (nk, hd_v) += Pᵀ · dO_blk.
        g.N = a.vdim();
        g.A = P.data();
        g.B = dout + L.orow(b, blk.i0, h);
        g.ldb = L.ldo();
        g.C = dv + L.vrow(b, 0, kvh);
        g.ldc = L.ldv();
        g.alpha = 1;
        kernels::gemm(be, g);
      }
    }
  });
}

#define MOE_NN_ATTENTION_INSTANTIATE(T)                                                                     \
  template void attention_forward<T>(kernels::Backend, const AttentionArgs&, const T*, const T*, const T*,  \
                                     T*, T*);                                                               \
  template void attention_backward<T>(kernels::Backend, const AttentionArgs&, const T*, const T*, const T*, \
                                      const T*, const T*, const T*, T*, T*, T*);
MOE_NN_ATTENTION_INSTANTIATE(float)
MOE_NN_ATTENTION_INSTANTIATE(double)
#undef MOE_NN_ATTENTION_INSTANTIATE

}  // namespace moe::nn
