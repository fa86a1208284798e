// CPU fused expert FFN ops on the blocked GEMM engine (gemm_engine.h).
//   grouped_ffn_up: per output tile (expert, row tile, F tile) the gate and up tiles are computed
//     as one GEMM tile (gate columns, then up columns: A packed once) into thread-local scratch,
//     and the activation runs in the epilogue while the tile is hot: H (and the saved
//     pre-activations) are written once.
//   grouped_ffn_down_backward: per tile q = dY[row(p)] · W_down_e, then the d-activation in the
//     epilogue writes dG and dU (no dH buffer). The per-row dot <q, h> is summed per tile in double
//     into its own slot and the slots are added in tile order afterwards, so every result is
//     independent of the thread count.
//   grouped_gemm_scatter: per tile, the scaled rows are stored at their output rows (one owner each);
//     with a_preact the A rows are the activation of saved pre-activations, made while packing.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "kernels/cpu/act_inline.h"
#include "kernels/cpu/cpu.h"
#include "kernels/cpu/gemm_engine.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/wgemm/engine.h"
#include "moe/core/parallel.h"

namespace moe::kernels::cpu {

namespace {

struct Tile {
  int64_t e, i0, i1, j0, j1;  // expert; rows [i0, i1) of the expert; columns [j0, j1)
};

// Output tiles of every expert with rows, rows x N each, at most kMT x nc; nc 0: tile_width's.
std::vector<Tile> list_tiles(const int32_t* offsets, int64_t E, int64_t N, int64_t nc = 0) {
  if (nc <= 0) {
    int64_t row_tiles = 0;
    for (int64_t e = 0; e < E; ++e) row_tiles += (offsets[e + 1] - offsets[e] + kMT - 1) / kMT;
    nc = tile_width(row_tiles, N);
  }
  std::vector<Tile> tiles;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t rows = offsets[e + 1] - offsets[e];
    for (int64_t i0 = 0; i0 < rows; i0 += kMT) {
      for (int64_t j0 = 0; j0 < N; j0 += nc) {
        tiles.push_back({e, i0, i0 + kMT < rows ? i0 + kMT : rows, j0, j0 + nc < N ? j0 + nc : N});
      }
    }
  }
  return tiles;
}

template <typename T>
T* scratch(std::vector<T>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
  return v.data();
}

// Rows of an activation operand for expert e: gathered, or the expert's contiguous block.
template <typename T>
Operand<T> rows_of(const T* A, int64_t lda, const int32_t* gather, int64_t off) {
  return gather ? Operand<T>{A, lda, 1, gather + off} : Operand<T>{A + off * lda, lda, 1, nullptr};
}

template <typename T>
inline T sigmoid(T a) {
  return T(1) / (T(1) + std::exp(-a));
}

// act(u) and act'(u) for the plain activations (formulas of src/kernels/cpu/activation.cpp).
template <typename T>
inline T act_value(Activation act, T u) {
  switch (act) {
    case Activation::Gelu:
      return u * (T(0.5) * (T(1) + std::erf(u * T(0.70710678118654752440))));
    case Activation::Relu:
      return u < T(0) ? T(0) : u;
    default:
      return u * sigmoid(u);
  }
}
template <typename T>
inline T act_grad(Activation act, T u) {
  switch (act) {
    case Activation::Gelu:
      return T(0.5) * (T(1) + std::erf(u * T(0.70710678118654752440))) +
             u * (T(0.39894228040143267794) * std::exp(T(-0.5) * u * u));
    case Activation::Relu:
      return u > T(0) ? T(1) : T(0);
    default: {
      const T s = sigmoid(u);
      return s * (T(1) + u * (T(1) - s));
    }
  }
}

// The SwiGLU backward of one tile row (n <= kNC columns), in place where dg == g and du == u:
// with sg = sigmoid(g), h = silu(g) u and dh = s q:  dg = dh u sg (1 + g (1 - sg)), du = dh silu(g),
// hs = s h (when wanted), and the return value <q, h> summed in double over 8 lanes (lane j % 8,
// each in column order, then the lanes pairwise): a fixed order, so the result does not depend on
// the thread count, and one the compiler can vectorise (as sigmoid_fast is).
template <typename T>
MOE_ACT_INLINE double swiglu_bwd_row_body(int64_t n, T s, const T* __restrict q, const T* g, const T* u,
                                          T* dg, T* du, T* __restrict hs) {
  alignas(64) T gl[kNC], ul[kNC], h[kNC];  // copies: dg, du may be g, u
  for (int64_t j = 0; j < n; ++j) {
    gl[j] = g[j];
    ul[j] = u[j];
  }
  T* __restrict dgr = dg;
  T* __restrict dur = du;
  for (int64_t j = 0; j < n; ++j) {
    const T sg = sigmoid_fast(gl[j]), silu = gl[j] * sg, dh = s * q[j];
    h[j] = silu * ul[j];
    dgr[j] = dh * ul[j] * (sg * (T(1) + gl[j] * (T(1) - sg)));
    dur[j] = dh * silu;
  }
  if (hs)
    for (int64_t j = 0; j < n; ++j) hs[j] = s * h[j];
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
#pragma GCC unroll 8
    for (int l = 0; l < 8; ++l) acc[l] += static_cast<double>(q[j + l]) * static_cast<double>(h[j + l]);
  }
  for (int l = 0; j < n; ++j, ++l) acc[l] += static_cast<double>(q[j]) * static_cast<double>(h[j]);
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

template <typename T>
double swiglu_bwd_row_generic(int64_t n, T s, const T* q, const T* g, const T* u, T* dg, T* du, T* hs) {
  return swiglu_bwd_row_body(n, s, q, g, u, dg, du, hs);
}

template <typename T>
__attribute__((target("avx512f"))) double swiglu_bwd_row_avx512(int64_t n, T s, const T* q, const T* g,
                                                                const T* u, T* dg, T* du, T* hs) {
  return swiglu_bwd_row_body(n, s, q, g, u, dg, du, hs);
}

template <typename T>
using SwigluRowFn = double (*)(int64_t n, T s, const T* q, const T* g, const T* u, T* dg, T* du, T* hs);

// The row epilogue of the GEMM engine's instruction set: AVX-512 when the engine's is.
template <typename T>
SwigluRowFn<T> swiglu_bwd_row() {
  if (isa(Family::F32) == kAvx512) return &swiglu_bwd_row_avx512<T>;
  return &swiglu_bwd_row_generic<T>;
}

}  // namespace

template <typename T>
void grouped_ffn_up(const FfnUpArgs<T>& g) {
  const bool swiglu = g.act == Activation::SwiGLU;
  // SwiGLU: a tile's gate columns [j0, j1) and up columns [j0, j1) are one GEMM tile of 2 (j1 - j0)
  // columns (W_gate's rows, then W_up's), so the A rows are packed once for both.
  const int64_t width = swiglu ? kNC / 2 : kNC;
  const std::vector<Tile> tiles = list_tiles(g.offsets, g.E, g.F, width);
  parallel_items(static_cast<int64_t>(tiles.size()), [&](int64_t t) {
    const Tile& tl = tiles[static_cast<size_t>(t)];
    const int64_t off = g.offsets[tl.e], mc = tl.i1 - tl.i0, nc = tl.j1 - tl.j0;
    GemmProblem<T> p;
    p.M = g.offsets[tl.e + 1] - off;
    p.K = g.K;
    p.A = rows_of(g.A, g.lda, g.gather, off);
    const int64_t ncols = swiglu ? 2 * nc : nc;  // columns of the scratch tile
    if (swiglu) {
      p.N = 2 * nc;  // columns [0, nc): W_gate_e rows j0.., [nc, 2 nc): W_up_e rows j0..
      p.B = Operand<T>{g.W_gate + (tl.e * g.F + tl.j0) * g.K, 1, g.K, nullptr};
      p.B.cbase2 = g.W_up + (tl.e * g.F + tl.j0) * g.K;
      p.B.csplit = nc;
    } else {
      p.N = g.F;
      p.B = Operand<T>{g.W_up + tl.e * g.F * g.K, 1, g.K, nullptr};  // W_e (F, K) read transposed
    }
    thread_local std::vector<T> s_buf;
    T* st = scratch(s_buf, kMT * kNC);  // (mc, ncols): [gate | up] or up
    if (swiglu) {
      gemm_tile_to(p, tl.i0, tl.i1, 0, ncols, st, ncols);
    } else {
      gemm_tile_to(p, tl.i0, tl.i1, tl.j0, tl.j1, st, ncols);
    }
    for (int64_t i = 0; i < mc; ++i) {
      const int64_t row = off + tl.i0 + i;
      const T* u = st + i * ncols + (swiglu ? nc : 0);
      if (g.U) {
        T* dst = g.U + row * g.ldu + tl.j0;
        for (int64_t j = 0; j < nc; ++j) dst[j] = u[j];
      }
      if (swiglu) {
        const T* gt = st + i * ncols;
        if (g.G) {
          T* dst = g.G + row * g.ldg + tl.j0;
          for (int64_t j = 0; j < nc; ++j) dst[j] = gt[j];
        }
        if (g.H) {
          T* h = g.H + row * g.ldh + tl.j0;
          for (int64_t j = 0; j < nc; ++j) h[j] = gt[j] * sigmoid(gt[j]) * u[j];
        }
      } else if (g.H) {
        T* h = g.H + row * g.ldh + tl.j0;
        for (int64_t j = 0; j < nc; ++j) h[j] = act_value(g.act, u[j]);
      }
    }
  });
}

template <typename T>
void grouped_ffn_down_backward(const FfnDownBackwardArgs<T>& g) {
  const bool swiglu = g.act == Activation::SwiGLU;
  const SwigluRowFn<T> swiglu_row = swiglu_bwd_row<T>();
  const std::vector<Tile> tiles = list_tiles(g.offsets, g.E, g.F);
  const int64_t M = g.offsets[g.E];
  // The dot of each row is summed per chunk of kNC columns (whatever the tile width), then over
  // the chunks in order: the same sums for every tile width and thread count.
  const int64_t ntj = (g.F + kNC - 1) / kNC;                                 // column chunks per row
  std::vector<double> partial(g.dscale ? static_cast<size_t>(M * ntj) : 0);  // (M, ntj)
  parallel_items(static_cast<int64_t>(tiles.size()), [&](int64_t t) {
    const Tile& tl = tiles[static_cast<size_t>(t)];
    const int64_t off = g.offsets[tl.e], mc = tl.i1 - tl.i0, nc = tl.j1 - tl.j0;
    GemmProblem<T> p;
    p.M = g.offsets[tl.e + 1] - off;
    p.N = g.F;
    p.K = g.D;
    p.A = rows_of(g.dY, g.ldy, g.gather, off);
    thread_local std::vector<T> q_buf;
    T* sq = scratch(q_buf, mc * nc);  // (mc, nc) q = dY · W_down_e
    if constexpr (std::is_same_v<T, float>) {
      if (g.W_down_w.data) {  // the weights in a stored format: that format's tile
        wgemm::Problem wp;
        wp.M = p.M, wp.N = g.F, wp.K = g.D;
        wp.A = g.gather ? g.dY : g.dY + off * g.ldy, wp.lda = g.ldy;
        wp.map = g.gather ? g.gather + off : nullptr;
        wp.W = g.W_down_w.expert(tl.e);
        wgemm::format_tile(wp, tl.i0, tl.i1, tl.j0, tl.j1, {.c = sq, .ldc = nc, .load = false});
      }
    }
    if (!g.W_down_w.data) {
      p.B = Operand<T>{g.W_down + tl.e * g.D * g.F, g.F, 1, nullptr};  // W_e (D, F) = (K, N)
      gemm_tile_to(p, tl.i0, tl.i1, tl.j0, tl.j1, sq, nc);
    }
    for (int64_t i = 0; i < mc; ++i) {
      const int64_t row = off + tl.i0 + i;
      const T s = g.scale ? g.scale[row] : T(1);
      for (int64_t jc = 0; jc < nc; jc += kNC) {  // chunks of kNC columns
        const int64_t n = nc - jc < kNC ? nc - jc : kNC, j0 = tl.j0 + jc;
        const T* q = sq + i * nc + jc;
        const T* u = g.U + row * g.ldu + j0;
        T* du = g.dU + row * g.lddu + j0;
        T* hs = g.Hs ? g.Hs + row * g.ldhs + j0 : nullptr;
        double dot = 0;
        if (swiglu) {
          dot = swiglu_row(n, s, q, g.G + row * g.ldg + j0, u, g.dG + row * g.lddg + j0, du, hs);
        } else {
          for (int64_t j = 0; j < n; ++j) {
            const T h = act_value(g.act, u[j]), dh = s * q[j];
            du[j] = dh * act_grad(g.act, u[j]);
            if (hs) hs[j] = s * h;
            dot += static_cast<double>(q[j]) * static_cast<double>(h);
          }
        }
        if (g.dscale) partial[static_cast<size_t>(row * ntj + j0 / kNC)] = dot;
      }
    }
  });
  if (g.dscale) {
    parallel_for(M, 4096, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        double acc = 0;
        for (int64_t j = 0; j < ntj; ++j) acc += partial[static_cast<size_t>(r * ntj + j)];
        g.dscale[r] = static_cast<T>(acc);
      }
    });
  }
}

template <typename T>
void grouped_gemm_scatter(const GroupedGemmScatterArgs<T>& g) {
  const std::vector<Tile> tiles = list_tiles(g.offsets, g.E, g.N);
  parallel_items(static_cast<int64_t>(tiles.size()), [&](int64_t t) {
    const Tile& tl = tiles[static_cast<size_t>(t)];
    const int64_t off = g.offsets[tl.e], mc = tl.i1 - tl.i0, nc = tl.j1 - tl.j0;
    GemmProblem<T> p;
    p.M = g.offsets[tl.e + 1] - off;
    p.N = g.N;
    p.K = g.K;
    p.A = rows_of(g.A, g.lda, g.gather, off);
    if (g.a_preact) {  // A[p, k] = h[p, k] of the stored pre-activations
      p.A.pre = true;
      p.A.act = g.act;
      p.A.xoff = g.K;
    }
    const T* w = g.W + tl.e * g.N * g.K;
    p.B = g.trans_w ? Operand<T>{w, g.N, 1, nullptr} : Operand<T>{w, 1, g.K, nullptr};
    thread_local std::vector<T> c_buf;
    T* sc = scratch(c_buf, mc * nc);  // (mc, nc)
    gemm_tile_to(p, tl.i0, tl.i1, tl.j0, tl.j1, sc, nc);
    for (int64_t i = 0; i < mc; ++i) {
      const int64_t row = off + tl.i0 + i;
      const T s = g.scale ? g.scale[row] : T(1);
      T* c = g.C + (g.out_row ? g.out_row[row] : row) * g.ldc + tl.j0;  // (nc)
      const T* src = sc + i * nc;
      for (int64_t j = 0; j < nc; ++j) c[j] = s * src[j];
    }
  });
}

template void grouped_ffn_up<float>(const FfnUpArgs<float>&);
template void grouped_ffn_up<double>(const FfnUpArgs<double>&);
template void grouped_ffn_down_backward<float>(const FfnDownBackwardArgs<float>&);
template void grouped_ffn_down_backward<double>(const FfnDownBackwardArgs<double>&);
template void grouped_gemm_scatter<float>(const GroupedGemmScatterArgs<float>&);
template void grouped_gemm_scatter<double>(const GroupedGemmScatterArgs<double>&);

}  // namespace moe::kernels::cpu
