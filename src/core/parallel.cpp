#include "moe/core/parallel.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>

#include "moe/core/error.h"

namespace moe {

namespace {
int initial_threads() {
  if (const char* env = std::getenv("MOE_NUM_THREADS")) {
    const int n = std::atoi(env);
    if (n >= 1) return std::min(n, kMaxThreadCount);  // a typo's 100000 threads would fail in OpenMP
  }
  const int n = omp_get_num_procs();
  return n >= 1 ? n : 1;
}
std::atomic<int> g_threads{initial_threads()};
}  // namespace

void set_num_threads(int n) {
  MOE_CHECK(n >= 1 && n <= kMaxThreadCount, "thread count must be in [1, ", kMaxThreadCount, "], got ", n);
  g_threads.store(n);
}

int num_threads() { return g_threads.load(); }

}  // namespace moe
