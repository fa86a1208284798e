#include "moe/core/parallel.h"

#include <immintrin.h>
#include <linux/futex.h>
#include <omp.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

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

thread_local bool t_in_parallel = false;

// How long an idle worker polls for the next job before it sleeps, and how long the calling thread
// polls for the last chunks before it yields the core between polls. A decode step's gaps between
// jobs are a few microseconds; a worker that sleeps costs a futex wake and a reschedule per job.
constexpr auto kSpin = std::chrono::microseconds(200);
constexpr auto kYieldAfter = std::chrono::microseconds(50);

inline void cpu_relax() { _mm_pause(); }

// Sleeps while *word == expected (or until woken); wakes every sleeper on word. (The futex system call
// directly: GCC 12's std::atomic<T>::wait / notify_all can lose a wake-up.)
void futex_wait(std::atomic<uint32_t>& word, uint32_t expected) {
  static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t), "a futex is a 32-bit word");
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), FUTEX_WAIT_PRIVATE, expected, nullptr, nullptr, 0);
}
void futex_wake_all(std::atomic<uint32_t>& word) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), FUTEX_WAKE_PRIVATE, INT32_MAX, nullptr, nullptr, 0);
}

// The job slot's state in one word: epoch (24 bits) | next unclaimed chunk (20) | chunks (20). A claim
// is a compare-and-swap of the whole word, so it succeeds only on the job the claimer read.
constexpr int kChunkBits = 20;
constexpr uint64_t kChunkMask = (uint64_t{1} << kChunkBits) - 1;
constexpr int64_t kMaxChunks = int64_t{1} << kChunkBits;  // - 1 at most per job (see run_chunks)
constexpr uint64_t kEpochMask = (uint64_t{1} << 24) - 1;
inline uint64_t pack(uint64_t epoch, uint64_t next, uint64_t chunks) {
  return (epoch & kEpochMask) << (2 * kChunkBits) | next << kChunkBits | chunks;
}
inline uint64_t epoch_of(uint64_t s) { return s >> (2 * kChunkBits); }
inline uint64_t next_of(uint64_t s) { return (s >> kChunkBits) & kChunkMask; }
inline uint64_t chunks_of(uint64_t s) { return s & kChunkMask; }

std::atomic<uint64_t> g_fork_generation{0};

class Pool {
 public:
  explicit Pool(int workers) : fork_generation_(g_fork_generation.load()) {
    threads_.reserve(static_cast<size_t>(workers));
    // (each worker starts from the signal's value now: a job or a stop signalled before the thread
    // runs is then not missed)
    const uint32_t s0 = signal_.load(std::memory_order_relaxed);
    for (int i = 0; i < workers; ++i) threads_.emplace_back([this, s0] { worker(s0); });
  }
  ~Pool() {
    stop_.store(true, std::memory_order_seq_cst);
    signal_.fetch_add(1, std::memory_order_seq_cst);
    futex_wake_all(signal_);
    for (std::thread& t : threads_) t.join();
  }
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  int workers() const { return static_cast<int>(threads_.size()); }
  uint64_t fork_generation() const { return fork_generation_; }
  // After fork() the child has none of the workers: the pool is abandoned (never joined).
  void abandon() {
    for (std::thread& t : threads_) t.detach();
    threads_.clear();
  }

  void run(int64_t chunks, void (*body)(const void*, int64_t), const void* ctx) {
    // The previous job is complete (every chunk claimed and done), so nobody reads these now.
    body_ = body;
    ctx_ = ctx;
    error_ = nullptr;
    done_.store(0, std::memory_order_relaxed);
    epoch_ = (epoch_ + 1) & kEpochMask;
    state_.store(pack(epoch_, 0, static_cast<uint64_t>(chunks)), std::memory_order_release);
    signal_.fetch_add(1, std::memory_order_seq_cst);
    if (sleepers_.load(std::memory_order_seq_cst) > 0) futex_wake_all(signal_);
    work();
    // Wait for the chunks other threads claimed.
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 1; done_.load(std::memory_order_acquire) != chunks; ++i) {
      cpu_relax();
      if (i % 64 == 0 && std::chrono::steady_clock::now() - t0 > kYieldAfter) std::this_thread::yield();
    }
    if (error_) {
      std::exception_ptr e = error_;
      error_ = nullptr;
      std::rethrow_exception(e);
    }
  }

 private:
  // Claims and runs chunks of the current job until none is left.
  void work() {
    uint64_t s = state_.load(std::memory_order_acquire);
    for (;;) {
      const uint64_t next = next_of(s);
      if (next >= chunks_of(s)) return;
      if (!state_.compare_exchange_weak(s, s + (uint64_t{1} << kChunkBits), std::memory_order_acq_rel,
                                        std::memory_order_acquire))
        continue;  // s reloaded
      // The job cannot change before this chunk is done: body_ and ctx_ are the claimed job's.
      const bool outer = t_in_parallel;
      t_in_parallel = true;
      try {
        body_(ctx_, static_cast<int64_t>(next));
      } catch (...) {
        std::lock_guard<std::mutex> lk(error_mu_);
        if (!error_) error_ = std::current_exception();
      }
      t_in_parallel = outer;
      done_.fetch_add(1, std::memory_order_acq_rel);
      s = state_.load(std::memory_order_acquire);
    }
  }

  void worker(uint32_t seen) {
    t_in_parallel = true;  // a worker's own parallel_for calls run inline
    for (;;) {
      // Poll for a new job, then sleep until one is signalled.
      const auto t0 = std::chrono::steady_clock::now();
      uint32_t now = signal_.load(std::memory_order_acquire);
      for (int i = 1; now == seen; ++i) {
        cpu_relax();
        if (i % 32 == 0 && std::chrono::steady_clock::now() - t0 > kSpin) {
          sleepers_.fetch_add(1, std::memory_order_seq_cst);
          if (signal_.load(std::memory_order_seq_cst) == seen) futex_wait(signal_, seen);
          sleepers_.fetch_sub(1, std::memory_order_seq_cst);
        }
        now = signal_.load(std::memory_order_acquire);
      }
      seen = now;
      if (stop_.load(std::memory_order_acquire)) return;
      work();
    }
  }

  std::vector<std::thread> threads_;
  std::atomic<uint64_t> state_{0};
  std::atomic<int64_t> done_{0};
  std::atomic<uint32_t> signal_{0};  // bumped for every job (and at stop)
  std::atomic<int> sleepers_{0};
  std::atomic<bool> stop_{false};
  uint64_t epoch_ = 0;  // the calling thread's only
  void (*body_)(const void*, int64_t) = nullptr;
  const void* ctx_ = nullptr;
  std::mutex error_mu_;
  std::exception_ptr error_;
  uint64_t fork_generation_;
};

struct PoolHolder {
  Pool* pool = nullptr;
  ~PoolHolder() {
    if (pool && pool->fork_generation() == g_fork_generation.load()) delete pool;
  }
};
thread_local PoolHolder t_pool;

Pool& pool_of_caller(int workers) {
  static const bool registered = [] {
    pthread_atfork(nullptr, nullptr, [] { g_fork_generation.fetch_add(1); });
    return true;
  }();
  (void)registered;
  Pool*& p = t_pool.pool;
  if (p && p->fork_generation() != g_fork_generation.load()) {
    p->abandon();  // its threads are the parent's
    p = nullptr;   // (leaked: destroying it would touch the parent's mutexes)
  }
  if (p && p->workers() != workers) {
    delete p;
    p = nullptr;
  }
  if (!p) p = new Pool(workers);
  return *p;
}

}  // namespace

void set_num_threads(int n) {
  MOE_CHECK(n >= 1 && n <= kMaxThreadCount, "thread count must be in [1, ", kMaxThreadCount, "], got ", n);
  g_threads.store(n);
}

int num_threads() { return g_threads.load(); }

bool in_parallel() { return t_in_parallel; }

namespace detail {

void run_chunks(int64_t chunks, int threads, void (*body)(const void* ctx, int64_t c), const void* ctx) {
  if (chunks <= 0) return;
  if (threads <= 1 || chunks == 1 || t_in_parallel) {
    const bool outer = t_in_parallel;
    t_in_parallel = true;
    try {
      for (int64_t c = 0; c < chunks; ++c) body(ctx, c);
    } catch (...) {
      t_in_parallel = outer;
      throw;
    }
    t_in_parallel = outer;
    return;
  }
  if (chunks >= kMaxChunks) {  // more items than one job's word counts: ranges of them per chunk
    struct Range {
      int64_t n, parts;
      void (*body)(const void*, int64_t);
      const void* ctx;
    } r{chunks, kMaxChunks - 1, body, ctx};
    run_chunks(
        r.parts, threads,
        [](const void* p, int64_t c) {
          const Range& x = *static_cast<const Range*>(p);
          for (int64_t i = x.n * c / x.parts; i < x.n * (c + 1) / x.parts; ++i) x.body(x.ctx, i);
        },
        &r);
    return;
  }
  // One pool per calling thread, sized by the thread count (the job's `threads` bounds the useful
  // workers; the others find no chunk left and go back to waiting).
  pool_of_caller(std::max(num_threads(), threads) - 1).run(chunks, body, ctx);
}

}  // namespace detail

}  // namespace moe
