// CPU gemm, grouped_gemm and grouped_gemm_wgrad on the blocked engine (gemm_engine.h).
// Each call lists its output tiles, (expert, row tile, column tile) for the grouped forms, and hands
// them to moe::parallel_items: experts with many rows give many tiles, experts with none give none,
// so uneven experts keep all threads busy. Tiles are fixed by the shapes alone, which keeps the
// results independent of the thread count.
#include <cstdint>
#include <type_traits>
#include <vector>

#include "kernels/cpu/cpu.h"
#include "kernels/cpu/gemm_engine.h"
#include "moe/core/parallel.h"

namespace moe::kernels::cpu {

namespace {

struct Tile {
  int64_t problem;  // index into the problem list
  int64_t i0, i1, j0, j1;
};

// Appends the tiles of a problem with an M x N output, nc columns wide.
void add_tiles(std::vector<Tile>& tiles, int64_t problem, int64_t M, int64_t N, int64_t nc) {
  for (int64_t i0 = 0; i0 < M; i0 += kMT) {
    for (int64_t j0 = 0; j0 < N; j0 += nc) {
      tiles.push_back({problem, i0, i0 + kMT < M ? i0 + kMT : M, j0, j0 + nc < N ? j0 + nc : N});
    }
  }
}

// Tiles as wide as tile_width allows for the row tiles of all problems together.
template <typename T>
void run(const std::vector<GemmProblem<T>>& problems) {
  int64_t row_tiles = 0;
  for (const GemmProblem<T>& p : problems) row_tiles += (p.M + kMT - 1) / kMT;
  std::vector<Tile> tiles;
  for (size_t q = 0; q < problems.size(); ++q)
    add_tiles(tiles, static_cast<int64_t>(q), problems[q].M, problems[q].N,
              tile_width(row_tiles, problems[q].N));
  parallel_items(static_cast<int64_t>(tiles.size()), [&](int64_t t) {
    const Tile& tile = tiles[static_cast<size_t>(t)];
    gemm_tile(problems[static_cast<size_t>(tile.problem)], tile.i0, tile.i1, tile.j0, tile.j1);
  });
}

}  // namespace

template <typename T>
void gemm(const GemmArgs<T>& g) {
  GemmProblem<T> p;
  p.M = g.M;
  p.N = g.N;
  p.K = g.K;
  // op(A)[i, k]: A (M, K) row-major, or A (K, M) when trans_a.
  p.A = g.trans_a ? Operand<T>{g.A, 1, g.lda, nullptr} : Operand<T>{g.A, g.lda, 1, nullptr};
  // op(B)[k, j]: B (K, N) row-major, or B (N, K) when trans_b.
  p.B = g.trans_b ? Operand<T>{g.B, 1, g.ldb, nullptr} : Operand<T>{g.B, g.ldb, 1, nullptr};
  p.C = g.C;
  p.ldc = g.ldc;
  p.alpha = g.alpha;
  p.beta = g.beta;
  run(std::vector<GemmProblem<T>>{p});
}

template <typename T>
void grouped_gemm(const GroupedGemmArgs<T>& g) {
  std::vector<GemmProblem<T>> problems;
  for (int64_t e = 0; e < g.E; ++e) {
    const int64_t off = g.offsets[e], rows = g.offsets[e + 1] - off;
    if (rows == 0) continue;
    GemmProblem<T> p;
    p.M = rows;
    p.N = g.N;
    p.K = g.K;
    // A[row(p), k]: gathered rows, or the expert's contiguous block of rows.
    p.A = g.gather ? Operand<T>{g.A, g.lda, 1, g.gather + off}
                   : Operand<T>{g.A + off * g.lda, g.lda, 1, nullptr};
    // op(W_e)[k, n]: W_e (N, K) read transposed, or W_e (K, N) when trans_w.
    const T* w = g.W + e * g.N * g.K;
    p.B = g.trans_w ? Operand<T>{w, g.N, 1, nullptr} : Operand<T>{w, 1, g.K, nullptr};
    p.C = g.C + off * g.ldc;
    p.ldc = g.ldc;
    p.alpha = T(1);
    p.beta = g.beta;
    problems.push_back(p);
  }
  run(problems);
}

template <typename T>
void grouped_gemm_wgrad(const GroupedWgradArgs<T>& g) {
  if constexpr (std::is_same_v<T, float>) {
    if (g.bf16 && grouped_gemm_wgrad_bf16(g)) return;
  }
  // dW_e (N, K) = dC_e^T (N, rows) · A_e (rows, K): a GEMM over the expert's rows.
  std::vector<GemmProblem<T>> problems;
  for (int64_t e = 0; e < g.E; ++e) {
    const int64_t off = g.offsets[e], rows = g.offsets[e + 1] - off;
    GemmProblem<T> p;
    p.M = g.N;
    p.N = g.K;
    p.K = rows;  // 0 rows: dW_e = beta * dW_e
    // dC_e^T [n, p] = dC[dC_row(off + p), n]: the gathered rows become gathered columns.
    p.A = g.dC_gather ? Operand<T>{g.dC, 1, g.ldc, nullptr, g.dC_gather + off}
                      : Operand<T>{g.dC + off * g.ldc, 1, g.ldc, nullptr};
    p.B = g.gather ? Operand<T>{g.A, g.lda, 1, g.gather + off}
                   : Operand<T>{g.A + off * g.lda, g.lda, 1, nullptr};
    if (g.a_preact) {  // B[p, k] = a_scale[p] * h[p, k] of the stored pre-activations
      p.B.pre = true;
      p.B.act = g.act;
      p.B.xoff = g.K;
      p.B.rscale = g.a_scale ? g.a_scale + off : nullptr;
    }
    p.C = g.dW + e * g.N * g.K;
    p.ldc = g.K;
    p.alpha = T(1);
    p.beta = g.beta;
    problems.push_back(p);
  }
  run(problems);
}

template <typename T>
void grouped_gemm_cat(const GroupedGemmCatArgs<T>& g) {
  std::vector<GemmProblem<T>> problems;
  for (int64_t e = 0; e < g.E; ++e) {
    const int64_t off = g.offsets[e], rows = g.offsets[e + 1] - off;
    if (rows == 0) continue;
    GemmProblem<T> p;
    p.M = rows;
    p.N = g.N;
    p.K = g.K1 + g.K2;
    p.A = g.gather ? Operand<T>{g.A, g.lda, 1, g.gather + off}
                   : Operand<T>{g.A + off * g.lda, g.lda, 1, nullptr};
    // B[k, n] = W1_e[k, n] for k < K1, else W2_e[k - K1, n]: one K loop over both stacks.
    p.B = Operand<T>{g.K1 > 0 ? g.W1 + e * g.K1 * g.N : nullptr, g.N, 1, nullptr};
    if (g.K2 > 0) {
      p.B.base2 = g.W2 + e * g.K2 * g.N;
      p.B.split = g.K1;
    }
    p.C = g.C + off * g.ldc;
    p.ldc = g.ldc;
    p.alpha = T(1);
    p.beta = g.beta;
    problems.push_back(p);
  }
  run(problems);
}

template void gemm<float>(const GemmArgs<float>&);
template void gemm<double>(const GemmArgs<double>&);
template void grouped_gemm<float>(const GroupedGemmArgs<float>&);
template void grouped_gemm<double>(const GroupedGemmArgs<double>&);
template void grouped_gemm_wgrad<float>(const GroupedWgradArgs<float>&);
template void grouped_gemm_wgrad<double>(const GroupedWgradArgs<double>&);
template void grouped_gemm_cat<float>(const GroupedGemmCatArgs<float>&);
template void grouped_gemm_cat<double>(const GroupedGemmCatArgs<double>&);

}  // namespace moe::kernels::cpu
