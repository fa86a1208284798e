// A world of one rank: no engine. alltoallv and allgather copy, reductions and broadcast leave the
// buffer as it is, barrier returns. Used when the process was not started by mpirun.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "dist/comm_util.h"
#include "moe/dist/comm.h"

namespace moe::dist {
namespace {

using Clock = std::chrono::steady_clock;

class SelfCommunicator final : public Communicator {
 public:
  explicit SelfCommunicator(std::string name) : name_(std::move(name)) {}

  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string backend() const override { return "self"; }
  std::string name() const override { return name_; }

  void alltoallv(const void* send, const std::vector<int64_t>& send_counts, void* recv,
                 const std::vector<int64_t>& recv_counts, DType dtype) override {
    const auto t0 = Clock::now();
    const int64_t elem = detail::check_alltoallv(*this, send, send_counts, recv, recv_counts, dtype);
    if (send_counts[0] > 0 && send != recv)
      std::memmove(recv, send, static_cast<size_t>(send_counts[0] * elem));
    stats_.alltoall_calls += 1;  // the self block is not counted in the bytes
    stats_.alltoall_s += detail::seconds_since(t0);
  }

  std::vector<int64_t> exchange_counts(const std::vector<int64_t>& send_counts) override {
    detail::check_count_vector(*this, "exchange_counts", "send_counts", send_counts);
    return send_counts;
  }

  void allreduce(void* buf, int64_t n, DType dtype, ReduceOp) override {
    const int64_t elem = detail::element_bytes(dtype, "allreduce");
    detail::check_buffer(*this, "allreduce", "buf", buf, n);
    stats_.allreduce_calls += 1;
    stats_.allreduce_bytes += n * elem;
  }

  void broadcast(void* buf, int64_t n, DType dtype, int root) override {
    detail::element_bytes(dtype, "broadcast");
    detail::check_buffer(*this, "broadcast", "buf", buf, n);
    detail::check_root(*this, "broadcast", root);
    stats_.broadcast_calls += 1;
  }

  void allgather(const void* send, void* recv, int64_t n, DType dtype) override {
    const int64_t elem = detail::element_bytes(dtype, "allgather");
    detail::check_buffer(*this, "allgather", "send", send, n);
    detail::check_buffer(*this, "allgather", "recv", recv, n);
    if (n > 0 && send != recv) std::memmove(recv, send, static_cast<size_t>(n * elem));
  }

  void barrier() override {}

  std::unique_ptr<Communicator> split(int color, int, const std::string& name) override {
    if (color < 0)
      throw Error(cat("dist: ", detail::describe(*this, "split"), ": color ", color, " is negative"));
    auto c = std::make_unique<SelfCommunicator>(name);
    c->set_timeout(timeout_s());
    return c;
  }

  [[noreturn]] void abort_job(int code) override {
    std::fflush(nullptr);
    std::exit(code);
  }

 private:
  std::string name_;
};

}  // namespace

std::unique_ptr<Communicator> self_communicator() { return std::make_unique<SelfCommunicator>("world"); }

}  // namespace moe::dist
