#include "moe/core/parallel.h"

#include <atomic>
#include <cstdlib>

#include "moe/core/error.h"

namespace moe {

namespace {
int initial_threads() {
  if (const char* env = std::getenv("MOE_NUM_THREADS")) {
    const int n = std::atoi(env);
    if (n >= 1) return n;
  }
  const int n = omp_get_num_procs();
  return n >= 1 ? n : 1;
}
std::atomic<int> g_threads{initial_threads()};
}  // namespace

void set_num_threads(int n) {
  MOE_CHECK(n >= 1, "thread count must be >= 1, got ", n);
  g_threads.store(n);
}

int num_threads() { return g_threads.load(); }

}  // namespace moe
