// CPU permute: a stable counting sort split into contiguous chunks of assignments.
//   pass 1: each chunk counts its kept assignments per expert           counts (C, E)
//   scan:   offsets, and each chunk's first slot per expert             base (C, E)
//   pass 2: each chunk places its assignments in index order from base
// Chunk c's slots for expert e follow those of chunks < c, so the order within an expert is the
// assignment order (stable), whatever the number of chunks. Integer only: exact. Then, when asked,
// the tile metadata from the offsets.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "kernels/cpu/cpu.h"
#include "moe/core/parallel.h"

namespace moe::kernels::cpu {

namespace {

// The tile metadata from the offsets: O(E + tiles), serial (a tile list is short next to N).
void tiles(const PermuteArgs& p) {
  const int64_t m = p.tile_m;
  int32_t tile = 0;  // the first tile of expert e
  if (p.tile_offsets) p.tile_offsets[0] = 0;
  for (int64_t e = 0; e < p.E; ++e) {
    const int32_t first = p.offsets[e], rows = p.offsets[e + 1] - first;
    const int32_t n = static_cast<int32_t>((rows + m - 1) / m);
    if (p.tile_expert) std::fill(p.tile_expert + tile, p.tile_expert + tile + n, static_cast<int32_t>(e));
    if (p.tile_row) {
      for (int32_t i = 0; i < n; ++i) p.tile_row[tile + i] = static_cast<int32_t>(first + i * m);
    }
    tile += n;
    if (p.tile_offsets) p.tile_offsets[e + 1] = static_cast<int32_t>(tile * m);
  }
}

}  // namespace

void permute(const PermuteArgs& p) {
  constexpr int64_t kGrain = 32768;  // assignments per chunk at least
  const int64_t E = p.E;
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(num_threads(), (p.N + kGrain - 1) / kGrain));
  auto chunk_begin = [&](int64_t c) { return p.N * c / chunks; };
  std::vector<int64_t> counts(static_cast<size_t>(chunks * E), 0);  // (C, E), then base (C, E)

  parallel_items(chunks, [&](int64_t c) {
    int64_t* cnt = counts.data() + c * E;
    for (int64_t a = chunk_begin(c); a < chunk_begin(c + 1); ++a) {
      if (p.kept == nullptr || p.kept[a] != 0) ++cnt[p.expert[a]];
    }
  });

  int64_t slot = 0;
  for (int64_t e = 0; e < E; ++e) {
    p.offsets[e] = static_cast<int32_t>(slot);
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t n = counts[c * E + e];
      counts[c * E + e] = slot;
      slot += n;
    }
  }
  p.offsets[E] = static_cast<int32_t>(slot);

  parallel_items(chunks, [&](int64_t c) {
    int64_t* next = counts.data() + c * E;
    for (int64_t a = chunk_begin(c); a < chunk_begin(c + 1); ++a) {
      if (p.kept != nullptr && p.kept[a] == 0) {
        p.pos[a] = -1;
        continue;
      }
      const int64_t s = next[p.expert[a]]++;
      p.perm[s] = static_cast<int32_t>(a);
      p.pos[a] = static_cast<int32_t>(s);
    }
  });
  if (p.tile_m > 0) tiles(p);
}

}  // namespace moe::kernels::cpu
