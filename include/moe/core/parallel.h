// Threading: a pool of worker threads per calling thread, a settable thread count, and chunks whose
// bounds depend only on (n, thread count), so that what each chunk computes never depends on which
// thread runs it. Kernels keep results independent of the thread count by giving each output element
// exactly one owner with a fixed reduction order.
//
// Why not OpenMP's parallel regions: a decode step of a model runs ~100 short regions (one per GEMM,
// attention, ...), a few microseconds to a few hundred each. libgomp's workers spin between regions
// only while its threads do not outnumber the cores; the serving engine's thread and the thread that
// loaded the model each own a team, so they do, and every region then wakes sleeping workers through
// the kernel (15% of a decode step on 2 cores). When they spin, a worker that the OS has descheduled
// (another process on the machine) holds the whole team at the region's barrier for a time slice.
// This pool's workers spin for a bounded time (kSpinMicros) before they sleep, and chunks are claimed
// by whichever thread comes first: the calling thread takes the chunks of a worker that has not
// started, so nobody waits for a descheduled thread unless it holds a chunk.
#pragma once

#include <cstdint>
#include <type_traits>

namespace moe {

// Sets the number of threads used by library kernels (>= 1). Throws moe::Error on n < 1.
// The most threads the library runs (MOE_NUM_THREADS beyond it is clamped, set_num_threads refuses).
inline constexpr int kMaxThreadCount = 1024;
void set_num_threads(int n);
int num_threads();

// True inside a chunk or item of parallel_for / parallel_items (nested calls run inline).
bool in_parallel();

namespace detail {
// Runs body(ctx, c) for every c in [0, chunks) on the calling thread's pool with at most `threads`
// threads (the caller included); returns when all have run. The first exception thrown by a chunk is
// rethrown here after every chunk has finished.
void run_chunks(int64_t chunks, int threads, void (*body)(const void* ctx, int64_t c), const void* ctx);
}  // namespace detail

// Runs fn(begin, end) over [0, n) split into contiguous chunks of at least `grain` items, at most
// one chunk per thread (chunk c is [n·c/chunks, n·(c+1)/chunks)). Runs inline when n is small, one
// thread is set, or inside another parallel_for / parallel_items.
template <typename F>
void parallel_for(int64_t n, int64_t grain, F&& fn) {
  if (n <= 0) return;
  const int64_t g = grain < 1 ? 1 : grain;
  int64_t chunks = (n + g - 1) / g;
  const int nt = num_threads();
  if (chunks > nt) chunks = nt;
  if (chunks <= 1 || in_parallel()) {
    fn(int64_t{0}, n);
    return;
  }
  using Fn = std::remove_reference_t<F>;
  struct Ctx {
    Fn* fn;
    int64_t n, chunks;
  } ctx{&fn, n, chunks};
  detail::run_chunks(
      chunks, static_cast<int>(chunks),
      [](const void* p, int64_t c) {
        const Ctx& x = *static_cast<const Ctx*>(p);
        const int64_t b = x.n * c / x.chunks, e = x.n * (c + 1) / x.chunks;
        if (b < e) (*x.fn)(b, e);
      },
      &ctx);
}

// Like parallel_for but each item i in [0, n) is one unit of work, claimed by the next free thread:
// for uneven work (experts with different token counts). fn(i) must own its outputs.
template <typename F>
void parallel_items(int64_t n, F&& fn) {
  if (n <= 0) return;
  const int nt = num_threads();
  if (nt <= 1 || n == 1 || in_parallel()) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  using Fn = std::remove_reference_t<F>;
  detail::run_chunks(
      n, nt, [](const void* p, int64_t i) { (*static_cast<Fn*>(const_cast<void*>(p)))(i); },
      static_cast<const void*>(&fn));
}

}  // namespace moe
