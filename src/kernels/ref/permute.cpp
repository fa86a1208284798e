// Reference permute: a stable counting sort of assignments by expert id, then the tile metadata.
#include <cstdint>
#include <vector>

#include "kernels/ref/ref.h"

namespace moe::kernels::ref {

void permute(const PermuteArgs& p) {
  // Count the kept assignments of each expert.
  std::vector<int64_t> count(static_cast<size_t>(p.E), 0);  // (E)
  for (int64_t a = 0; a < p.N; ++a) {
    if (p.kept == nullptr || p.kept[a] != 0) ++count[static_cast<size_t>(p.expert[a])];
  }
  // Exclusive prefix sum: the first sorted position of each expert.
  p.offsets[0] = 0;
  for (int64_t e = 0; e < p.E; ++e) p.offsets[e + 1] = static_cast<int32_t>(p.offsets[e] + count[e]);
  // Place assignments in index order, so each expert's list keeps the original order.
  std::vector<int64_t> next(p.offsets, p.offsets + p.E);  // (E) next free position per expert
  for (int64_t a = 0; a < p.N; ++a) {
    if (p.kept != nullptr && p.kept[a] == 0) {
      p.pos[a] = -1;
      continue;
    }
    const int64_t slot = next[static_cast<size_t>(p.expert[a])]++;
    p.perm[slot] = static_cast<int32_t>(a);
    p.pos[a] = static_cast<int32_t>(slot);
  }
  // Tile metadata: expert by expert, its rows cut into tiles of tile_m from its first sorted row.
  if (p.tile_m <= 0) return;
  int64_t tiles = 0;  // tiles of the experts before e
  if (p.tile_offsets) p.tile_offsets[0] = 0;
  for (int64_t e = 0; e < p.E; ++e) {
    const int64_t rows = p.offsets[e + 1] - p.offsets[e];
    const int64_t n = (rows + p.tile_m - 1) / p.tile_m;  // the expert's tiles
    for (int64_t i = 0; i < n; ++i) {
      if (p.tile_expert) p.tile_expert[tiles + i] = static_cast<int32_t>(e);
      if (p.tile_row) p.tile_row[tiles + i] = static_cast<int32_t>(p.offsets[e] + i * p.tile_m);
    }
    tiles += n;
    if (p.tile_offsets) p.tile_offsets[e + 1] = static_cast<int32_t>(tiles * p.tile_m);
  }
}

}  // namespace moe::kernels::ref
