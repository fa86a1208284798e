// The engine of grouped_gemm_w (see engine.h): the work list, the scheduling and the epilogue; the
// formats' table.
#include "kernels/cpu/wgemm/engine.h"

#include <cstdint>
#include <vector>

#include "kernels/cpu/cpu.h"
#include "moe/core/parallel.h"

namespace moe::kernels::cpu {

namespace wgemm {
namespace {

// The one table of formats, indexed by WeightFormat.
const Format& format_table(WeightFormat f) {
  switch (f) {
    case WeightFormat::Bf16:
      return bf16_format();
    case WeightFormat::Bf16Packed:
      return bf16_packed_format();
    case WeightFormat::Int8Packed:
      return int8_packed_format();
    case WeightFormat::Int4Packed:
      return int4_packed_format();
    case WeightFormat::Int8:
      return int8_format();
    case WeightFormat::Int4:
      return int4_format();
    case WeightFormat::F32:
      break;
  }
  return f32_format();
}

// The format's tile function for the family's current instruction set (or the best one below it).
TileFn tile_fn(const Format& f) {
  for (int i = isa(f.family); i >= 0; --i) {
    if (f.tile[i]) return f.tile[i];
  }
  return f.tile[kGeneric];
}

// Columns per tile: nc, or with widen the widest of N, N/2, N/4, ... (multiples of nc, at least nc)
// that still gives every thread at least 4 tiles (dynamic scheduling evens out uneven experts). The
// width changes no result: each format's summation order does not depend on it.
int64_t tile_cols(const Format& f, int64_t row_tiles, int64_t N) {
  if (!f.widen) return f.nc;
  const int64_t want = 4 * static_cast<int64_t>(num_threads());
  for (int64_t parts = 1;; parts *= 2) {
    const int64_t w = ((N + parts - 1) / parts + f.nc - 1) / f.nc * f.nc;
    if (w <= f.nc) return f.nc;
    if (row_tiles * ((N + w - 1) / w) >= want) return w;
  }
}

// Pre-activation rows [r0, r1) of the call into h (rows, K): act_row compiled for the family's
// instruction set (the exp of SwiGLU/SiLU vectorises 16 or 8 wide), chosen like the tile functions.
using ActRowsFn = void (*)(const GroupedGemmWArgs& g, int64_t r0, int64_t r1, float* h);
MOE_ACT_INLINE void act_rows_impl(const GroupedGemmWArgs& g, int64_t r0, int64_t r1, float* h) {
  const int64_t K = g.W.K;
  for (int64_t r = r0; r < r1; ++r)
    act_row(g.act, g.A + (g.gather ? g.gather[r] : r) * g.lda, K, K, 1.0f, h + r * K);
}
void act_rows_generic(const GroupedGemmWArgs& g, int64_t r0, int64_t r1, float* h) {
  act_rows_impl(g, r0, r1, h);
}
__attribute__((target("avx2,fma"))) void act_rows_avx2(const GroupedGemmWArgs& g, int64_t r0, int64_t r1,
                                                       float* h) {
  act_rows_impl(g, r0, r1, h);
}
__attribute__((target("avx512f"))) void act_rows_avx512(const GroupedGemmWArgs& g, int64_t r0, int64_t r1,
                                                        float* h) {
  act_rows_impl(g, r0, r1, h);
}
ActRowsFn act_rows_fn(const Format& f) {
  const int i = isa(f.family);
  if (i >= kAvx512 && cpu_runs(kAvx512)) return &act_rows_avx512;
  if (i >= kAvx2 && cpu_runs(kAvx2)) return &act_rows_avx2;
  return &act_rows_generic;
}

struct Tile {
  int64_t problem;  // index into the problem list
  int64_t i0, i1, j0, j1;
};

// How the tiles of a call are stored: in place (rows p of C), or scaled to out_row.
struct Epilogue {
  float* C = nullptr;  // the expert's first row (in place) or C itself (out_row)
  int64_t ldc = 0;
  float beta = 0;
  const float* scale = nullptr;      // (M) or null
  const int32_t* out_row = nullptr;  // (M) or null
  bool scatter() const { return scale || out_row; }
  float* row(int64_t i) const { return C + (out_row ? out_row[i] : i) * ldc; }
};

// Computes one tile of problem p: beta first, then the format's tile in place or into a scratch tile
// stored scaled at its output rows.
void run_tile(TileFn tile, const Problem& p, const Epilogue& ep, const Tile& t) {
  const int64_t mc = t.i1 - t.i0, nc = t.j1 - t.j0;
  if (p.K == 0 || (ep.beta != 0.0f && ep.beta != 1.0f)) {  // C = beta * C (zero when beta == 0)
    for (int64_t i = t.i0; i < t.i1; ++i) {
      float* c = ep.row(i);
      for (int64_t j = t.j0; j < t.j1; ++j) c[j] = ep.beta == 0.0f ? 0.0f : ep.beta * c[j];
    }
    if (p.K == 0) return;
  }
  if (!ep.scatter()) {
    tile(p, t.i0, t.i1, t.j0, t.j1,
         {.c = ep.C + t.i0 * ep.ldc + t.j0, .ldc = ep.ldc, .load = ep.beta != 0.0f});
    return;
  }
  thread_local std::vector<float> c_buf;
  float* const c = scratch(c_buf, mc * nc);  // (mc, nc)
  tile(p, t.i0, t.i1, t.j0, t.j1, {.c = c, .ldc = nc, .load = false});
  for (int64_t i = 0; i < mc; ++i) {
    const int64_t r = t.i0 + i;
    const float s = ep.scale ? ep.scale[r] : 1.0f;
    float* dst = ep.row(r) + t.j0;
    const float* src = c + i * nc;
    for (int64_t j = 0; j < nc; ++j) dst[j] = s * src[j];
  }
}

// Expert e's problem and epilogue (rows [off, off + rows) of the call).
void expert_problem(const GroupedGemmWArgs& g, int64_t e, Problem& p, Epilogue& ep) {
  const int64_t off = g.offsets[e];
  p.M = g.offsets[e + 1] - off;
  p.N = g.W.N;
  p.K = g.W.K;
  p.A = g.gather ? g.A : g.A + off * g.lda;  // gathered rows, or the expert's block of rows
  p.lda = g.lda;
  p.map = g.gather ? g.gather + off : nullptr;
  p.pre = g.a_preact;
  p.act = g.act;
  p.W = g.W.expert(e);
  ep.C = g.out_row ? g.C : g.C + off * g.ldc;  // out_row holds absolute rows of C
  ep.ldc = g.ldc;
  ep.beta = g.beta;
  ep.scale = g.scale ? g.scale + off : nullptr;
  ep.out_row = g.out_row ? g.out_row + off : nullptr;
}

}  // namespace

void format_tile(const Problem& p, int64_t i0, int64_t i1, int64_t j0, int64_t j1, const TileOut& out) {
  tile_fn(format_table(p.W.format))(p, i0, i1, j0, j1, out);
}

}  // namespace wgemm

void grouped_gemm_w(const GroupedGemmWArgs& g) {
  using namespace wgemm;
  const Format& f = format_table(g.W.format);
  std::vector<Problem> problems;
  std::vector<Epilogue> epilogues;
  std::vector<Tile> tiles;
  double macs = 0;
  int64_t row_tiles = 0;
  for (int64_t e = 0; e < g.E; ++e) {
    if (g.offsets[e + 1] == g.offsets[e]) continue;
    Problem p;
    Epilogue ep;
    expert_problem(g, e, p, ep);
    problems.push_back(p);
    epilogues.push_back(ep);
    macs += static_cast<double>(p.M) * p.N * p.K;
    row_tiles += (p.M + f.mc - 1) / f.mc;
  }
  const int64_t nc = tile_cols(f, row_tiles, g.W.N);
  // Pre-activations: the activation rows made once per call, before the tiles (a tile reads its rows
  // whole, and a row is read by every column tile of its expert: decoding made each one several times).
  thread_local std::vector<float> act_buf;
  if (g.a_preact && !problems.empty()) {
    const int64_t rows = g.offsets[g.E], K = g.W.K;
    float* h = scratch(act_buf, rows * K);  // (rows, K) in call order
    const ActRowsFn act_rows = act_rows_fn(f);
    parallel_for(rows, 16, [&](int64_t r0, int64_t r1) { act_rows(g, r0, r1, h); });
    size_t q = 0;
    for (int64_t e = 0; e < g.E; ++e) {
      if (g.offsets[e + 1] == g.offsets[e]) continue;
      Problem& p = problems[q++];
      p.A = h + g.offsets[e] * K, p.lda = K, p.map = nullptr, p.pre = false;
    }
  }
  for (int64_t q = 0; q < static_cast<int64_t>(problems.size()); ++q) {
    const Problem& p = problems[static_cast<size_t>(q)];
    for (int64_t i0 = 0; i0 < p.M; i0 += f.mc) {
      for (int64_t j0 = 0; j0 < p.N; j0 += nc) {
        tiles.push_back({q, i0, i0 + f.mc < p.M ? i0 + f.mc : p.M, j0, j0 + nc < p.N ? j0 + nc : p.N});
      }
    }
  }
  const TileFn tile = tile_fn(f);
  auto one = [&](int64_t t) {
    const Tile& x = tiles[static_cast<size_t>(t)];
    run_tile(tile, problems[static_cast<size_t>(x.problem)], epilogues[static_cast<size_t>(x.problem)], x);
  };
  const int64_t n = static_cast<int64_t>(tiles.size());
  if (macs < static_cast<double>(f.min_parallel)) {
    for (int64_t t = 0; t < n; ++t) one(t);
    return;
  }
  parallel_items(n, one);
}

}  // namespace moe::kernels::cpu
