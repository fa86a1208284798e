// The blocked GEMM engine: packing, the register-tiled micro-kernel and one output tile.
// See gemm_engine.h for the blocking scheme and why it is deterministic.
#include "kernels/cpu/gemm_engine.h"
#include "kernels/cpu/act_inline.h"
#include "kernels/cpu/isa.h"

#include <immintrin.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "moe/core/error.h"
#include "moe/core/parallel.h"

#define MOE_INLINE inline __attribute__((always_inline))

namespace moe::kernels::cpu {

namespace {

// Start of operand row r (column 0), following map, and base2 past the split.
template <typename T>
MOE_INLINE const T* row_ptr(const Operand<T>& o, int64_t r) {
  const int64_t row = o.map ? o.map[r] : r;
  if (o.base2 && row >= o.split) return o.base2 + (row - o.split) * o.rs;
  return o.base + row * o.rs;
}

// Start of operand column c (row 0), following cmap, and cbase2 past the column split.
template <typename T>
MOE_INLINE const T* col_ptr(const Operand<T>& o, int64_t c) {
  const int64_t col = o.cmap ? o.cmap[c] : c;
  if (o.cbase2 && col >= o.csplit) return o.cbase2 + (col - o.csplit) * o.cs;
  return o.base + col * o.cs;
}

// dst[c] = operand row r's elements src[c] (c < n, contiguous) through the packing activation.
template <typename T>
MOE_INLINE void pre_row(const Operand<T>& o, int64_t r, const T* __restrict src, int64_t n,
                        T* __restrict dst) {
  act_row(o.act, src, o.xoff, n, o.rscale ? o.rscale[r] : T(1), dst);
}

// Packs A[i0 : i0 + mc, k0 : k0 + kc] into panels of MR rows: dst[panel][k][i], zero padded.
template <typename T, int MR>
MOE_INLINE void pack_a(const Operand<T>& A, int64_t i0, int64_t mc, int64_t k0, int64_t kc, T* dst) {
  if (A.rs == 1 && !A.map && !A.base2 && !A.pre) {
    // Transposed operand (rows contiguous along i, e.g. dC^T of a weight gradient): read MR
    // consecutive elements per k instead of one strided column per row.
    for (int64_t ip = 0; ip < mc; ip += MR) {
      T* panel = dst + ip * kc;  // (kc, MR)
      const int64_t rows = mc - ip < MR ? mc - ip : MR;
      for (int64_t k = 0; k < kc; ++k) {
        const int64_t c = k0 + k;
        const T* src = A.base + (A.cmap ? A.cmap[c] : c) * A.cs + i0 + ip;
        for (int ii = 0; ii < MR; ++ii) panel[k * MR + ii] = ii < rows ? src[ii] : T(0);
      }
    }
    return;
  }
  for (int64_t ip = 0; ip < mc; ip += MR) {
    T* panel = dst + ip * kc;  // (kc, MR)
    const int64_t rows = mc - ip < MR ? mc - ip : MR;
    for (int ii = 0; ii < MR; ++ii) {
      if (ii >= rows) {
        for (int64_t k = 0; k < kc; ++k) panel[k * MR + ii] = T(0);
        continue;
      }
      const int64_t r = i0 + ip + ii;
      if (A.cmap) {
        const T* row = row_ptr(A, r);
        for (int64_t k = 0; k < kc; ++k) panel[k * MR + ii] = row[A.cmap[k0 + k] * A.cs];
        continue;
      }
      const T* src = row_ptr(A, r) + k0 * A.cs;
      if (A.pre) {  // cs == 1
        T row[kKC];
        pre_row(A, r, src, kc, row);
        for (int64_t k = 0; k < kc; ++k) panel[k * MR + ii] = row[k];
      } else if (A.cs == 1) {
        for (int64_t k = 0; k < kc; ++k) panel[k * MR + ii] = src[k];
      } else {
        for (int64_t k = 0; k < kc; ++k) panel[k * MR + ii] = src[k * A.cs];
      }
    }
  }
}

// Packs 32 columns of B[k0 : k0 + kc, :] that are contiguous along k (a weight stored (N, K), as
// nn.Linear stores it; col[c] points at column c's element k0) into one (kc, 32) panel: 16 x 16
// blocks are transposed in registers instead of element by element. The AVX-512 float path only
// (NR = 32 there). Each column's run of kc values lies in its own page, which the hardware
// prefetcher picks up late, so the runs of the next panel are requested while this one is copied:
// decoding (one row per sequence) is bound by these reads.
// (GCC 12 reports the intrinsics' internal undefined vectors as maybe-uninitialized.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
__attribute__((target("avx512f"))) void pack_b_kcontig_32(const float* const* col, const float* const* next,
                                                          int64_t kc, float* dst) {
  for (int c = 0; c < 32 && next; ++c)
    for (int64_t off = 0; off < kc; off += 16) __builtin_prefetch(next[c] + off, 0, 2);  // to L2
  int64_t k = 0;
  for (; k + 16 <= kc; k += 16) {
    for (int half = 0; half < 2; ++half) {
      __m512 r[16], t[16];
      for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(col[16 * half + i] + k);
      for (int i = 0; i < 8; ++i) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
      }
      for (int i = 0; i < 4; ++i) {
        const __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 1]);
        const __m512d c = _mm512_castps_pd(t[4 * i + 2]), d = _mm512_castps_pd(t[4 * i + 3]);
        r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
        r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
        r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
        r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
      }
      for (int h = 0; h < 2; ++h) {
        for (int i = 0; i < 4; ++i) {
          t[8 * h + i] = _mm512_shuffle_f32x4(r[8 * h + i], r[8 * h + i + 4], 0x88);
          t[8 * h + i + 4] = _mm512_shuffle_f32x4(r[8 * h + i], r[8 * h + i + 4], 0xdd);
        }
      }
      for (int i = 0; i < 8; ++i) {  // r[i] = element k + i of the 16 columns
        _mm512_storeu_ps(dst + (k + i) * 32 + 16 * half, _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88));
        _mm512_storeu_ps(dst + (k + i + 8) * 32 + 16 * half, _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd));
      }
    }
  }
  for (; k < kc; ++k)
    for (int c = 0; c < 32; ++c) dst[k * 32 + c] = col[c][k];
}
#pragma GCC diagnostic pop

// Packs B[k0 : k0 + kc, j0 : j0 + nc] into panels of NR columns: dst[panel][k][j], zero padded.
template <typename T, int NR>
MOE_INLINE void pack_b(const Operand<T>& B, int64_t k0, int64_t kc, int64_t j0, int64_t nc, T* dst) {
  for (int64_t jp = 0; jp < nc; jp += NR) {
    T* panel = dst + jp * kc;  // (kc, NR)
    const int64_t cols = nc - jp < NR ? nc - jp : NR;
    if constexpr (std::is_same_v<T, float> && NR == 32) {
      if (B.rs == 1 && cols == NR && !B.map && !B.base2 && !B.pre) {  // columns contiguous along k
        const float* col[32];
        const float* next[32];
        const bool more = jp + 2 * NR <= nc;
        for (int jj = 0; jj < NR; ++jj) {
          const int64_t c = j0 + jp + jj, c2 = c + NR;
          col[jj] = col_ptr(B, c) + k0;
          if (more) next[jj] = col_ptr(B, c2) + k0;
        }
        pack_b_kcontig_32(col, more ? next : nullptr, kc, panel);
        continue;
      }
    }
    if (B.cs == 1 && cols == NR && !B.cmap && !B.cbase2) {  // rows of B are contiguous: copy NR at a time
      for (int64_t k = 0; k < kc; ++k) {
        const T* src = row_ptr(B, k0 + k) + (j0 + jp);
        if (B.pre) {
          pre_row(B, k0 + k, src, NR, panel + k * NR);
        } else {
          for (int jj = 0; jj < NR; ++jj) panel[k * NR + jj] = src[jj];
        }
      }
      continue;
    }
    if (B.pre) {  // cs == 1, a partial panel
      for (int64_t k = 0; k < kc; ++k) {
        const T* src = row_ptr(B, k0 + k) + (j0 + jp);
        pre_row(B, k0 + k, src, cols, panel + k * NR);
        for (int64_t jj = cols; jj < NR; ++jj) panel[k * NR + jj] = T(0);
      }
      continue;
    }
    for (int jj = 0; jj < NR; ++jj) {
      if (jj >= cols) {
        for (int64_t k = 0; k < kc; ++k) panel[k * NR + jj] = T(0);
        continue;
      }
      const int64_t c = j0 + jp + jj;
      const int64_t coff = (B.cmap ? B.cmap[c] : c) * B.cs;
      if (!B.base2) {
        const T* col = col_ptr(B, c);
        for (int64_t k = 0; k < kc; ++k) {
          const int64_t r = k0 + k;
          panel[k * NR + jj] = col[(B.map ? B.map[r] : r) * B.rs];
        }
        continue;
      }
      for (int64_t k = 0; k < kc; ++k) panel[k * NR + jj] = row_ptr(B, k0 + k)[coff];
    }
  }
}

// out (MR, NR) = a (kc, MR)^T · b (kc, NR), summed over k in order. The accumulators are MR x NV
// vectors of VB bytes (GCC vector extensions, so the tile stays in registers and the code is the
// same for every instruction set; the target attribute of the caller decides the instructions).
template <typename T, int MR, int NR, int VB>
MOE_INLINE void micro_kernel(int64_t kc, const T* __restrict a, const T* __restrict b, T* __restrict out) {
  typedef T vec __attribute__((vector_size(VB)));
  constexpr int kLanes = VB / static_cast<int>(sizeof(T));
  constexpr int NV = NR / kLanes;
  static_assert(NV * kLanes == NR, "NR must be a multiple of the vector length");
  vec c[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) c[i][v] = vec{};
  }
  for (int64_t k = 0; k < kc; ++k) {
    vec bk[NV];
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) __builtin_memcpy(&bk[v], b + k * NR + v * kLanes, sizeof(vec));
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const T ai = a[k * MR + i];
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) c[i][v] += ai * bk[v];
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) __builtin_memcpy(out + i * NR + v * kLanes, &c[i][v], sizeof(vec));
  }
}

// The rows of a tile that do not fill an MR panel (all of them when the tile has fewer than MR
// rows, as in decoding, where M is the number of sequences): one row at a time against NP column
// panels at once, so that NP x NV accumulators hide the FMA latency without computing the MR - 1
// padding rows. out (NP, NR) = a[k * as] (k < kc) · b panels (kc, NR) bstride apart; each element
// is the same sequential sum over k, with the same operations, as micro_kernel's, so a row's result
// does not depend on how many rows the GEMM has (batch invariance).
template <typename T, int NR, int VB, int NP>
MOE_INLINE void row_kernel(int64_t kc, const T* __restrict a, int64_t as, const T* __restrict b,
                           int64_t bstride, T* __restrict out) {
  typedef T vec __attribute__((vector_size(VB)));
  constexpr int kLanes = VB / static_cast<int>(sizeof(T));
  constexpr int NV = NR / kLanes;
  vec c[NP][NV];
#pragma GCC unroll 16
  for (int q = 0; q < NP; ++q) {
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) c[q][v] = vec{};
  }
  for (int64_t k = 0; k < kc; ++k) {
    const T ak = a[k * as];
#pragma GCC unroll 16
    for (int q = 0; q < NP; ++q) {
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) {
        vec bk;
        __builtin_memcpy(&bk, b + q * bstride + k * NR + v * kLanes, sizeof(vec));
        c[q][v] += ak * bk;
      }
    }
  }
#pragma GCC unroll 16
  for (int q = 0; q < NP; ++q) {
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) __builtin_memcpy(out + q * NR + v * kLanes, &c[q][v], sizeof(vec));
  }
}

template <typename T>
T* scratch(std::vector<T>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
  return v.data();
}

// A tile of fewer than MR rows (decoding: one row per sequence), every row through row_kernel with the
// same K blocks, packing and sums as tile_impl below (so the results are the same bits), in another
// order: A is packed once for all of K, and each group of NP column panels runs through all K blocks
// before the next group. Weights (N, K) are then read as one panel's rows streamed along K (the next
// K block of those rows is requested while this one computes) instead of every row of the tile
// revisited once per K block, which the hardware prefetchers follow poorly: decoding the 1.2B Mixtral
// in f32 went from 9.5 to 11.4-11.8 tokens/s on 2 threads (NP = 4 gave 10.0).
template <typename T, int MR, int NR, int VB>
MOE_INLINE void tile_few_rows(const GemmProblem<T>& p, int64_t i0, int64_t i1, int64_t j0, int64_t j1, T* C,
                              int64_t ldc) {
  constexpr int NP = 1;
  const int64_t mc = i1 - i0, nc = j1 - j0, blocks = (p.K + kKC - 1) / kKC;
  thread_local std::vector<T> a_buf, b_buf;
  T* ap = scratch(a_buf, blocks * kKC * MR);  // block b at ap + b * kKC * MR: (kc, MR)
  T* bp = scratch(b_buf, NP * NR * kKC);      // (NP, kc, NR)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t k0 = b * kKC, kc = p.K - k0 < kKC ? p.K - k0 : kKC;
    pack_a<T, MR>(p.A, i0, mc, k0, kc, ap + b * kKC * MR);
  }
  alignas(64) T rout[NP * NR];  // (NP, NR)
  for (int64_t jp = 0; jp < nc; jp += NP * NR) {
    const int64_t cols = nc - jp < NP * NR ? nc - jp : NP * NR, np = (cols + NR - 1) / NR;
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t k0 = b * kKC, kc = p.K - k0 < kKC ? p.K - k0 : kKC;
      if (p.B.rs == 1 && !p.B.map && !p.B.base2 && k0 + kc < p.K) {  // columns contiguous along k
        const int64_t kn = p.K - k0 - kc < kKC ? p.K - k0 - kc : kKC;
        for (int64_t c = 0; c < cols; ++c) {
          const T* next = col_ptr(p.B, j0 + jp + c) + k0 + kc;
          for (int64_t off = 0; off < kn; off += 64 / static_cast<int64_t>(sizeof(T)))
            __builtin_prefetch(next + off, 0, 2);
        }
      }
      pack_b<T, NR>(p.B, k0, kc, j0 + jp, cols, bp);
      for (int64_t i = 0; i < mc; ++i) {
        const T* ar = ap + b * kKC * MR + i;
        switch (np) {
          case 4:
            row_kernel<T, NR, VB, 4>(kc, ar, MR, bp, NR * kc, rout);
            break;
          case 3:
            row_kernel<T, NR, VB, 3>(kc, ar, MR, bp, NR * kc, rout);
            break;
          case 2:
            row_kernel<T, NR, VB, 2>(kc, ar, MR, bp, NR * kc, rout);
            break;
          default:
            row_kernel<T, NR, VB, 1>(kc, ar, MR, bp, NR * kc, rout);
            break;
        }
        T* c = C + i * ldc + jp;  // (cols): stored as tile_impl's store does
        for (int64_t j = 0; j < cols; ++j) {
          const T o = rout[j];
          if (k0 != 0)
            c[j] += p.alpha * o;
          else if (p.beta == T(0))
            c[j] = p.alpha * o;
          else
            c[j] = p.alpha * o + p.beta * c[j];
        }
      }
    }
  }
}

// Writes the tile to C (the address of element (i0, j0)) with row stride ldc.
template <typename T, int MR, int NR, int VB>
MOE_INLINE void tile_impl(const GemmProblem<T>& p, int64_t i0, int64_t i1, int64_t j0, int64_t j1, T* C,
                          int64_t ldc) {
  static_assert(kMC % MR == 0 && kNC % NR == 0, "tile sizes must be multiples of the register tile");
  const int64_t mc = i1 - i0, nc = j1 - j0;
  if (p.K == 0) {  // C = beta * C (zero when beta == 0)
    for (int64_t i = 0; i < mc; ++i) {
      T* c = C + i * ldc;
      for (int64_t j = 0; j < nc; ++j) c[j] = p.beta == T(0) ? T(0) : p.beta * c[j];
    }
    return;
  }
  if (mc < MR) return tile_few_rows<T, MR, NR, VB>(p, i0, i1, j0, j1, C, ldc);
  thread_local std::vector<T> a_buf, b_buf;
  const int64_t nc_pad = (nc + NR - 1) / NR * NR;
  T* ap = scratch(a_buf, kMC * kKC);     // one block of rows: (kMC / MR, kc, MR)
  T* bp = scratch(b_buf, nc_pad * kKC);  // (nc_pad / NR, kc, NR), shared by the tile's row blocks
  alignas(64) T out[MR * NR];            // (MR, NR)
  for (int64_t k0 = 0; k0 < p.K; k0 += kKC) {
    const int64_t kc = p.K - k0 < kKC ? p.K - k0 : kKC;
    const bool first = k0 == 0;
    pack_b<T, NR>(p.B, k0, kc, j0, nc, bp);
    // Adds (or, in the first K block, writes) one computed row piece o (cols) to C row i, column jp.
    auto store = [&](int64_t i, int64_t jp, int64_t cols, const T* o) {
      T* c = C + i * ldc + jp;  // (cols)
      if (!first) {
        for (int64_t j = 0; j < cols; ++j) c[j] += p.alpha * o[j];
      } else if (p.beta == T(0)) {
        for (int64_t j = 0; j < cols; ++j) c[j] = p.alpha * o[j];
      } else {
        for (int64_t j = 0; j < cols; ++j) c[j] = p.alpha * o[j] + p.beta * c[j];
      }
    };
    for (int64_t ib = 0; ib < mc; ib += kMC) {  // blocks of kMC rows against the packed B
      const int64_t mb = mc - ib < kMC ? mc - ib : kMC;
      pack_a<T, MR>(p.A, i0 + ib, mb, k0, kc, ap);
      const int64_t full = mb / MR * MR;  // rows in full MR panels
      for (int64_t jp = 0; jp < nc; jp += NR) {
        const int64_t cols = nc - jp < NR ? nc - jp : NR;
        for (int64_t ip = 0; ip < full; ip += MR) {
          // The C rows the next micro-tile stores to are requested now, while this one computes:
          // where K is short (a weight gradient over one expert's ~256 tokens) each C element gets
          // few FMAs per visit, and waiting for its cache lines cost ~7% of a weight gradient's time.
          {
            int64_t nip = ip + MR, njp = jp;
            if (nip >= full) nip = 0, njp = jp + NR;
            if (njp < nc) {
              const T* c = C + (ib + nip) * ldc + njp;
              const int64_t ncols = nc - njp < NR ? nc - njp : NR;
              for (int64_t i = 0; i < MR; ++i)
                for (int64_t j = 0; j < ncols; j += 64 / static_cast<int64_t>(sizeof(T)))
                  __builtin_prefetch(c + i * ldc + j, 1, 3);
            }
          }
          micro_kernel<T, MR, NR, VB>(kc, ap + ip * kc, bp + jp * kc, out);
          for (int64_t i = 0; i < MR; ++i) store(ib + ip + i, jp, cols, out + i * NR);
        }
      }
      if (full == mb) continue;
      constexpr int NP = 4;
      alignas(64) T rout[NP * NR];   // (NP, NR)
      const T* ar = ap + full * kc;  // the last, partial panel (kc, MR)
      for (int64_t i = 0; i < mb - full; ++i) {
        for (int64_t jp = 0; jp < nc; jp += NP * NR) {
          const int64_t np = (nc - jp + NR - 1) / NR < NP ? (nc - jp + NR - 1) / NR : NP;
          const T* b = bp + jp * kc;
          switch (np) {
            case 4:
              row_kernel<T, NR, VB, 4>(kc, ar + i, MR, b, NR * kc, rout);
              break;
            case 3:
              row_kernel<T, NR, VB, 3>(kc, ar + i, MR, b, NR * kc, rout);
              break;
            case 2:
              row_kernel<T, NR, VB, 2>(kc, ar + i, MR, b, NR * kc, rout);
              break;
            default:
              row_kernel<T, NR, VB, 1>(kc, ar + i, MR, b, NR * kc, rout);
              break;
          }
          for (int64_t q = 0; q < np; ++q) {
            const int64_t j = jp + q * NR;
            store(ib + full + i, j, nc - j < NR ? nc - j : NR, rout + q * NR);
          }
        }
      }
    }
  }
}

// ---- one entry per instruction set; everything above is inlined into each ----

template <typename T>
void tile_generic(const GemmProblem<T>& p, int64_t i0, int64_t i1, int64_t j0, int64_t j1, T* C,
                  int64_t ldc) {
  // SSE2: 16 registers of 16 bytes.
  tile_impl<T, 4, 32 / static_cast<int>(sizeof(T)), 16>(p, i0, i1, j0, j1, C, ldc);
}

template <typename T>
__attribute__((target("avx2,fma"))) void tile_avx2(const GemmProblem<T>& p, int64_t i0, int64_t i1,
                                                   int64_t j0, int64_t j1, T* C, int64_t ldc) {
  // 16 registers of 32 bytes: 6 x 2 accumulators.
  tile_impl<T, 6, 64 / static_cast<int>(sizeof(T)), 32>(p, i0, i1, j0, j1, C, ldc);
}

template <typename T>
__attribute__((target("avx512f"))) void tile_avx512(const GemmProblem<T>& p, int64_t i0, int64_t i1,
                                                    int64_t j0, int64_t j1, T* C, int64_t ldc) {
  // 32 registers of 64 bytes: 6 x 2 accumulators.
  tile_impl<T, 6, 128 / static_cast<int>(sizeof(T)), 64>(p, i0, i1, j0, j1, C, ldc);
}

}  // namespace

namespace {

template <typename T>
void tile_dispatch(const GemmProblem<T>& p, int64_t i0, int64_t i1, int64_t j0, int64_t j1, T* C,
                   int64_t ldc) {
  switch (isa(Family::F32)) {
    case kAvx512:
      return tile_avx512(p, i0, i1, j0, j1, C, ldc);
    case kAvx2:
      return tile_avx2(p, i0, i1, j0, j1, C, ldc);
    default:
      return tile_generic(p, i0, i1, j0, j1, C, ldc);
  }
}

}  // namespace

int64_t tile_width(int64_t row_tiles, int64_t N) {
  const int64_t want = 4 * static_cast<int64_t>(num_threads());
  for (int64_t parts = 1;; parts *= 2) {
    const int64_t w = ((N + parts - 1) / parts + kNC - 1) / kNC * kNC;
    if (w <= kNC) return kNC;
    if (row_tiles * ((N + w - 1) / w) >= want) return w;
  }
}

template <typename T>
void gemm_tile(const GemmProblem<T>& p, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
  tile_dispatch(p, i0, i1, j0, j1, p.C + i0 * p.ldc + j0, p.ldc);
}

template <typename T>
void gemm_tile_to(const GemmProblem<T>& p, int64_t i0, int64_t i1, int64_t j0, int64_t j1, T* out,
                  int64_t ldo) {
  GemmProblem<T> q = p;
  q.beta = T(0);
  tile_dispatch(q, i0, i1, j0, j1, out, ldo);
}

template void gemm_tile<float>(const GemmProblem<float>&, int64_t, int64_t, int64_t, int64_t);
template void gemm_tile<double>(const GemmProblem<double>&, int64_t, int64_t, int64_t, int64_t);
template void gemm_tile_to<float>(const GemmProblem<float>&, int64_t, int64_t, int64_t, int64_t, float*,
                                  int64_t);
template void gemm_tile_to<double>(const GemmProblem<double>&, int64_t, int64_t, int64_t, int64_t, double*,
                                   int64_t);

}  // namespace moe::kernels::cpu
