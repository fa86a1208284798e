// A streaming read of a large buffer (include/moe/core/membw.h). Each thread sums its own part
// with eight independent 64-bit lanes, which compilers turn into vector adds: the loop is bound by
// the loads, so its rate is the rate at which memory delivers them.
#include "moe/core/membw.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <memory>

#include "moe/core/error.h"
#include "moe/core/parallel.h"

namespace moe {

namespace {

// Cloned per instruction set (chosen when the library loads): wider loads reach a higher rate on
// one core, and the ceiling should be the machine's, not the baseline ISA's.
#if defined(__x86_64__) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define MOE_WIDEST_LOADS __attribute__((target_clones("avx512f", "avx2", "default")))
#endif
#endif
#ifndef MOE_WIDEST_LOADS
#define MOE_WIDEST_LOADS
#endif
MOE_WIDEST_LOADS uint64_t sum_words(const uint64_t* p, size_t n) {
  uint64_t a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (size_t i = 0; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) a[j] += p[i + static_cast<size_t>(j)];
  return a[0] + a[1] + a[2] + a[3] + a[4] + a[5] + a[6] + a[7];
}

}  // namespace

ReadBandwidth measure_read_bandwidth(size_t bytes, int repeats) {
  constexpr size_t kMin = size_t{1} << 20, kLine = 64;
  MOE_CHECK(bytes >= kMin, "read bandwidth: the buffer must be at least 1 MiB, got ", bytes, " bytes");
  MOE_CHECK(repeats >= 1, "read bandwidth: repeats must be >= 1, got ", repeats);
  bytes -= bytes % kLine;
  std::unique_ptr<uint64_t, decltype(&std::free)> buf(
      static_cast<uint64_t*>(std::aligned_alloc(kLine, bytes)), &std::free);
  MOE_CHECK(buf != nullptr, "read bandwidth: cannot allocate ", bytes, " bytes");
  uint64_t* p = buf.get();
  const int nt = num_threads();
  // Each thread writes the part it will read (first touch places its pages near that thread): the
  // parts are fixed by the thread number, so every repeat reads the same part on the same thread.
  const int64_t lines = static_cast<int64_t>(bytes / kLine), per = kLine / sizeof(uint64_t);
  auto part = [&](int64_t t, int64_t& b, int64_t& e) {
    b = lines * t / nt * per;
    e = lines * (t + 1) / nt * per;
  };
#pragma omp parallel num_threads(nt)
  {
    for (int t = omp_get_thread_num(); t < nt; t += omp_get_num_threads()) {
      int64_t b = 0, e = 0;
      part(t, b, e);
      for (int64_t i = b; i < e; ++i) p[i] = static_cast<uint64_t>(i);
    }
  }
  ReadBandwidth r;
  r.bytes = bytes, r.threads = nt, r.repeats = repeats;
  volatile uint64_t sink = 0;
  for (int rep = 0; rep < repeats; ++rep) {
    uint64_t sums[kMaxThreadCount] = {};
    const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(nt)
    {
      for (int t = omp_get_thread_num(); t < nt; t += omp_get_num_threads()) {
        int64_t b = 0, e = 0;
        part(t, b, e);
        sums[t] = sum_words(p + b, static_cast<size_t>(e - b));
      }
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    for (int t = 0; t < nt; ++t) sink = sink + sums[t];
    if (s > 0) r.gb_per_s = std::max(r.gb_per_s, static_cast<double>(bytes) / s / 1e9);
  }
  return r;
}

}  // namespace moe
