// Low-rank experts (moe/model/low_rank.h, src/model/svd.h, moe/moe/low_rank_experts.h): the SVD against
// known constructions, exact compression of experts that are rank R (or base + rank R), the factored
// runner against the materialised model, the checkpoint format, and the errors.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "model/svd.h"
#include "model_testutil.h"
#include "moe/core/error.h"
#include "moe/core/parallel.h"
#include "moe/infer/expert_store.h"
#include "moe/model/low_rank.h"
#include "moe/model/safetensors.h"
#include "moe/model/transformer.h"
#include "train_testutil.h"

namespace moe::model {
namespace {

using LowRank = train::testing::TempDirTest;

std::vector<double> random_matrix(int64_t N, int64_t K, uint32_t seed) {
  std::mt19937 g(seed);
  std::normal_distribution<double> n(0.0, 1.0);
  std::vector<double> w(static_cast<size_t>(N * K));
  for (double& x : w) x = n(g);
  return w;
}

// (m, n) with orthonormal columns: Gram–Schmidt (twice) of a random matrix, m >= n.
std::vector<double> orthonormal(int64_t m, int64_t n, uint32_t seed) {
  std::vector<double> q = random_matrix(m, n, seed);
  for (int64_t j = 0; j < n; ++j)
    for (int pass = 0; pass < 2; ++pass) {
      for (int64_t i = 0; i < j; ++i) {
        double d = 0;
        for (int64_t k = 0; k < m; ++k) d += q[k * n + i] * q[k * n + j];
        for (int64_t k = 0; k < m; ++k) q[k * n + j] -= d * q[k * n + i];
      }
      double s = 0;
      for (int64_t k = 0; k < m; ++k) s += q[k * n + j] * q[k * n + j];
      for (int64_t k = 0; k < m; ++k) q[k * n + j] /= std::sqrt(s);
    }
  return q;
}

// W (N, K) = U diag(s) V^T with random orthonormal U (N, n), V (K, n).
std::vector<double> with_singular_values(int64_t N, int64_t K, const std::vector<double>& s, uint32_t seed) {
  const int64_t n = static_cast<int64_t>(s.size());
  const std::vector<double> U = orthonormal(N, n, seed), V = orthonormal(K, n, seed + 1);
  std::vector<double> w(static_cast<size_t>(N * K), 0.0);
  for (int64_t i = 0; i < N; ++i)
    for (int64_t k = 0; k < K; ++k)
      for (int64_t j = 0; j < n; ++j) w[i * K + k] += U[i * n + j] * s[j] * V[k * n + j];
  return w;
}

double frob(const std::vector<double>& a) {
  double s = 0;
  for (double x : a) s += x * x;
  return std::sqrt(s);
}

TEST(Svd, ReconstructsRandomMatricesAtFullRank) {
  for (auto [N, K] : {std::pair<int64_t, int64_t>{7, 5}, {5, 7}, {16, 16}, {40, 3}, {1, 6}}) {
    const std::vector<double> w = random_matrix(N, K, static_cast<uint32_t>(N * 100 + K));
    const svd::ThinSvd s = svd::thin_svd(w.data(), N, K);
    const int64_t n = std::min(N, K);
    ASSERT_EQ(s.n, n);
    std::vector<double> diff = w;
    for (int64_t i = 0; i < N; ++i)
      for (int64_t k = 0; k < K; ++k)
        for (int64_t j = 0; j < n; ++j) diff[i * K + k] -= s.U[i * n + j] * s.S[j] * s.V[k * n + j];
    EXPECT_LT(frob(diff), 1e-11 * frob(w)) << N << "x" << K;
    for (int64_t j = 1; j < n; ++j) EXPECT_GE(s.S[j - 1], s.S[j]);
    // Full-rank truncation is W itself, in double and through f32 factors alike.
    std::vector<double> A, B;
    svd::truncated_factors(w.data(), N, K, n, A, B);
    double err = 0, err32 = 0;
    for (int64_t i = 0; i < N; ++i)
      for (int64_t k = 0; k < K; ++k) {
        double ab = 0, ab32 = 0;
        for (int64_t j = 0; j < n; ++j) {
          ab += A[i * n + j] * B[j * K + k];
          ab32 += static_cast<double>(static_cast<float>(A[i * n + j])) * static_cast<float>(B[j * K + k]);
        }
        err += (w[i * K + k] - ab) * (w[i * K + k] - ab);
        err32 += (w[i * K + k] - ab32) * (w[i * K + k] - ab32);
      }
    EXPECT_LT(std::sqrt(err), 1e-11 * frob(w));
    EXPECT_LT(std::sqrt(err32), 1e-6 * frob(w));  // f32 rounding of the factors
  }
}

TEST(Svd, SingularValuesOfAKnownConstruction) {
  const std::vector<double> s = {10, 5, 3, 1, 0.5, 0.1};
  for (auto [N, K] : {std::pair<int64_t, int64_t>{12, 6}, {6, 12}, {9, 8}}) {
    std::vector<double> sv = s;
    const int64_t n = std::min(N, K);
    sv.resize(static_cast<size_t>(std::min<int64_t>(n, 6)));
    const std::vector<double> w = with_singular_values(N, K, sv, 7);
    const svd::ThinSvd d = svd::thin_svd(w.data(), N, K);
    for (int64_t j = 0; j < n; ++j) {
      const double want = j < static_cast<int64_t>(sv.size()) ? sv[j] : 0.0;
      // A zero singular value comes out as the square root of the Gram matrix's rounding, about
      // sqrt(eps)·σ_max = 1.5e-7 here; the others to double rounding.
      EXPECT_NEAR(d.S[j], want, want > 0 ? 1e-10 : 1e-6) << N << "x" << K << " sigma " << j;
    }
    // Best rank 3: the error is the rest of the spectrum (Eckart–Young).
    std::vector<double> A, B, got;
    svd::truncated_factors(w.data(), N, K, 3, A, B, &got);
    double err = 0, want = 0;
    for (size_t j = 3; j < sv.size(); ++j) want += sv[j] * sv[j];
    for (int64_t i = 0; i < N; ++i)
      for (int64_t k = 0; k < K; ++k) {
        double ab = 0;
        for (int64_t j = 0; j < 3; ++j) ab += A[i * 3 + j] * B[j * K + k];
        err += (w[i * K + k] - ab) * (w[i * K + k] - ab);
      }
    EXPECT_NEAR(err, want, 1e-10);
    EXPECT_NEAR(got[0], 10.0, 1e-10);
  }
}

TEST(Svd, RankOutsideTheMatrixIsAnError) {
  const std::vector<double> w = random_matrix(4, 3, 1);
  std::vector<double> A, B;
  EXPECT_THROW(svd::truncated_factors(w.data(), 4, 3, 4, A, B), Error);
  EXPECT_THROW(svd::truncated_factors(w.data(), 4, 3, 0, A, B), Error);
}

// ---- the runner on its own ----

Tensor random_tensor(const Shape& shape, uint32_t seed) {
  std::vector<double> v = random_matrix(shape_numel(shape), 1, seed);
  return Tensor::from(v, shape, DType::F32);
}

// LowRankExecutor against plain loops over the materialised W_e = W̄ + A_e·B_e (double sums), on rows
// gathered from tokens, with one expert left without rows; with 1 thread the products run over all
// experts at once, with 8 one expert per work item (few rows per thread): both paths.
// Σ x·xᵀ (K, K) of the rows of X (n, K), and ‖(W − A·B)·xᵀ‖² summed over them.
std::vector<double> gram_of(const std::vector<double>& X, int64_t n, int64_t K) {
  std::vector<double> g(static_cast<size_t>(K * K), 0.0);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t i = 0; i < K; ++i)
      for (int64_t j = 0; j < K; ++j) g[i * K + j] += X[r * K + i] * X[r * K + j];
  return g;
}
double output_error(const std::vector<double>& w, const std::vector<double>& A, const std::vector<double>& B,
                    const std::vector<double>& X, int64_t n, int64_t N, int64_t K, int64_t R) {
  double e = 0;
  for (int64_t r = 0; r < n; ++r)
    for (int64_t i = 0; i < N; ++i) {
      double y = 0, yh = 0;
      for (int64_t k = 0; k < K; ++k) {
        double ab = 0;
        for (int64_t q = 0; q < R; ++q) ab += A[i * R + q] * B[q * K + k];
        y += w[i * K + k] * X[r * K + k];
        yh += ab * X[r * K + k];
      }
      e += (y - yh) * (y - yh);
    }
  return e;
}

TEST(LowRankWhitened, IsotropicInputsGiveThePlainTruncatedSvd) {
  const int64_t N = 12, K = 9, R = 4;
  const std::vector<double> w = random_matrix(N, K, 7);
  std::vector<double> gram(static_cast<size_t>(K * K), 0.0);
  for (int64_t i = 0; i < K; ++i) gram[i * K + i] = 50.0;  // 50 rows of E[x·xᵀ] = I
  std::vector<double> A, B, Ap, Bp;
  factors_whitened(w.data(), N, K, R, gram, 50, 0.01, A, B);
  svd::truncated_factors(w.data(), N, K, R, Ap, Bp);
  for (int64_t i = 0; i < N; ++i)
    for (int64_t k = 0; k < K; ++k) {
      double ab = 0, abp = 0;
      for (int64_t q = 0; q < R; ++q) ab += A[i * R + q] * B[q * K + k], abp += Ap[i * R + q] * Bp[q * K + k];
      EXPECT_NEAR(ab, abp, 1e-10) << i << ", " << k;
    }
}

TEST(LowRankWhitened, InputsInASubspaceAreReproducedExactly) {
  // Inputs span 3 of 10 dimensions: a rank-3 Ŵ fitted to them gives W·x back for every such x,
  // where the plain rank-3 truncation of a full-rank W does not.
  const int64_t N = 8, K = 10, R = 3, n = 40;
  const std::vector<double> w = random_matrix(N, K, 11);
  const std::vector<double> basis = orthonormal(K, 3, 12), coef = random_matrix(n, 3, 13);
  std::vector<double> X(static_cast<size_t>(n * K), 0.0);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t k = 0; k < K; ++k)
      for (int64_t j = 0; j < 3; ++j) X[r * K + k] += coef[r * 3 + j] * basis[k * 3 + j];
  std::vector<double> A, B, Ap, Bp;
  const double rel = factors_whitened(w.data(), N, K, R, gram_of(X, n, K), n, 1e-10, A, B);
  svd::truncated_factors(w.data(), N, K, R, Ap, Bp);
  double y2 = 0;
  for (int64_t r = 0; r < n; ++r)
    for (int64_t i = 0; i < N; ++i) {
      double y = 0;
      for (int64_t k = 0; k < K; ++k) y += w[i * K + k] * X[r * K + k];
      y2 += y * y;
    }
  EXPECT_LT(output_error(w, A, B, X, n, N, K, R), 1e-12 * y2);
  EXPECT_GT(output_error(w, Ap, Bp, X, n, N, K, R), 1e-2 * y2);
  EXPECT_LT(rel, 1e-4);
}

TEST(LowRankWhitened, NoWorseThanPlainOnTheCalibrationInputs) {
  // Anisotropic inputs (scales 1 .. 10^-2 over the dimensions): the whitened factors' error on them
  // is at most the plain truncation's, for every rank (Eckart–Young in the whitened norm; the 1e-6
  // damping costs next to nothing).
  const int64_t N = 16, K = 12, n = 200;
  const std::vector<double> w = random_matrix(N, K, 21);
  std::vector<double> X = random_matrix(n, K, 22);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t k = 0; k < K; ++k) X[r * K + k] *= std::pow(10.0, -2.0 * static_cast<double>(k) / (K - 1));
  const std::vector<double> g = gram_of(X, n, K);
  for (int64_t R = 1; R < K; ++R) {
    std::vector<double> A, B, Ap, Bp;
    factors_whitened(w.data(), N, K, R, g, n, 1e-6, A, B);
    svd::truncated_factors(w.data(), N, K, R, Ap, Bp);
    EXPECT_LE(output_error(w, A, B, X, n, N, K, R), output_error(w, Ap, Bp, X, n, N, K, R) * (1 + 1e-6))
        << "rank " << R;
  }
}

TEST(LowRankWhitened, BadMomentsAreErrors) {
  const std::vector<double> w = random_matrix(4, 3, 1);
  std::vector<double> A, B;
  EXPECT_THROW(factors_whitened(w.data(), 4, 3, 2, std::vector<double>(9, 0.0), 0, 0.01, A, B), Error);
  EXPECT_THROW(factors_whitened(w.data(), 4, 3, 2, std::vector<double>(4, 0.0), 5, 0.01, A, B), Error);
  EXPECT_THROW(factors_whitened(w.data(), 4, 3, 2, std::vector<double>(9, 1.0), 5, 0.0, A, B), Error);
}

TEST(LowRankRunner, MatchesMaterialisedLoopsOnBothPaths) {
  MoEConfig c;
  c.d_model = 16, c.d_ff = 24, c.n_experts = 4;
  c.router.top_k = 2;
  const int64_t E = 4, d = 16, F = 24, R = 3, T = 150;
  for (bool base : {false, true}) {
    LowRankExperts w;
    w.rank = R;
    uint32_t seed = 40;
    for (LowRankMatrix* m : {&w.gate, &w.up, &w.down}) {
      const int64_t N = m == &w.down ? d : F, K = m == &w.down ? F : d;
      m->a = random_tensor({E, N, R}, seed++);
      m->b = random_tensor({R * E, K}, seed++).reshape({E, R, K});
      if (base) m->base = random_tensor({N, K}, seed++);
    }
    LowRankExecutor ex(w, c, "test layer");
    const Tensor x = random_tensor({T, d}, 7);
    // Sorted rows: expert 0 gets tokens 0..99, expert 1 none, expert 2 tokens 100..149, expert 3 every
    // third token (M = 200).
    std::vector<int32_t> gather, offsets = {0};
    for (int32_t t = 0; t < 100; ++t) gather.push_back(t);
    offsets.push_back(100);
    offsets.push_back(100);
    for (int32_t t = 100; t < 150; ++t) gather.push_back(t);
    offsets.push_back(150);
    for (int32_t t = 0; t < 150; t += 3) gather.push_back(t);
    offsets.push_back(static_cast<int32_t>(gather.size()));
    const int64_t M = static_cast<int64_t>(gather.size());
    // Reference.
    auto W = [&](const LowRankMatrix& m, int64_t e, int64_t i, int64_t j, int64_t K) {
      double s = m.base.defined() ? m.base.data<float>()[i * K + j] : 0.0;
      for (int64_t q = 0; q < R; ++q)
        s += static_cast<double>(m.a.data<float>()[(e * (m.a.size(1)) + i) * R + q]) *
             m.b.data<float>()[(e * R + q) * K + j];
      return s;
    };
    std::vector<double> want(static_cast<size_t>(M * d));
    for (int64_t e = 0; e < E; ++e)
      for (int64_t p = offsets[e]; p < offsets[e + 1]; ++p) {
        const float* xr = x.data<float>() + gather[p] * d;
        std::vector<double> h(static_cast<size_t>(F));
        for (int64_t f = 0; f < F; ++f) {
          double g = 0, u = 0;
          for (int64_t k = 0; k < d; ++k)
            g += W(w.gate, e, f, k, d) * xr[k], u += W(w.up, e, f, k, d) * xr[k];
          h[f] = g / (1.0 + std::exp(-g)) * u;
        }
        for (int64_t i = 0; i < d; ++i) {
          double y = 0;
          for (int64_t f = 0; f < F; ++f) y += W(w.down, e, i, f, F) * h[f];
          want[p * d + i] = y;
        }
      }
    std::vector<std::vector<float>> got;
    for (int threads : {1, 8}) {
      const int saved = num_threads();
      set_num_threads(threads);
      std::vector<float> out(static_cast<size_t>(M * d), std::nanf(""));
      ExpertRows rows;
      rows.n_experts = E, rows.d_model = d, rows.d_ff = F;
      rows.offsets = offsets.data();
      rows.x = x.data<float>(), rows.n_tokens = T;
      rows.gather = gather.data();
      rows.out = out.data();
      ex.run(rows);
      set_num_threads(saved);
      double scale = 0, err = 0;
      for (int64_t i = 0; i < M * d; ++i) {
        scale = std::max(scale, std::fabs(want[i]));
        ASSERT_FALSE(std::isnan(out[i])) << i;
        err = std::max(err, std::fabs(out[i] - want[i]));
      }
      EXPECT_LT(err, 1e-5 * scale) << "base " << base << " threads " << threads;
      got.push_back(out);
    }
    double paths = 0;
    for (int64_t i = 0; i < M * d; ++i)
      paths = std::max(paths, static_cast<double>(std::fabs(got[0][i] - got[1][i])));
    EXPECT_EQ(paths, 0.0) << "the two paths differ";
  }
}

// ---- checkpoints ----

// A mixtral of 4 MoE layers x 8 experts (d 32, F 64) saved in `dir`; `edit` may change its tensors.
template <typename Edit>
ModelConfig save_model(const std::string& dir, const ModelConfig& c, Edit&& edit) {
  Transformer m(c);
  m.init_params(3);
  save_pretrained(m, dir);
  std::map<std::string, Tensor> sd = m.hf_state_dict();
  edit(sd);
  save_safetensors(dir + "/model.safetensors", sd, {{"format", "pt"}});
  return c;
}

// Expert matrices replaced by random rank-R products (scaled by 0.1), f32. With `base`: a random base
// per layer and kind plus rank-R deltas that sum to zero over the experts (expert 2j+1's delta is the
// negative of expert 2j's; E even), so the experts' mean is the base and every W_e − W̄ has rank R.
void make_low_rank_experts(std::map<std::string, Tensor>& sd, const ModelConfig& c, int64_t R, bool base) {
  uint32_t seed = 11;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    if (!c.is_moe_layer(l)) continue;
    for (int k = 0; k < 3; ++k) {
      const Shape shape = sd.at(expert_weight_names(c, l, 0)[k]).shape();
      const int64_t N = shape[0], K = shape[1];
      const std::vector<double> b = random_matrix(N, K, seed++);
      std::vector<double> delta;
      for (int64_t e = 0; e < c.num_experts; ++e) {
        if (!base || e % 2 == 0) {
          const std::vector<double> a = random_matrix(N, R, seed++), bb = random_matrix(R, K, seed++);
          delta.assign(static_cast<size_t>(N * K), 0.0);
          for (int64_t i = 0; i < N; ++i)
            for (int64_t j = 0; j < K; ++j)
              for (int64_t q = 0; q < R; ++q) delta[i * K + j] += 0.1 * a[i * R + q] * bb[q * K + j];
        } else {
          for (double& x : delta) x = -x;
        }
        std::vector<double> w(static_cast<size_t>(N * K));
        for (int64_t i = 0; i < N * K; ++i) w[i] = (base ? b[i] : 0.0) + delta[i];
        sd[expert_weight_names(c, l, e)[k]] = Tensor::from(w, {N, K}, DType::F32);
      }
    }
  }
}

double max_rel_diff(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(a.shape(), b.shape());
  const Tensor x = a.to(DType::F64).contiguous(), y = b.to(DType::F64).contiguous();
  double m = 0, scale = 0;
  for (int64_t i = 0; i < x.numel(); ++i) scale = std::max(scale, std::fabs(x.data<double>()[i]));
  for (int64_t i = 0; i < x.numel(); ++i)
    m = std::max(m, std::fabs(x.data<double>()[i] - y.data<double>()[i]) / std::max(scale, 1e-30));
  return m;
}

// Every expert weight that the compressed checkpoint materialises against the source's.
double max_materialised_error(const std::string& src, const std::string& dst, const ModelConfig& c) {
  const std::map<std::string, Tensor> want = load_hf_tensors(src);
  const TensorSource m = materializing_source(checkpoint_source(dst), c, read_low_rank_config(dst));
  double worst = 0;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    if (!c.is_moe_layer(l)) continue;
    for (int64_t e = 0; e < c.num_experts; ++e)
      for (const std::string& n : expert_weight_names(c, l, e))
        worst = std::max(worst, max_rel_diff(want.at(n), m.load(n)));
  }
  return worst;
}

TEST_F(LowRank, RankRExpertsCompressExactly) {
  const ModelConfig c = testing::offload_config();
  save_model(file("src"), c, [&](auto& sd) { make_low_rank_experts(sd, c, 3, false); });
  CompressOptions o;
  o.rank = 3;
  const CompressResult r = compress_checkpoint(file("src"), file("lr"), o);
  EXPECT_EQ(r.rank, 3);
  EXPECT_EQ(r.moe_layers, 4);
  EXPECT_EQ(r.matrices, 4 * 8 * 3);
  // Exact up to the f32 rounding of the stored weights (2^-24 ≈ 6e-8 per element), which is not rank 3.
  EXPECT_LT(r.rel_error_max, 1e-7);
  EXPECT_NEAR(r.energy_kept_mean, 1.0, 1e-12);
  EXPECT_LT(max_materialised_error(file("src"), file("lr"), c), 1e-5);
}

TEST_F(LowRank, SharedBasePlusRankRDeltasCompressExactly) {
  const ModelConfig c = testing::offload_config();
  save_model(file("src"), c, [&](auto& sd) { make_low_rank_experts(sd, c, 2, true); });
  CompressOptions o;
  o.rank = 2, o.shared_base = true;
  const CompressResult r = compress_checkpoint(file("src"), file("lr"), o);
  EXPECT_LT(r.rel_error_max, 1e-7);  // f32 rounding of the stored weights, as above
  EXPECT_EQ(r.expert_params_after, 4 * (3 * 64 * 32 + 8 * 3 * 2 * (64 + 32)));
  EXPECT_LT(max_materialised_error(file("src"), file("lr"), c), 1e-5);
  // Without the base the same experts are rank 2 + 1 (base): rank 2 is not exact.
  CompressOptions plain;
  plain.rank = 2;
  EXPECT_GT(compress_checkpoint(file("src"), file("lr_plain"), plain).rel_error_mean, 1e-2);
}

// Logits of the factored runner and of the materialised model, from one compressed checkpoint.
void expect_same_logits(const std::string& dir, const ModelConfig& c) {
  infer::InferenceLoadOptions f, m;
  f.low_rank = "factored", m.low_rank = "materialise";
  const infer::InferenceModel fm = infer::load_inference_model(dir, f),
                              mm = infer::load_inference_model(dir, m);
  ASSERT_TRUE(fm.model->external_experts());
  ASSERT_FALSE(mm.model->external_experts());
  const std::vector<int32_t> toks = testing::random_tokens(2 * 13, c.vocab_size, 5);
  const Tensor a = fm.model->logits(toks.data(), 2, 13), b = mm.model->logits(toks.data(), 2, 13);
  EXPECT_LT(max_rel_diff(a, b), 2e-5);
  // Incremental decoding too (one token at a time through the runner).
  KVCache ca = fm.model->new_cache(8), cb = mm.model->new_cache(8);
  for (int i = 0; i < 5; ++i)
    EXPECT_LT(max_rel_diff(fm.model->decode(ca, &toks[i], 1), mm.model->decode(cb, &toks[i], 1)), 2e-5);
}

TEST_F(LowRank, FactoredRunnerMatchesMaterialisedModel) {
  const ModelConfig c = testing::offload_config();
  save_model(file("src"), c, [](auto&) {});
  for (bool base : {false, true}) {
    CompressOptions o;
    o.rank = 5, o.shared_base = base, o.overwrite = true;
    compress_checkpoint(file("src"), file("lr"), o);
    expect_same_logits(file("lr"), c);
  }
  // qwen2_moe: gate_proj/up_proj/down_proj names, a shared expert and a dense layer.
  const ModelConfig q = testing::tiny_config(Arch::Qwen2Moe);
  save_model(file("q"), q, [](auto&) {});
  CompressOptions o;
  o.rank = 2, o.shared_base = true;
  compress_checkpoint(file("q"), file("qlr"), o);
  expect_same_logits(file("qlr"), q);
}

TEST_F(LowRank, AutoChoosesByMultiplyAdds) {
  const ModelConfig c = testing::offload_config();  // d 32, F 64, top-2: 3·64·32 = 6144 per row materialised
  const MoEConfig mc = c.moe_layer_config();
  EXPECT_EQ(dense_flops_per_row(mc), 6144.0);
  EXPECT_EQ(low_rank_flops_per_row(mc, 5, false), 3.0 * 5 * 96);  // 1440
  EXPECT_EQ(low_rank_flops_per_row(mc, 5, true),
            3.0 * 5 * 96 + 2048 + 2.0 * 2048 / 2);  // + down base, gate/up per token
  save_model(file("src"), c, [](auto&) {});
  for (bool base : {false, true}) {
    CompressOptions o;
    o.rank = 5, o.shared_base = base, o.overwrite = true;
    compress_checkpoint(file("src"), file("lr"), o);
    EXPECT_EQ(factored_is_faster(c, 0, read_low_rank_config(file("lr"))), !base);
    const infer::InferenceModel m = infer::load_inference_model(file("lr"), {});
    EXPECT_EQ(m.model->external_experts(), !base);
  }
}

TEST_F(LowRank, CheckpointFormatRoundTrips) {
  const ModelConfig c = testing::offload_config();
  save_model(file("src"), c, [](auto&) {});
  std::ofstream(file("src/tokenizer.json")) << "{}";
  CompressOptions o;
  o.ratio = 0.5, o.shared_base = true;
  const CompressResult r = compress_checkpoint(file("src"), file("lr"), o);
  // R = floor((0.5·8 − 1)·3·64·32 / (8·3·96)) = 8
  EXPECT_EQ(r.rank, rank_for_ratio(c, 0.5, true));
  EXPECT_EQ(r.rank, 8);
  EXPECT_EQ(rank_for_ratio(c, 0.5, false), 10);  // floor(0.5·64·32/96)
  EXPECT_NEAR(static_cast<double>(r.expert_params_after) / static_cast<double>(r.expert_params_before), 0.5,
              0.05);
  const LowRankConfig lrc = read_low_rank_config(file("lr"));
  EXPECT_EQ(lrc.rank, 8);
  EXPECT_TRUE(lrc.shared_base);
  EXPECT_EQ(read_low_rank_config(file("src")).rank, 0);
  EXPECT_TRUE(std::filesystem::exists(file("lr/tokenizer.json")));
  const std::map<std::string, Tensor> t = load_hf_tensors(file("lr"));
  const std::string w1 = expert_weight_names(c, 1, 3)[0];  // ...experts.3.w1.weight, (64, 32)
  EXPECT_EQ(t.count(w1), 0u);
  EXPECT_EQ(t.at(low_rank_name(w1, "lr_a")).shape(), Shape({64, 8}));
  EXPECT_EQ(t.at(low_rank_name(w1, "lr_b")).shape(), Shape({8, 32}));
  EXPECT_EQ(t.at("model.layers.1.block_sparse_moe.experts.base.w2.weight").shape(), Shape({32, 64}));
  EXPECT_EQ(low_rank_base_name(c, 1, 2), "model.layers.1.block_sparse_moe.experts.base.w2.weight");
  // Everything that is not an expert weight is the source's, bit for bit.
  const std::map<std::string, Tensor> s = load_hf_tensors(file("src"));
  for (const auto& [n, v] : s) {
    if (n.find(".experts.") != std::string::npos) continue;
    ASSERT_TRUE(t.count(n)) << n;
    EXPECT_EQ(max_rel_diff(v, t.at(n)), 0.0) << n;
  }
  // The materialised weights are the best fits the result reports.
  EXPECT_LT(max_materialised_error(file("src"), file("lr"), c), 1.0);
}

template <typename F>
void expect_error(F&& fn, const std::vector<std::string>& parts) {
  try {
    fn();
    ADD_FAILURE() << "no moe::Error (expected '" << parts[0] << "')";
  } catch (const Error& e) {
    for (const auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
  }
}

TEST_F(LowRank, BadInputIsAClearError) {
  const ModelConfig c = testing::offload_config();
  save_model(file("src"), c, [](auto&) {});
  CompressOptions o;
  o.rank = 33;  // min(64, 32) = 32
  expect_error([&] { compress_checkpoint(file("src"), file("x"), o); }, {"rank 33", "min(N, K) = 32"});
  for (double ratio : {0.0, 1.0, 1.5, -0.2}) {
    CompressOptions r;
    r.ratio = ratio;
    if (ratio <= 0) {
      expect_error([&] { rank_for_ratio(c, ratio, false); }, {"(0, 1)"});
    } else {
      expect_error([&] { compress_checkpoint(file("src"), file("x"), r); }, {"(0, 1)"});
    }
  }
  expect_error([&] { rank_for_ratio(c, 0.1, true); }, {"shared base"});  // 0.1·8 − 1 < 0
  EXPECT_FALSE(std::filesystem::exists(file("x/model.safetensors")));
  // A model without MoE layers.
  ModelConfig dense = testing::tiny_config(Arch::Qwen2Moe);
  dense.mlp_only_layers = {0, 1};
  save_model(file("dense"), dense, [](auto&) {});
  CompressOptions d;
  d.rank = 1;
  expect_error([&] { compress_checkpoint(file("dense"), file("x"), d); }, {"no MoE layers"});

  CompressOptions ok;
  ok.rank = 4;
  compress_checkpoint(file("src"), file("lr"), ok);
  const std::string w = expert_weight_names(c, 2, 5)[1];
  // A factor of the wrong shape: named, with its file, whichever way the model is loaded.
  std::map<std::string, Tensor> t = load_hf_tensors(file("lr"));
  t[low_rank_name(w, "lr_b")] = Tensor::zeros({3, 32});
  std::filesystem::create_directories(file("bad"));
  std::filesystem::copy_file(file("lr/config.json"), file("bad/config.json"));
  save_safetensors(file("bad/model.safetensors"), t, {{"format", "pt"}});
  for (const char* mode : {"factored", "materialise"}) {
    infer::InferenceLoadOptions lo;
    lo.low_rank = mode;
    expect_error([&] { infer::load_inference_model(file("bad"), lo); },
                 {low_rank_name(w, "lr_b"), "expected shape (4, 32)", "got (3, 32)"});
  }
  // A missing factor.
  t.erase(low_rank_name(w, "lr_b"));
  save_safetensors(file("bad/model.safetensors"), t, {{"format", "pt"}});
  expect_error([&] { infer::load_inference_model(file("bad"), {}); },
               {"missing tensor", low_rank_name(w, "lr_b")});
  // A truncated file.
  std::filesystem::copy_file(file("lr/model.safetensors"), file("bad/model.safetensors"),
                             std::filesystem::copy_options::overwrite_existing);
  std::filesystem::resize_file(file("bad/model.safetensors"),
                               std::filesystem::file_size(file("bad/model.safetensors")) - 100);
  expect_error([&] { infer::load_inference_model(file("bad"), {}); }, {"model.safetensors"});
  // Offloading a low-rank checkpoint is refused.
  infer::InferenceLoadOptions off;
  off.offload = true;
  expect_error([&] { infer::load_inference_model(file("lr"), off); }, {"low-rank", "offload"});
  // A malformed low_rank_config.
  {
    std::ifstream in(file("lr/config.json"));
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const size_t at = text.find("\"rank\": 4");
    ASSERT_NE(at, std::string::npos) << text;
    text.replace(at, 9, "\"rank\": 0");
    std::ofstream(file("lr/config.json")) << text;
  }
  expect_error([&] { read_low_rank_config(file("lr")); }, {"low_rank_config.rank"});
}

}  // namespace
}  // namespace moe::model
