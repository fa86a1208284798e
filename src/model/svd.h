// Singular value decomposition for `moe compress` (moe/model/low_rank.h), written here rather than
// taken from LAPACK: the matrices are expert weights at most a few thousand wide, the decomposition
// runs once per checkpoint, and a symmetric eigen-solver on the Gram matrix in double is short, exact
// to double rounding for what f32 weights need, and adds no dependency.
//
// Method: for W (N, K) with n = min(N, K), the Gram matrix of the shorter side (W^T W (K, K) when
// K <= N, else W W^T (N, N)) is diagonalised in double: Householder reduction to tridiagonal form,
// then QL iterations with implicit shifts (O(n^3): about 0.07 s for n = 256 and 4 s for n = 1024 on
// one Zen 3 core; a cyclic Jacobi solver, tried first, took 0.9 s and 200 s). Its eigenvalues are the
// squared singular values and its eigenvectors the right (resp. left) singular vectors. Squaring
// loses the singular values below ~1e-8 of the largest to rounding, far below f32 weights' own
// precision (~6e-8 relative) and below anything a truncation keeps.
#pragma once

#include <cstdint>
#include <vector>

namespace moe::model::svd {

// Eigen-decomposition of the symmetric a (n, n), row-major (overwritten). evals (n) come out in
// descending order; evecs (n, n) row-major, column j the unit eigenvector of evals[j].
void symmetric_eigen(std::vector<double>& a, int64_t n, std::vector<double>& evals,
                     std::vector<double>& evecs);

// W = U · diag(S) · V^T with n = min(N, K): U (N, n), V (K, n) row-major with orthonormal columns
// (a column of a zero singular value is zero), S (n) descending and >= 0.
struct ThinSvd {
  int64_t N = 0, K = 0, n = 0;
  std::vector<double> U, S, V;
};
ThinSvd thin_svd(const double* w, int64_t N, int64_t K);  // w: (N, K) row-major

// The best rank-R approximation of W (Eckart–Young) as A (N, R) · B (R, K), 1 <= R <= min(N, K):
// the projection of W onto its top R singular directions of the shorter side, so no singular value
// is ever divided by. The singular values go with the factor on the longer side:
//   K <= N:  A = W·V_R = U_R·S_R,  B = V_R^T
//   N <  K:  A = U_R,              B = U_R^T·W = S_R·V_R^T
// singular (optional) receives all min(N, K) singular values, descending.
void truncated_factors(const double* w, int64_t N, int64_t K, int64_t R, std::vector<double>& A,
                       std::vector<double>& B, std::vector<double>* singular = nullptr);

// Cholesky factor of the symmetric positive definite c (n, n), row-major: c = L·Lᵀ with L lower,
// row-major in l. Returns false (l unspecified) when a pivot is not positive.
bool cholesky(const std::vector<double>& c, int64_t n, std::vector<double>& l);

}  // namespace moe::model::svd
