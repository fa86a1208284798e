// Memory measurement helpers of the benchmarks (see bench_memory.h).
#include "cli/bench_memory.h"

#include <cstdio>
#include <cstring>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace moe::cli {

namespace {

// Reads one "Key:   1234 kB" line of /proc/self/status; -1 when absent or unreadable.
double status_kib(const char* key) {
  std::FILE* f = std::fopen("/proc/self/status", "r");
  if (!f) return -1.0;
  char line[256];
  const size_t n = std::strlen(key);
  double kib = -1.0;
  while (std::fgets(line, sizeof line, f)) {
    if (std::strncmp(line, key, n) == 0 && line[n] == ':') {
      long long v = 0;
      if (std::sscanf(line + n + 1, "%lld", &v) == 1) kib = static_cast<double>(v);
      break;
    }
  }
  std::fclose(f);
  return kib;
}

double kib_to_mib(double kib) { return kib < 0 ? kib : kib / 1024.0; }

}  // namespace

bool fix_mmap_threshold(size_t bytes) {
#if defined(__GLIBC__)
  return mallopt(M_MMAP_THRESHOLD, static_cast<int>(bytes)) == 1;
#else
  (void)bytes;
  return false;
#endif
}

double current_rss_mib() { return kib_to_mib(status_kib("VmRSS")); }
double peak_rss_hwm_mib() { return kib_to_mib(status_kib("VmHWM")); }

bool reset_peak_rss() {
  std::FILE* f = std::fopen("/proc/self/clear_refs", "w");
  if (!f) return false;
  const bool wrote = std::fputs("5", f) >= 0;
  const bool closed = std::fclose(f) == 0;  // the write reaches the kernel on flush
  return wrote && closed;
}

}  // namespace moe::cli
