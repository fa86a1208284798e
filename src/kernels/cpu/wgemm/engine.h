// The one CPU engine of grouped_gemm_w (moe/kernels/weights.h), for every weight format.
//
// The engine owns what does not depend on the format:
//   - the work list: each expert with rows is one Problem; its output is cut into tiles of at most
//     mc rows x nc columns (the format's tile sizes; with widen, a multiple of nc up to N while every
//     thread still gets a few tiles, so that a tile's rows are read and packed once for more
//     columns), listed as (expert, row tile, column tile) and
//     handed to moe::parallel_items (one thread computes a whole tile), or run on the calling thread
//     when the call is too small to wake a thread for;
//   - the activation rows: a_span() reads row r of a problem through the gather and the pre-activation
//     (the format rounds or reorders them while it packs);
//   - the epilogue: beta (C = beta * C first when beta is neither 0 nor 1, so the format only ever
//     overwrites or adds), and with scale / out_row a scratch tile stored scaled at its output rows.
// A format supplies a Format row: its tile sizes and, per instruction set, a tile function that packs
// its weights (B) and runs its micro-kernels:
//   tile(p, i0, i1, j0, j1, out):  out.c[i, j] (+)= sum_k a_span(p, i0 + i)[k] · op(W)[k, j0 + j]
//                                   (adding to out.c when out.load, else overwriting it)
// in a summation order fixed by the format (never by the thread count or the tile's place).
// Adding a format: its file here (format_<name>.cpp) defining its Format, and one row in
// format_table() (engine.cpp).
#pragma once

#include <array>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "kernels/cpu/act_inline.h"
#include "kernels/cpu/isa.h"
#include "moe/kernels/weights.h"

namespace moe::kernels::cpu::wgemm {

// One expert's GEMM: C (M, N) += a (M, K) · op(W) (K, N), rows a[i] = act?(A[row(i), :]).
struct Problem {
  int64_t M = 0, N = 0, K = 0;
  const float* A = nullptr;  // row(i) = map ? map[i] : i, row stride lda
  int64_t lda = 0;
  const int32_t* map = nullptr;  // (M) or null
  bool pre = false;              // A rows are pre-activations: a = act(row), made while packing
  Activation act = Activation::SwiGLU;
  WeightView W;  // this expert's weights (op(W) (K, N))
};

// Where a tile goes: element (i, j) of the tile at c[i * ldc + j].
struct TileOut {
  float* c = nullptr;  // (i1 - i0, j1 - j0), row stride ldc
  int64_t ldc = 0;
  bool load = false;  // add to c (else overwrite it)
};

using TileFn = void (*)(const Problem& p, int64_t i0, int64_t i1, int64_t j0, int64_t j1, const TileOut& out);

struct Format {
  int64_t mc = 0, nc = 0;       // tile sizes (rows, columns)
  bool widen = false;           // columns per tile: a multiple of nc, widened (see tile_cols in engine.cpp)
  int64_t min_parallel = 0;     // multiply-adds below which a call runs on the calling thread
  Family family = Family::F32;  // the instruction-set slot the tile functions follow
  TileFn tile[kIsaCount] = {};  // per instruction set; null: the best one below
};

// One tile of a problem in its weight format's order, without the engine's epilogue (for fused ops
// that compute their own epilogue from the tile, e.g. grouped_ffn_down_backward):
//   out.c[i, j] (+)= a_span(p, i0 + i) · op(W)[:, j0 + j]   (i < i1 - i0, j < j1 - j0; j0 a multiple of 16)
void format_tile(const Problem& p, int64_t i0, int64_t i1, int64_t j0, int64_t j1, const TileOut& out);

// The formats' rows (format_<name>.cpp).
const Format& f32_format();
const Format& bf16_format();
const Format& bf16_packed_format();
const Format& int8_packed_format();
const Format& int4_packed_format();
const Format& int8_format();
const Format& int4_format();

// Row r of the problem's activations, columns [k0, k0 + kc): a pointer into A, or with pre the
// activation made into buf (kc floats).
inline const float* a_span(const Problem& p, int64_t r, int64_t k0, int64_t kc, float* buf) {
  const float* src = p.A + (p.map ? p.map[r] : r) * p.lda + k0;
  if (!p.pre) return src;
  act_row(p.act, src, p.K, kc, 1.0f, buf);  // SwiGLU: U is K values after G
  return buf;
}

// ---- helpers of the format files ----

// f32 -> bf16 bits, round to nearest even, NaN stays a quiet NaN: moe::f32_to_bf16 without the branch,
// so that the packing loops vectorize.
inline __attribute__((always_inline)) uint32_t round_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const uint32_t nan = (u >> 16) | 0x40u;
  return (u & 0x7fffffffu) > 0x7f800000u ? nan : rounded;
}

// A thread's scratch of n elements from a 64-byte boundary (no vector load splits a cache line),
// grown and never shrunk; its contents are not kept when it grows.
template <typename T>
T* scratch(std::vector<T>& v, int64_t n) {
  constexpr int64_t pad = 64 / static_cast<int64_t>(sizeof(T));
  if (static_cast<int64_t>(v.size()) < n + pad) v.resize(static_cast<size_t>(n + pad));
  const uintptr_t at = (reinterpret_cast<uintptr_t>(v.data()) + 63) & ~uintptr_t{63};
  return reinterpret_cast<T*>(at);
}

// A register-tiled kernel for r rows (1..Kern::MR) and v panels (1..Kern::NV): Kern::run<R, V> from a
// table of every instantiation (Fn: their common pointer type).
template <class Kern, class Fn, size_t... I>
constexpr std::array<Fn, sizeof...(I)> kern_table(std::index_sequence<I...>) {
  return {&Kern::template run<static_cast<int>(I / Kern::NV) + 1, static_cast<int>(I % Kern::NV) + 1>...};
}
template <class Kern, class Fn>
inline Fn kern_for(int64_t r, int64_t v) {
  static constexpr auto table = kern_table<Kern, Fn>(std::make_index_sequence<Kern::MR * Kern::NV>());
  return table[static_cast<size_t>((r - 1) * Kern::NV + (v - 1))];
}

// The panel loop of the integer-packed formats: over the tile's 16-column panels, NV at a time, and its
// rows, MR at a time, run(r, v, ip, P, c, ldc) computes rows [ip, ip + r) x panels [P, P + v) of the
// tile into c (row stride ldc); the last panels, when they reach past the tile's nc columns, go through
// an edge buffer (loaded from c first when out.load) so the kernel always writes whole panels.
template <int MR, int NV, class Run>
inline void run_panels(int64_t mc, int64_t nc, const TileOut& out, Run run) {
  constexpr int64_t kPanel = kPackedPanel;
  const int64_t panels = (nc + kPanel - 1) / kPanel;
  alignas(64) float edge[MR * kPanel * NV];
  for (int64_t P = 0; P < panels; P += NV) {
    const int64_t v = panels - P < NV ? panels - P : NV;
    const int64_t cols = nc - P * kPanel < v * kPanel ? nc - P * kPanel : v * kPanel, width = v * kPanel;
    for (int64_t ip = 0; ip < mc; ip += MR) {
      const int64_t r = mc - ip < MR ? mc - ip : MR;
      float* c = out.c + ip * out.ldc + P * kPanel;
      if (cols == width) {
        run(r, v, ip, P, c, out.ldc);
        continue;
      }
      for (int64_t ii = 0; ii < r && out.load; ++ii)
        for (int64_t j = 0; j < width; ++j) edge[ii * width + j] = j < cols ? c[ii * out.ldc + j] : 0.0f;
      run(r, v, ip, P, edge, width);
      for (int64_t ii = 0; ii < r; ++ii)
        for (int64_t j = 0; j < cols; ++j) c[ii * out.ldc + j] = edge[ii * width + j];
    }
  }
}

// Whether the CPU has AVX512-VNNI (the integer-packed formats' avx512 slot falls back to the portable
// kernel without it, as on Skylake-X).
inline bool has_avx512_vnni() {
  static const bool vnni = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vnni") != 0;
  }();
  return vnni;
}

}  // namespace moe::kernels::cpu::wgemm
