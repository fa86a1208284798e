// The machine's memory read bandwidth, measured in the calling process: a streaming sum over a
// buffer far larger than the caches, on the library's threads (a STREAM-like read). Benchmarks
// print it next to the bandwidth their work achieves, so a figure is read against this machine's
// ceiling measured in the same run, not against a datasheet.
#pragma once

#include <cstddef>

namespace moe {

struct ReadBandwidth {
  double gb_per_s = 0;  // best of the repeats, 1 GB = 1e9 bytes
  size_t bytes = 0;     // buffer read per repeat
  int threads = 0;
  int repeats = 0;
};

// Fills a buffer of `bytes` (rounded down to whole cache lines, at least 1 MiB), then reads it
// `repeats` times with num_threads() threads, each thread its own contiguous part, and keeps the
// fastest repeat. Throws moe::Error when bytes < 1 MiB, repeats < 1 or the buffer cannot be allocated.
ReadBandwidth measure_read_bandwidth(size_t bytes, int repeats = 5);

}  // namespace moe
