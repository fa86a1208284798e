// CPU permute: a stable counting sort split into contiguous chunks of assignments.
//   pass 1: each chunk counts its kept assignments per expert           counts (C, E)
//   scan:   offsets, and each chunk's first slot per expert             base (C, E)
//   pass 2: each chunk places its assignments in index order from base
// Chunk c's slots for expert e follow those of chunks < c, so the order within an expert is the
// assignment order (stable), whatever the number of chunks. Integer only: exact.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "kernels/cpu/cpu.h"
#include "moe/core/parallel.h"

namespace moe::kernels::cpu {

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
}

}  // namespace moe::kernels::cpu
