// The symmetric eigen-solver (Householder tridiagonalisation, implicit QL) and the SVD built on it
// (src/model/svd.h).
#include "model/svd.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "moe/core/error.h"

namespace moe::model::svd {

namespace {

// The Gram matrix of the shorter side of w (N, K): g (n, n) = W^T W when cols, else W W^T.
std::vector<double> gram(const double* w, int64_t N, int64_t K, bool cols) {
  const int64_t n = cols ? K : N;
  std::vector<double> g(static_cast<size_t>(n * n), 0.0);
  if (cols) {
    for (int64_t i = 0; i < N; ++i) {  // g += w_i^T w_i, rows of w
      const double* wi = w + i * K;
      for (int64_t a = 0; a < K; ++a) {
        const double x = wi[a];
        if (x == 0.0) continue;
        double* ga = g.data() + a * K;
        for (int64_t b = a; b < K; ++b) ga[b] += x * wi[b];
      }
    }
  } else {
    for (int64_t a = 0; a < N; ++a)
      for (int64_t b = a; b < N; ++b) {
        const double* wa = w + a * K;
        const double* wb = w + b * K;
        double s = 0.0;
        for (int64_t j = 0; j < K; ++j) s += wa[j] * wb[j];
        g[static_cast<size_t>(a * N + b)] = s;
      }
  }
  for (int64_t a = 0; a < n; ++a)
    for (int64_t b = 0; b < a; ++b) g[static_cast<size_t>(a * n + b)] = g[static_cast<size_t>(b * n + a)];
  return g;
}

// Householder reduction to tridiagonal form, A = Q·T·Qᵀ: d (n) the diagonal of T, e (n) its
// subdiagonal (e[i] couples i and i + 1; e[n-1] = 0), qt (n, n) = Qᵀ. a is overwritten.
void tridiagonalize(std::vector<double>& a, size_t n, std::vector<double>& d, std::vector<double>& e,
                    std::vector<double>& qt) {
  qt.assign(n * n, 0.0);
  for (size_t i = 0; i < n; ++i) qt[i * n + i] = 1.0;
  std::vector<double> v(n), p(n), u(n);
  for (size_t k = 0; k + 2 < n; ++k) {
    // v: the reflector H = I − 2vvᵀ (on indices k+1..n-1) that maps column k below the diagonal to
    // (alpha, 0, ..., 0).
    const size_t m = n - k - 1, o = k + 1;
    double norm = 0.0;
    for (size_t i = 0; i < m; ++i) norm += a[(o + i) * n + k] * a[(o + i) * n + k];
    norm = std::sqrt(norm);
    if (norm == 0.0) continue;
    const double x0 = a[o * n + k];
    const double alpha = x0 > 0 ? -norm : norm;
    for (size_t i = 0; i < m; ++i) v[i] = a[(o + i) * n + k];
    v[0] -= alpha;
    double vn = 0.0;
    for (size_t i = 0; i < m; ++i) vn += v[i] * v[i];
    vn = std::sqrt(vn);
    if (vn == 0.0) continue;
    for (size_t i = 0; i < m; ++i) v[i] /= vn;
    // Trailing block S <- H S H = S − 2 v wᵀ − 2 w vᵀ with p = S v, w = p − (vᵀp) v.
    double vp = 0.0;
    for (size_t i = 0; i < m; ++i) {
      const double* row = a.data() + (o + i) * n + o;
      double acc = 0.0;
      for (size_t j = 0; j < m; ++j) acc += row[j] * v[j];
      p[i] = acc;
      vp += v[i] * acc;
    }
    for (size_t i = 0; i < m; ++i) p[i] -= vp * v[i];  // w
    for (size_t i = 0; i < m; ++i) {
      double* row = a.data() + (o + i) * n + o;
      const double vi = 2.0 * v[i], wi = 2.0 * p[i];
      for (size_t j = 0; j < m; ++j) row[j] -= vi * p[j] + wi * v[j];
    }
    for (size_t i = 0; i < m; ++i) a[(o + i) * n + k] = a[k * n + o + i] = 0.0;
    a[o * n + k] = a[k * n + o] = alpha;
    // Qᵀ <- H Qᵀ: rows o.. of Qᵀ minus 2 v (vᵀ Qᵀ[o.., :]).
    std::fill(u.begin(), u.end(), 0.0);
    for (size_t i = 0; i < m; ++i) {
      const double* row = qt.data() + (o + i) * n;
      for (size_t j = 0; j < n; ++j) u[j] += v[i] * row[j];
    }
    for (size_t i = 0; i < m; ++i) {
      double* row = qt.data() + (o + i) * n;
      const double vi = 2.0 * v[i];
      for (size_t j = 0; j < n; ++j) row[j] -= vi * u[j];
    }
  }
  d.assign(n, 0.0);
  e.assign(n, 0.0);
  for (size_t i = 0; i < n; ++i) d[i] = a[i * n + i];
  for (size_t i = 0; i + 1 < n; ++i) e[i] = a[(i + 1) * n + i];
}

// Eigenvalues of the tridiagonal (d, e) by QL iterations with implicit Wilkinson-style shifts; each
// plane rotation of rows i, i+1 is applied to zt (n, n), whose row i ends as the eigenvector of d[i].
void tridiagonal_ql(std::vector<double>& d, std::vector<double>& e, std::vector<double>& zt, size_t n) {
  for (size_t l = 0; l < n; ++l) {
    for (int iter = 0;; ++iter) {
      size_t m = l;
      for (; m + 1 < n; ++m) {  // the first negligible coupling at or after l
        const double dd = std::fabs(d[m]) + std::fabs(d[m + 1]);
        if (std::fabs(e[m]) <= 1e-300 || std::fabs(e[m]) + dd == dd) break;
      }
      if (m == l) break;
      MOE_CHECK(iter < 200, "svd: the eigen-solver did not converge (tridiagonal QL, n = ", n, ")");
      // Shift: the eigenvalue of the leading 2x2 block nearer d[l].
      double g = (d[l + 1] - d[l]) / (2.0 * e[l]);
      double r = std::hypot(g, 1.0);
      g = d[m] - d[l] + e[l] / (g + (g >= 0 ? r : -r));
      double s = 1.0, c = 1.0, p = 0.0;
      bool deflated = false;
      for (size_t i = m; i-- > l;) {  // chase the bulge from m-1 up to l
        const double f = s * e[i], b = c * e[i];
        r = std::hypot(f, g);
        e[i + 1] = r;
        if (r == 0.0) {  // an exact split: restart on the smaller block
          d[i + 1] -= p;
          e[m] = 0.0;
          deflated = true;
          break;
        }
        s = f / r;
        c = g / r;
        g = d[i + 1] - p;
        r = (d[i] - g) * s + 2.0 * c * b;
        p = s * r;
        d[i + 1] = g + p;
        g = c * r - b;
        double* zi = zt.data() + i * n;
        double* zj = zt.data() + (i + 1) * n;
        for (size_t k = 0; k < n; ++k) {
          const double x = zj[k];
          zj[k] = s * zi[k] + c * x;
          zi[k] = c * zi[k] - s * x;
        }
      }
      if (deflated) continue;
      d[l] -= p;
      e[l] = g;
      e[m] = 0.0;
    }
  }
}

}  // namespace

void symmetric_eigen(std::vector<double>& a, int64_t n, std::vector<double>& evals,
                     std::vector<double>& evecs) {
  MOE_CHECK(n >= 1 && static_cast<int64_t>(a.size()) == n * n, "symmetric_eigen: expected an (", n, ", ", n,
            ") matrix, got ", a.size(), " values");
  const size_t nn = static_cast<size_t>(n);
  std::vector<double> d, e, zt;
  tridiagonalize(a, nn, d, e, zt);
  tridiagonal_ql(d, e, zt, nn);
  std::vector<size_t> order(nn);
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t x, size_t y) { return d[x] > d[y]; });
  evals.assign(nn, 0.0);
  evecs.assign(nn * nn, 0.0);
  for (size_t j = 0; j < nn; ++j) {
    evals[j] = d[order[j]];
    const double* z = zt.data() + order[j] * nn;
    for (size_t k = 0; k < nn; ++k) evecs[k * nn + j] = z[k];
  }
}

ThinSvd thin_svd(const double* w, int64_t N, int64_t K) {
  MOE_CHECK(N >= 1 && K >= 1, "svd: empty matrix (", N, ", ", K, ")");
  const bool cols = K <= N;  // eigenvectors of W^T W are V; else of W W^T, U
  ThinSvd r;
  r.N = N, r.K = K, r.n = std::min(N, K);
  const int64_t n = r.n;
  std::vector<double> g = gram(w, N, K, cols), evals, evecs;
  symmetric_eigen(g, n, evals, evecs);
  r.S.resize(static_cast<size_t>(n));
  for (int64_t j = 0; j < n; ++j)
    r.S[static_cast<size_t>(j)] = std::sqrt(std::max(evals[static_cast<size_t>(j)], 0.0));
  // The other side's vectors: u_j = W v_j / s_j (or v_j = W^T u_j / s_j); zero where s_j is zero to
  // the Gram matrix's rounding.
  const double floor = r.S[0] * 1e-7;
  std::vector<double>& known = cols ? r.V : r.U;
  std::vector<double>& other = cols ? r.U : r.V;
  known = std::move(evecs);        // (n, n): the short side's vectors
  const int64_t m = cols ? N : K;  // length of the other side's vectors
  other.assign(static_cast<size_t>(m * n), 0.0);
  for (int64_t j = 0; j < n; ++j) {
    const double sj = r.S[static_cast<size_t>(j)];
    if (!(sj > floor) || sj == 0.0) continue;
    for (int64_t i = 0; i < m; ++i) {
      double acc = 0.0;
      for (int64_t k = 0; k < n; ++k) {
        const double wik = cols ? w[i * K + k] : w[k * K + i];
        acc += wik * known[static_cast<size_t>(k * n + j)];
      }
      other[static_cast<size_t>(i * n + j)] = acc / sj;
    }
  }
  return r;
}

void truncated_factors(const double* w, int64_t N, int64_t K, int64_t R, std::vector<double>& A,
                       std::vector<double>& B, std::vector<double>* singular) {
  const int64_t n = std::min(N, K);
  MOE_CHECK(R >= 1 && R <= n, "svd: rank ", R, " is outside [1, min(N, K) = ", n, "] for a (", N, ", ", K,
            ") matrix");
  const bool cols = K <= N;
  std::vector<double> g = gram(w, N, K, cols), evals, evecs;
  symmetric_eigen(g, n, evals, evecs);  // evecs (n, n): V (cols) or U
  if (singular) {
    singular->resize(static_cast<size_t>(n));
    for (int64_t j = 0; j < n; ++j)
      (*singular)[static_cast<size_t>(j)] = std::sqrt(std::max(evals[static_cast<size_t>(j)], 0.0));
  }
  A.assign(static_cast<size_t>(N * R), 0.0);
  B.assign(static_cast<size_t>(R * K), 0.0);
  if (cols) {  // A = W V_R (N, R), B = V_R^T (R, K)
    for (int64_t i = 0; i < N; ++i)
      for (int64_t k = 0; k < K; ++k) {
        const double wik = w[i * K + k];
        const double* vk = evecs.data() + k * n;
        double* ai = A.data() + i * R;
        for (int64_t j = 0; j < R; ++j) ai[j] += wik * vk[j];
      }
    for (int64_t j = 0; j < R; ++j)
      for (int64_t k = 0; k < K; ++k)
        B[static_cast<size_t>(j * K + k)] = evecs[static_cast<size_t>(k * n + j)];
  } else {  // A = U_R (N, R), B = U_R^T W (R, K)
    for (int64_t i = 0; i < N; ++i)
      for (int64_t j = 0; j < R; ++j)
        A[static_cast<size_t>(i * R + j)] = evecs[static_cast<size_t>(i * n + j)];
    for (int64_t i = 0; i < N; ++i) {
      const double* wi = w + i * K;
      for (int64_t j = 0; j < R; ++j) {
        const double uij = evecs[static_cast<size_t>(i * n + j)];
        double* bj = B.data() + j * K;
        for (int64_t k = 0; k < K; ++k) bj[k] += uij * wi[k];
      }
    }
  }
}

bool cholesky(const std::vector<double>& c, int64_t n, std::vector<double>& l) {
  l.assign(static_cast<size_t>(n * n), 0.0);
  for (int64_t j = 0; j < n; ++j) {
    double diag = c[j * n + j];
    for (int64_t q = 0; q < j; ++q) diag -= l[j * n + q] * l[j * n + q];
    if (!(diag > 0)) return false;
    const double ljj = std::sqrt(diag);
    l[j * n + j] = ljj;
    for (int64_t i = j + 1; i < n; ++i) {
      double v = c[i * n + j];
      for (int64_t q = 0; q < j; ++q) v -= l[i * n + q] * l[j * n + q];
      l[i * n + j] = v / ljj;
    }
  }
  return true;
}

}  // namespace moe::model::svd
