// Overlap of communication and compute over the parts of a batch (expert parallelism with token
// chunks): a communication thread runs send(0..n-1) back to back, then finish(c) for each part once
// compute(c) is done, while the calling thread runs compute(c) as soon as send(c) is done. So the
// exchange of part c+1 proceeds while part c's experts compute, and part c's results travel back
// while part c+1 computes. Every rank issues its collectives in the same order (all sends, then the
// finishes in part order). With one part, or threaded == false, everything runs on the calling thread
// in the order send(c), compute(c), finish(c).
//
// An exception on either side stops both and is rethrown here (the first one); collectives other
// ranks are waiting in then end by their timeout.
#pragma once

#include <condition_variable>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>

namespace moe::detail {

inline void pipeline(size_t n, bool threaded, const std::function<void(size_t)>& send,
                     const std::function<void(size_t)>& compute, const std::function<void(size_t)>& finish) {
  if (!threaded || n <= 1) {
    for (size_t c = 0; c < n; ++c) send(c), compute(c), finish(c);
    return;
  }
  std::mutex mu;
  std::condition_variable cv;
  size_t sent = 0, computed = 0;
  bool failed = false;
  std::exception_ptr comm_error, compute_error;
  std::thread comm([&] {
    try {
      for (size_t c = 0; c < n; ++c) {
        send(c);
        std::lock_guard<std::mutex> lock(mu);
        sent = c + 1;
        cv.notify_all();
      }
      for (size_t c = 0; c < n; ++c) {
        {
          std::unique_lock<std::mutex> lock(mu);
          cv.wait(lock, [&] { return computed > c || failed; });
          if (computed <= c) return;  // the compute side failed
        }
        finish(c);
      }
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu);
      comm_error = std::current_exception();
      failed = true;
      cv.notify_all();
    }
  });
  for (size_t c = 0; c < n; ++c) {
    {
      std::unique_lock<std::mutex> lock(mu);
      cv.wait(lock, [&] { return sent > c || failed; });
      if (sent <= c) break;  // the communication side failed
    }
    try {
      compute(c);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu);
      compute_error = std::current_exception();
      failed = true;
      cv.notify_all();
      break;
    }
    std::lock_guard<std::mutex> lock(mu);
    computed = c + 1;
    cv.notify_all();
  }
  comm.join();
  if (compute_error) std::rethrow_exception(compute_error);
  if (comm_error) std::rethrow_exception(comm_error);
}

}  // namespace moe::detail
