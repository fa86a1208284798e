// The factored expert runner (moe/moe/low_rank_experts.h): grouped GEMMs through the rank-R factors.
#include "moe/moe/low_rank_experts.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "moe/core/error.h"
#include "moe/core/parallel.h"
#include "moe/kernels/ops.h"

namespace moe {

namespace {

void check_matrix(const LowRankMatrix& m, const char* kind, int64_t E, int64_t N, int64_t K, int64_t R,
                  const std::string& what) {
  MOE_CHECK(m.a.defined() && m.b.defined(), what, ": low-rank ", kind, " factors missing");
  const Shape a{E, N, R}, b{E, R, K};
  MOE_CHECK(m.a.shape() == a && m.a.dtype() == DType::F32 && m.a.is_contiguous(), what, ": low-rank ", kind,
            " factor A must be f32 ", shape_str(a), ", got ", dtype_name(m.a.dtype()), " ",
            shape_str(m.a.shape()));
  MOE_CHECK(m.b.shape() == b && m.b.dtype() == DType::F32 && m.b.is_contiguous(), what, ": low-rank ", kind,
            " factor B must be f32 ", shape_str(b), ", got ", dtype_name(m.b.dtype()), " ",
            shape_str(m.b.shape()));
  if (m.base.defined())
    MOE_CHECK(m.base.shape() == Shape({N, K}) && m.base.dtype() == DType::F32 && m.base.is_contiguous(), what,
              ": low-rank ", kind, " base must be f32 (", N, ", ", K, "), got ", dtype_name(m.base.dtype()),
              " ", shape_str(m.base.shape()));
}

// C (M, N) (+)= rows of A · (W_e (N, K))ᵀ over every expert: one grouped GEMM.
void grouped(kernels::Backend be, int64_t E, int64_t N, int64_t K, const int32_t* offsets, const float* A,
             int64_t lda, const int32_t* gather, const float* W, float* C, int64_t ldc, float beta) {
  kernels::GroupedGemmArgs<float> g;
  g.E = E, g.N = N, g.K = K;
  g.offsets = offsets;
  g.A = A, g.lda = lda, g.gather = gather;
  g.W = W;
  g.C = C, g.ldc = ldc, g.beta = beta;
  kernels::grouped_gemm<float>(be, g);
}

// C (M, N) = A (M, K) · W (N, K)ᵀ: one plain GEMM (a base over all rows).
void plain(kernels::Backend be, int64_t M, int64_t N, int64_t K, const float* A, const float* W, float* C) {
  kernels::GemmArgs<float> g;
  g.M = M, g.N = N, g.K = K;
  g.A = A, g.lda = K;
  g.B = W, g.ldb = K, g.trans_b = true;
  g.C = C, g.ldc = N;
  kernels::gemm<float>(be, g);
}

}  // namespace

double dense_flops_per_row(const MoEConfig& c) {
  const double mats = c.activation == kernels::Activation::SwiGLU ? 3 : 2;
  return mats * static_cast<double>(c.d_ff) * static_cast<double>(c.d_model);
}

double low_rank_flops_per_row(const MoEConfig& c, int64_t rank, bool shared_base) {
  const double d = static_cast<double>(c.d_model), F = static_cast<double>(c.d_ff);
  const double in_mats = c.activation == kernels::Activation::SwiGLU ? 2 : 1;
  double f = (in_mats + 1) * static_cast<double>(rank) * (F + d);
  if (shared_base)
    f += in_mats * F * d / std::max(1, c.router.top_k) + F * d;  // gate/up per token, down per row
  return f;
}

LowRankExecutor::LowRankExecutor(LowRankExperts w, const MoEConfig& c, const std::string& what,
                                 kernels::Backend backend)
    : w_(std::move(w)), E_(c.n_experts), d_(c.d_model), F_(c.d_ff), act_(c.activation), backend_(backend) {
  const int64_t R = w_.rank;
  MOE_CHECK(R >= 1, what, ": low-rank experts need a rank >= 1, got ", R);
  const bool swiglu = act_ == kernels::Activation::SwiGLU;
  if (swiglu) check_matrix(w_.gate, "gate", E_, F_, d_, R, what);
  check_matrix(w_.up, "up", E_, F_, d_, R, what);
  check_matrix(w_.down, "down", E_, d_, F_, R, what);
  const bool base = w_.up.base.defined();
  MOE_CHECK(base == w_.down.base.defined() && (!swiglu || base == w_.gate.base.defined()), what,
            ": a shared base must be given for every matrix kind or none");
}

void LowRankExecutor::run(const ExpertRows& rows) {
  MOE_CHECK(rows.n_experts == E_ && rows.d_model == d_ && rows.d_ff == F_,
            "low-rank experts: called for a (E ", rows.n_experts, ", d ", rows.d_model, ", F ", rows.d_ff,
            ") layer, built for (", E_, ", ", d_, ", ", F_, ")");
  const int64_t M = rows.offsets[E_], R = w_.rank, d = d_, F = F_;
  if (M == 0) return;
  const bool swiglu = act_ == kernels::Activation::SwiGLU;
  const bool base = w_.up.base.defined();
  auto grow = [](std::vector<float>& v, int64_t n) {
    if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
  };
  grow(t_, M * R);
  grow(u_, M * F);
  grow(h_, M * F);
  if (swiglu) grow(g_, M * F);
  // With a base, X W̄ᵀ of gate and up once per token: (T, F) each.
  float* base_g = nullptr;
  float* base_u = nullptr;
  if (base) {
    grow(base_, 2 * rows.n_tokens * F);
    base_u = base_.data();
    plain(backend_, rows.n_tokens, F, d, rows.x, w_.up.base.data<float>(), base_u);
    if (swiglu) {
      base_g = base_.data() + rows.n_tokens * F;
      plain(backend_, rows.n_tokens, F, d, rows.x, w_.gate.base.data<float>(), base_g);
    }
  }

  // Rows [r0, r1) of experts [e0, e1) (one expert, or all of them): gate/up, activation, down. Each
  // product is a grouped GEMM over those experts.
  auto ffn = [&](int64_t e0, int64_t e1, const int32_t* offsets, int64_t r0, int64_t r1) {
    const int64_t m = r1 - r0, ne = e1 - e0;
    const int32_t* gather = rows.gather ? rows.gather + r0 : nullptr;
    const float* x = rows.gather ? rows.x : rows.x + r0 * d;
    float* t = t_.data() + r0 * R;
    // Y (m, F) = [the rows' tokens' base] + (X · Bᵀ) · Aᵀ
    auto project_in = [&](const LowRankMatrix& w, const float* per_token, float* Y) {
      float beta = 0;
      if (per_token) {
        for (int64_t p = 0; p < m; ++p) {
          const int64_t tok = gather ? gather[p] : r0 + p;
          std::memcpy(Y + p * F, per_token + tok * F, static_cast<size_t>(F) * sizeof(float));
        }
        beta = 1;
      }
      grouped(backend_, ne, R, d, offsets, x, d, gather, w.b.data<float>() + e0 * R * d, t, R, 0);
      grouped(backend_, ne, F, R, offsets, t, R, nullptr, w.a.data<float>() + e0 * F * R, Y, F, beta);
    };
    if (swiglu) project_in(w_.gate, base_g, g_.data() + r0 * F);  // (m, F)
    project_in(w_.up, base_u, u_.data() + r0 * F);                // (m, F)
    kernels::ActivationArgs<float> ac;
    ac.act = act_;
    ac.n = m * F;
    ac.a = swiglu ? g_.data() + r0 * F : u_.data() + r0 * F;
    ac.b = swiglu ? u_.data() + r0 * F : nullptr;
    float* h = h_.data() + r0 * F;
    ac.out = h;  // (m, F)
    kernels::activation<float>(backend_, ac);
    // out (m, d) = h · W̄_downᵀ (per row) + (h · B_downᵀ) · A_downᵀ
    float beta = 0;
    if (base) {
      plain(backend_, m, d, F, h, w_.down.base.data<float>(), rows.out + r0 * d);
      beta = 1;
    }
    grouped(backend_, ne, R, F, offsets, h, F, nullptr, w_.down.b.data<float>() + e0 * R * F, t, R, 0);
    grouped(backend_, ne, d, R, offsets, t, R, nullptr, w_.down.a.data<float>() + e0 * d * R,
            rows.out + r0 * d, d, beta);
  };

  // Many rows: every product over all experts at once, its tiles spread over the threads. Few rows
  // (decoding): one expert's whole FFN per work item, so a layer pays for one parallel region
  // instead of seven (measured: at batch 1 on 2 threads the per-product regions cost more than the
  // products themselves). Which path runs does not change the result: the same products, each
  // row's sums in the same order.
  if (M >= kRowsPerThread * num_threads()) {
    std::vector<int32_t> local(static_cast<size_t>(E_ + 1));
    for (int64_t e = 0; e <= E_; ++e) local[static_cast<size_t>(e)] = rows.offsets[e];
    ffn(0, E_, local.data(), 0, M);
    return;
  }
  std::vector<int64_t> active;
  for (int64_t e = 0; e < E_; ++e)
    if (rows.offsets[e + 1] > rows.offsets[e]) active.push_back(e);
  parallel_items(static_cast<int64_t>(active.size()), [&](int64_t i) {
    const int64_t e = active[static_cast<size_t>(i)];
    const int32_t r0 = rows.offsets[e], r1 = rows.offsets[e + 1];
    const int32_t offsets[2] = {0, r1 - r0};
    ffn(e, e + 1, offsets, r0, r1);
  });
}

}  // namespace moe
