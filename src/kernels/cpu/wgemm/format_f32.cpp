// The f32 weight format of grouped_gemm_w (engine.h): the f32 GEMM engine's packing and micro-kernels
// (gemm_engine.h) on one tile, the weights read as its B operand (K, N) through strides and the
// activation rows as its A operand (the gather and the pre-activation made while it packs, as
// a_span would make them).
#include "kernels/cpu/gemm_engine.h"
#include "kernels/cpu/wgemm/engine.h"

namespace moe::kernels::cpu::wgemm {

namespace {

void tile_f32(const Problem& p, int64_t i0, int64_t i1, int64_t j0, int64_t j1, const TileOut& out) {
  GemmProblem<float> g;
  g.M = p.M;
  g.N = p.N;
  g.K = p.K;
  g.A.base = p.A;  // (M, K) through map, row stride lda
  g.A.rs = p.lda;
  g.A.cs = 1;
  g.A.map = p.map;
  g.A.pre = p.pre;
  g.A.act = p.act;
  g.A.xoff = p.K;                                  // SwiGLU: U is K values after G
  g.B.base = static_cast<const float*>(p.W.data);  // op(W) (K, N): stored (N, K), or (K, N) when trans
  g.B.rs = p.W.trans ? p.N : 1;
  g.B.cs = p.W.trans ? 1 : p.K;
  if (!out.load) return gemm_tile_to(g, i0, i1, j0, j1, out.c, out.ldc);
  // Adding: the engine passes C in place (the expert's rows), so out.c is element (i0, j0) of them.
  g.C = out.c - (i0 * out.ldc + j0);  // (M, N), row stride ldc
  g.ldc = out.ldc;
  g.beta = 1.0f;
  gemm_tile(g, i0, i1, j0, j1);
}

}  // namespace

const Format& f32_format() {
  static const Format f{
      .mc = kMT, .nc = kNC, .widen = true, .min_parallel = 0, .family = Family::F32, .tile = {&tile_f32}};
  return f;
}

}  // namespace moe::kernels::cpu::wgemm
