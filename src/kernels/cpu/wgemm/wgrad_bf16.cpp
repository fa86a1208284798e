// grouped_gemm_wgrad with bf16 operands on the AMX tiles (GroupedWgradArgs::bf16, moe/kernels/ops.h):
//   dW_e (N, K) = beta * dW_e + sum over the expert's rows p of bf16(dC[p, n]) * bf16(a(p, k)),
// products exact in fp32, fp32 sums in the rows' order (TDPBF16PS per 32 rows, amx_tiles.h).
//
// The reduction runs over the expert's rows, so both operands are activations and both are packed per
// call, each once for all threads (parallel over rows) before the tiles run:
//   dC^T as A tiles: tile (g, s) holds n in [16 g, 16 g + 16) x rows [32 s, 32 s + 32) as 16 rows of
//     16 pairs (1 KiB, 64 bytes per n), rows from the even one in the low half; the expert's rows are
//     padded with zeros to a multiple of 32, N to a multiple of 32;
//   a as B panels: panel P holds k in [16 P, 16 P + 16) as (rows / 2) pair rows of 16 words, the
//     layout of the bf16-packed weights with the rows as K; K padded to a multiple of 32.
// Then every 32 x 32 block of every expert's dW is one work item: its four C tiles stay in the tile
// registers over all the expert's rows and go out once, through a scratch block, to beta * dW + sum.
// a(p, k) is A[row(p), k], or with a_preact a_scale[p] * act(pre-activations of row(p))[k].
//
// The emulation (set_amx_emulation) runs the same packing and blocking on scalar tiles; the hardware
// adds each pair in another order, within rows · 2^-24 · sum |products| of the emulation.
#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/cpu/act_inline.h"
#include "kernels/cpu/cpu.h"
#include "kernels/cpu/wgemm/amx_tiles.h"
#include "kernels/cpu/wgemm/engine.h"
#include "moe/core/parallel.h"

namespace moe::kernels::cpu {

namespace {

using wgemm::round_bf16;

constexpr int64_t kTileRows = 32;  // rows (the reduction) per tile step: 16 pairs

struct Expert {
  int64_t off, rows, rows_pad;  // the expert's first row, its rows, rounded up to 32
  int64_t a_at, b_at;           // its packed dC^T and a, in uint16 units from the buffers' starts
};

// Rows [p0, p1) of expert x into the packed buffers (see the file comment); padding rows are zero.
MOE_ACT_INLINE void pack_rows(const GroupedWgradArgs<float>& g, const Expert& x, int64_t p0, int64_t p1,
                              int64_t n_pad, int64_t k_pad, uint16_t* at, uint16_t* bt) {
  std::vector<float> h(static_cast<size_t>(g.a_preact ? g.K : 0));
  const int64_t steps = x.rows_pad / kTileRows;
  for (int64_t p = p0; p < p1; ++p) {
    const float* dc = nullptr;  // the row's dC and a, or null for a padding row
    const float* a = nullptr;
    if (p < x.rows) {
      const int64_t r = x.off + p;
      dc = g.dC + (g.dC_gather ? g.dC_gather[r] : r) * g.ldc;
      a = g.A + (g.gather ? g.gather[r] : r) * g.lda;
      if (g.a_preact) {
        act_row(g.act, a, g.K, g.K, g.a_scale ? g.a_scale[r] : 1.0f, h.data());
        a = h.data();
      }
    }
    uint16_t* a_row =
        at + x.a_at + (p / kTileRows) * 512 + p % kTileRows;  // + (n / 16) * steps * 512 + (n % 16) * 32
    uint16_t* b_row = bt + x.b_at + (p / 2) * 32 + (p % 2);   // + (k / 16) * rows_pad * 16 + (k % 16) * 2
    for (int64_t n = 0; n < n_pad; ++n)
      a_row[(n / 16) * steps * 512 + (n % 16) * 32] =
          dc && n < g.N ? static_cast<uint16_t>(round_bf16(dc[n])) : 0;
    for (int64_t k = 0; k < k_pad; ++k)
      b_row[(k / 16) * x.rows_pad * 16 + (k % 16) * 2] =
          a && k < g.K ? static_cast<uint16_t>(round_bf16(a[k])) : 0;
  }
}

__attribute__((target("avx512f,avx512bw,avx512vl"))) void pack_rows_avx512(const GroupedWgradArgs<float>& g,
                                                                           const Expert& x, int64_t p0,
                                                                           int64_t p1, int64_t n_pad,
                                                                           int64_t k_pad, uint16_t* at,
                                                                           uint16_t* bt) {
  pack_rows(g, x, p0, p1, n_pad, k_pad, at, bt);
}

// One 32 x 32 block (n0, k0) of expert x: C tiles over all its rows, then beta * dW + sum.
template <class Unit>
MOE_ACT_INLINE void block(const GroupedWgradArgs<float>& g, const Expert& x, int64_t e, int64_t n0,
                          int64_t k0, const uint16_t* at, const uint16_t* bt) {
  const int64_t steps = x.rows_pad / kTileRows;
  const uint16_t* a0 = at + x.a_at + (n0 / 16) * steps * 512;  // n rows [n0, n0 + 16), then + 16
  const uint16_t* a1 = a0 + steps * 512;
  const uint16_t* b0 = bt + x.b_at + (k0 / 16) * x.rows_pad * 16;  // k panels k0 / 16, then + 1
  const uint16_t* b1 = b0 + x.rows_pad * 16;
  Unit::template zero<0>();
  Unit::template zero<1>();
  Unit::template zero<2>();
  Unit::template zero<3>();
  for (int64_t s = 0; s < steps; ++s) {
    Unit::template load<4>(a0 + s * 512, 64);
    Unit::template load<5>(a1 + s * 512, 64);
    Unit::template load<6>(b0 + s * 512, 64);
    Unit::template dp<0, 4, 6>();
    Unit::template dp<2, 5, 6>();
    Unit::template load<7>(b1 + s * 512, 64);
    Unit::template dp<1, 4, 7>();
    Unit::template dp<3, 5, 7>();
  }
  alignas(64) float c[32 * 32];
  Unit::template store<0>(c, 128);
  Unit::template store<1>(c + 16, 128);
  Unit::template store<2>(c + 16 * 32, 128);
  Unit::template store<3>(c + 16 * 32 + 16, 128);
  float* dW = g.dW + e * g.N * g.K;
  const int64_t nn = g.N - n0 < 32 ? g.N - n0 : 32, kk = g.K - k0 < 32 ? g.K - k0 : 32;
  for (int64_t i = 0; i < nn; ++i) {
    float* d = dW + (n0 + i) * g.K + k0;
    const float* src = c + i * 32;
    if (g.beta == 0.0f) {
      for (int64_t j = 0; j < kk; ++j) d[j] = src[j];
    } else {
      for (int64_t j = 0; j < kk; ++j) d[j] = g.beta * d[j] + src[j];
    }
  }
}

template <class Unit>
void blocks(const GroupedWgradArgs<float>& g, const std::vector<Expert>& xs, const uint16_t* at,
            const uint16_t* bt) {
  const int64_t nb = (g.N + 31) / 32, kb = (g.K + 31) / 32, per = nb * kb;
  parallel_items(g.E * per, [&](int64_t t) {
    const int64_t e = t / per, n0 = (t % per) / kb * 32, k0 = (t % per) % kb * 32;
    const Expert& x = xs[static_cast<size_t>(e)];
    if (x.rows == 0) {  // dW_e = beta * dW_e
      float* dW = g.dW + e * g.N * g.K;
      for (int64_t i = n0; i < (n0 + 32 < g.N ? n0 + 32 : g.N); ++i)
        for (int64_t j = k0; j < (k0 + 32 < g.K ? k0 + 32 : g.K); ++j)
          dW[i * g.K + j] = g.beta == 0.0f ? 0.0f : g.beta * dW[i * g.K + j];
      return;
    }
    Unit::begin();
    block<Unit>(g, x, e, n0, k0, at, bt);
    Unit::end();
  });
}

}  // namespace

bool grouped_gemm_wgrad_bf16(const GroupedWgradArgs<float>& g) {
  if (isa(Family::Bf16) != kAmx || !cpu_runs(kAmx)) return false;
  const int64_t n_pad = (g.N + 31) / 32 * 32, k_pad = (g.K + 31) / 32 * 32;
  std::vector<Expert> xs(static_cast<size_t>(g.E));
  int64_t a_len = 0, b_len = 0;
  for (int64_t e = 0; e < g.E; ++e) {
    Expert& x = xs[static_cast<size_t>(e)];
    x.off = g.offsets[e];
    x.rows = g.offsets[e + 1] - x.off;
    x.rows_pad = (x.rows + kTileRows - 1) / kTileRows * kTileRows;
    x.a_at = a_len;
    x.b_at = b_len;
    a_len += n_pad * x.rows_pad;
    b_len += k_pad * x.rows_pad;
  }
  thread_local std::vector<uint16_t> a_buf, b_buf;
  uint16_t* at = wgemm::scratch(a_buf, a_len);
  uint16_t* bt = wgemm::scratch(b_buf, b_len);
  // Packing: parallel over row chunks of every expert (32 rows: one tile step).
  std::vector<std::pair<int64_t, int64_t>> chunks;  // (expert, first row)
  for (int64_t e = 0; e < g.E; ++e)
    for (int64_t p = 0; p < xs[static_cast<size_t>(e)].rows_pad; p += kTileRows) chunks.push_back({e, p});
  parallel_items(static_cast<int64_t>(chunks.size()), [&](int64_t c) {
    const auto [e, p0] = chunks[static_cast<size_t>(c)];
    pack_rows_avx512(g, xs[static_cast<size_t>(e)], p0, p0 + kTileRows, n_pad, k_pad, at, bt);
  });
  if (amx_emulated()) {
    blocks<wgemm::AmxEmu>(g, xs, at, bt);
  } else {
    blocks<wgemm::AmxHw>(g, xs, at, bt);
  }
  return true;
}

}  // namespace moe::kernels::cpu
