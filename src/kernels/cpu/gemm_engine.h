// The blocked GEMM engine behind the CPU gemm, grouped_gemm and grouped_gemm_wgrad.
//
// One problem is C (M, N) = alpha * A (M, K) · B (K, N) + beta * C, where each operand is read
// through strides and an optional row map (the gather of token rows happens while packing, so no
// permuted copy of the activations is made). Work is split into output tiles of at most kMT rows
// and tile_width columns (kNC or a multiple); a tile is computed by exactly one thread:
//   for each K block of kKC:  pack B (kKC x width) in panels of NR columns once, then for each block
//                             of kMC rows pack A (kMC x kKC) in panels of MR rows and run the
//                             MR x NR register-tiled micro-kernel per panel pair
// (B's packing is shared by the kMT / kMC row blocks of a tile: packing it per kMC rows cost about
// a seventh of a large GEMM's time).
// Each element is the sum over K blocks (in order) of a sequential sum within the block, so results
// do not depend on the thread count or on which tile a thread takes. The micro-kernel is compiled
// for several instruction sets (function-level target attributes), picked once at run time.
#pragma once

#include <cstdint>
#include <string>

#include "moe/kernels/isa.h"
#include "moe/kernels/ops.h"

namespace moe::kernels::cpu {

// Element (r, c) of an operand = base[row(r) * rs + col(c) * cs], row(r) = map ? map[r] : r,
// col(c) = cmap ? cmap[c] : c. With base2 set, rows row(r) >= split read base2[(row(r) - split) * rs
// + col(c) * cs] instead (two weight stacks one after the other, without a copy). With cbase2 set
// (B operands only, not with base2), columns col(c) >= csplit read cbase2[row(r) * rs + (col(c) -
// csplit) * cs] (two weights side by side: the gate and up projections as one GEMM).
template <typename T>
struct Operand {
  const T* base = nullptr;
  int64_t rs = 0;
  int64_t cs = 0;
  const int32_t* map = nullptr;
  const int32_t* cmap = nullptr;
  const T* base2 = nullptr;
  int64_t split = 0;
  const T* cbase2 = nullptr;
  int64_t csplit = 0;
  // Activation applied while packing (A operands with cs == 1, B operands with cs == 1; not with
  // cmap, base2 or cbase2): element (r, c) = rscale[r] * act(e) with e the stored element; SwiGLU
  // reads silu(e) * e' with e' the element xoff places after e (pre-activation rows [G | U]).
  // rscale null means no scale. So the activation H of saved pre-activations (and scale * H) is an
  // operand without an H buffer.
  bool pre = false;
  Activation act = Activation::SwiGLU;
  int64_t xoff = 0;
  const T* rscale = nullptr;
};

template <typename T>
struct GemmProblem {
  int64_t M = 0, N = 0, K = 0;
  Operand<T> A;    // (M, K): r = i, c = k
  Operand<T> B;    // (K, N): r = k, c = j
  T* C = nullptr;  // (M, N), row stride ldc
  int64_t ldc = 0;
  T alpha = 1;
  T beta = 0;
};

// Tile sizes shared by all instruction sets (kMC is a multiple of every MR, kNC of every NR).
// Rows per output tile (kMT) do not change any result: only kKC and the micro-kernel's shape fix
// the order of the sums.
constexpr int64_t kMT = 384;
constexpr int64_t kMC = 96;
constexpr int64_t kNC = 256;
constexpr int64_t kKC = 256;

// Column width of the output tiles of a grouped op with `row_tiles` tiles of rows and N columns:
// the widest of N, N/2, N/4, ... (multiples of kNC, at least kNC) that still gives every thread at
// least 4 tiles (dynamic scheduling evens out uneven experts). A wider tile packs its A rows (a
// gather, or an activation made while packing) once for more columns. The width changes no result:
// only kKC and the micro-kernel fix the order of the sums.
int64_t tile_width(int64_t row_tiles, int64_t N);

// Computes C[i0:i1, j0:j1] of the problem; i1 - i0 <= kMT (any width j1 - j0).
template <typename T>
void gemm_tile(const GemmProblem<T>& p, int64_t i0, int64_t i1, int64_t j0, int64_t j1);

// Computes alpha * A[i0:i1, :] · B[:, j0:j1] into out (i1 - i0, j1 - j0), row stride ldo, ignoring
// p.C and p.beta: the raw tile for a fused epilogue. Same sums, in the same order, as gemm_tile.
template <typename T>
void gemm_tile_to(const GemmProblem<T>& p, int64_t i0, int64_t i1, int64_t j0, int64_t j1, T* out,
                  int64_t ldo);

// Instruction set of the micro-kernel ("generic", "avx2" with FMA, "avx512"): the f32 family of the
// one registry (moe/kernels/isa.h), named here too for the engine's callers.
using kernels::gemm_isa;
using kernels::gemm_isa_supported;
using kernels::set_gemm_isa;

}  // namespace moe::kernels::cpu
