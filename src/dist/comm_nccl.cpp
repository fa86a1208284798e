// The NCCL communicator (device memory).
//
// Built when CMake finds CUDA and NCCL (MOE_HAVE_NCCL). The communicator is created non-blocking
// (ncclConfig_t::blocking = 0): every NCCL call returns at once and this code polls
// ncclCommGetAsyncError (until the calls are enqueued) and cudaStreamQuery (until they ran) until
// done or timeout_s(); on timeout it aborts the NCCL communicator (ncclCommAbort) and throws
// dist::CommError.
//
//   alltoallv        ncclGroupStart, ncclSend/ncclRecv per peer with a non-empty block, ncclGroupEnd
//   exchange_counts  the counts go through a small device buffer (host -> device, one int64
//                    ncclSend/ncclRecv per peer, device -> host); the bootstrap is not kept
//   allreduce        ncclAllReduce in place (NCCL's ring/tree order: not a rank-order sum)
//   broadcast        ncclBroadcast; allgather ncclAllGather; barrier an allreduce of one int
//   split            ncclCommSplit
//
// Ordering with the caller's kernels: the communicator's stream is a blocking stream, so it waits
// for work queued before on the legacy default stream; work on other streams must be synchronised
// by the caller before the call. Every call returns after its transfers completed.
//
// What has run: tests/mpi/test_nccl.cpp and DistEngines.NcclNeedsAGpu with ONE rank on one H200
// (NCCL 2.28.3, CUDA 13.0; bootstrap over MPI and over the self communicator). With two or more ranks
// (one GPU each) it has never run: the timeout and abort paths and the multi-rank exchanges are
// untested (docs/DISTRIBUTED.md).
#include <cstdio>
#include <cstdlib>

#include "dist/comm_util.h"
#include "moe/dist/comm.h"

#if defined(MOE_HAVE_NCCL)
#include <cuda_runtime.h>
#include <nccl.h>

#include <chrono>
#include <thread>
#endif

namespace moe::dist {

#if !defined(MOE_HAVE_NCCL)

bool nccl_compiled() { return false; }
std::unique_ptr<Communicator> nccl_communicator(Communicator&, int) {
  throw Error("dist: this build has no NCCL (needs the CUDA backend and nccl.h / libnccl; -DMOE_NCCL=ON)");
}

#else  // MOE_HAVE_NCCL

namespace {

using Clock = std::chrono::steady_clock;

void cuda_check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw Error(cat("dist: nccl: ", what, ": ", cudaGetErrorString(e)));
}

ncclDataType_t nccl_type(DType dtype, const char* op) {
  switch (dtype) {
    case DType::F32:
      return ncclFloat32;
    case DType::F64:
      return ncclFloat64;
    case DType::BF16:
      return ncclBfloat16;
    case DType::F16:
      return ncclFloat16;
    case DType::I8:
      return ncclInt8;
    case DType::I32:
      return ncclInt32;
    case DType::I64:
      return ncclInt64;
    case DType::U8:
      return ncclUint8;
    default:
      throw Error(cat("dist: nccl: ", op, ": dtype ", dtype_name(dtype), " is not supported"));
  }
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum:
      return ncclSum;
    case ReduceOp::Max:
      return ncclMax;
    case ReduceOp::Min:
      return ncclMin;
  }
  return ncclSum;
}

ncclConfig_t nonblocking_config() {
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  return config;
}

// Polls a non-blocking communicator until its pending calls are enqueued; false on timeout.
// Throws on an NCCL error.
bool wait_enqueued(ncclComm_t comm, Clock::time_point t0, double timeout_s, const std::string& what) {
  for (;;) {
    ncclResult_t st = ncclSuccess;
    ncclCommGetAsyncError(comm, &st);
    if (st == ncclSuccess) return true;
    if (st != ncclInProgress) throw CommError(cat("dist: ", what, " failed: ", ncclGetErrorString(st)));
    if (timeout_s > 0 && detail::seconds_since(t0) >= timeout_s) return false;
    std::this_thread::yield();
  }
}

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(ncclComm_t comm, int device, std::string name)
      : comm_(comm), device_(device), name_(std::move(name)) {
    ncclCommUserRank(comm_, &rank_);
    ncclCommCount(comm_, &size_);
    cuda_check(cudaSetDevice(device_), "cudaSetDevice");
    cuda_check(cudaStreamCreate(&stream_), "cudaStreamCreate");  // blocking: ordered after the default stream
    cuda_check(cudaMalloc(&scratch_, sizeof(int64_t) * (2 * static_cast<size_t>(size_) + 1)), "cudaMalloc");
  }
  ~NcclCommunicator() override {
    cudaSetDevice(device_);
    if (broken_) {
      ncclCommAbort(comm_);
    } else {
      ncclCommFinalize(comm_);
      try {
        wait_enqueued(comm_, Clock::now(), timeout_s_, "finalize");
      } catch (const CommError&) {
      }
      ncclCommDestroy(comm_);
    }
    cudaFree(scratch_);
    cudaStreamDestroy(stream_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "nccl"; }
  std::string name() const override { return name_; }

  void alltoallv(const void* send, const std::vector<int64_t>& send_counts, void* recv,
                 const std::vector<int64_t>& recv_counts, DType dtype) override {
    const auto t0 = Clock::now();
    const int64_t elem = detail::check_alltoallv(*this, send, send_counts, recv, recv_counts, dtype);
    begin("alltoallv");
    const std::vector<int64_t> so = detail::prefix_offsets(send_counts),
                               ro = detail::prefix_offsets(recv_counts);
    const char* s = static_cast<const char*>(send);
    char* r = static_cast<char*>(recv);
    nccl(ncclGroupStart(), "alltoallv");
    for (int p = 0; p < size_; ++p) {
      if (send_counts[p] > 0) {
        nccl(ncclSend(s + so[p] * elem, static_cast<size_t>(send_counts[p] * elem), ncclUint8, p, comm_,
                      stream_),
             "alltoallv");
      }
      if (recv_counts[p] > 0) {
        nccl(ncclRecv(r + ro[p] * elem, static_cast<size_t>(recv_counts[p] * elem), ncclUint8, p, comm_,
                      stream_),
             "alltoallv");
      }
    }
    nccl(ncclGroupEnd(), "alltoallv");
    wait("alltoallv", t0);
    detail::record_alltoall(stats_, send_counts, recv_counts, rank_, elem, detail::seconds_since(t0));
  }

  std::vector<int64_t> exchange_counts(const std::vector<int64_t>& send_counts) override {
    const auto t0 = Clock::now();
    detail::check_count_vector(*this, "exchange_counts", "send_counts", send_counts);
    begin("exchange_counts");
    int64_t* d_send = scratch_;
    int64_t* d_recv = scratch_ + size_;
    std::vector<int64_t> out(static_cast<size_t>(size_), -1);
    cuda(
        cudaMemcpyAsync(d_send, send_counts.data(), sizeof(int64_t) * size_, cudaMemcpyHostToDevice, stream_),
        "exchange_counts");
    nccl(ncclGroupStart(), "exchange_counts");
    for (int p = 0; p < size_; ++p) {
      nccl(ncclSend(d_send + p, 1, ncclInt64, p, comm_, stream_), "exchange_counts");
      nccl(ncclRecv(d_recv + p, 1, ncclInt64, p, comm_, stream_), "exchange_counts");
    }
    nccl(ncclGroupEnd(), "exchange_counts");
    wait_enqueued_or_fail("exchange_counts", t0);
    cuda(cudaMemcpyAsync(out.data(), d_recv, sizeof(int64_t) * size_, cudaMemcpyDeviceToHost, stream_),
         "exchange_counts");
    wait("exchange_counts", t0);
    stats_.alltoall_s += detail::seconds_since(t0);
    return out;
  }

  void allreduce(void* buf, int64_t n, DType dtype, ReduceOp op) override {
    const auto t0 = Clock::now();
    const int64_t elem = detail::element_bytes(dtype, "allreduce");
    detail::check_buffer(*this, "allreduce", "buf", buf, n);
    begin("allreduce");
    nccl(ncclAllReduce(buf, buf, static_cast<size_t>(n), nccl_type(dtype, "allreduce"), nccl_op(op), comm_,
                       stream_),
         "allreduce");
    wait("allreduce", t0);
    stats_.allreduce_calls += 1;
    stats_.allreduce_bytes += n * elem;
    stats_.allreduce_s += detail::seconds_since(t0);
  }

  void broadcast(void* buf, int64_t n, DType dtype, int root) override {
    const auto t0 = Clock::now();
    detail::check_buffer(*this, "broadcast", "buf", buf, n);
    detail::check_root(*this, "broadcast", root);
    begin("broadcast");
    const int64_t elem = detail::element_bytes(dtype, "broadcast");
    nccl(ncclBroadcast(buf, buf, static_cast<size_t>(n * elem), ncclUint8, root, comm_, stream_),
         "broadcast");
    wait("broadcast", t0);
    stats_.broadcast_calls += 1;
    stats_.broadcast_s += detail::seconds_since(t0);
  }

  void allgather(const void* send, void* recv, int64_t n, DType dtype) override {
    const auto t0 = Clock::now();
    const int64_t elem = detail::element_bytes(dtype, "allgather");
    detail::check_buffer(*this, "allgather", "send", send, n);
    detail::check_buffer(*this, "allgather", "recv", recv, n);
    begin("allgather");
    nccl(ncclAllGather(send, recv, static_cast<size_t>(n * elem), ncclUint8, comm_, stream_), "allgather");
    wait("allgather", t0);
  }

  void barrier() override {
    const auto t0 = Clock::now();
    begin("barrier");
    nccl(ncclAllReduce(scratch_ + 2 * size_, scratch_ + 2 * size_, 1, ncclInt64, ncclSum, comm_, stream_),
         "barrier");
    wait("barrier", t0);
  }

  std::unique_ptr<Communicator> split(int color, int key, const std::string& name) override {
    const auto t0 = Clock::now();
    if (color < 0)
      throw Error(cat("dist: ", detail::describe(*this, "split"), ": color ", color, " is negative"));
    begin("split");
    ncclConfig_t config = nonblocking_config();
    ncclComm_t sub = nullptr;
    nccl(ncclCommSplit(comm_, color, key, &sub, &config), "split");
    wait_enqueued_or_fail("split", t0);
    if (!wait_enqueued(sub, t0, timeout_s_, detail::describe(*this, "split"))) {
      ncclCommAbort(sub);
      timed_out("split", t0);
    }
    auto c = std::make_unique<NcclCommunicator>(sub, device_, name);
    c->set_timeout(timeout_s());
    return c;
  }

  [[noreturn]] void abort_job(int code) override {
    std::fflush(nullptr);
    ncclCommAbort(comm_);
    broken_ = true;
    if (mpi_compiled() && launched_by_mpi())
      mpi_world()->abort_job(code);  // the bootstrap brings the job down
    std::exit(code);
  }

 private:
  void begin(const char* op) {
    if (broken_) {
      throw CommError(cat("dist: ", detail::describe(*this, op),
                          ": the communicator is unusable after an earlier failure or timeout"));
    }
    cuda(cudaSetDevice(device_), op);
  }
  [[noreturn]] void fail(const std::string& msg) {
    broken_ = true;
    ncclCommAbort(comm_);
    throw CommError(msg);
  }
  [[noreturn]] void timed_out(const char* op, Clock::time_point t0) {
    fail(cat("dist: ", detail::describe(*this, op), " timed out after ", detail::seconds_since(t0),
             " s: a peer never called it, called a different collective, or died"));
  }
  void nccl(ncclResult_t r, const char* op) {
    if (r != ncclSuccess && r != ncclInProgress)
      fail(cat("dist: ", detail::describe(*this, op), " failed: ", ncclGetErrorString(r)));
  }
  void cuda(cudaError_t e, const char* op) {
    if (e != cudaSuccess)
      fail(cat("dist: ", detail::describe(*this, op), " failed: ", cudaGetErrorString(e)));
  }
  void wait_enqueued_or_fail(const char* op, Clock::time_point t0) {
    bool ok = false;
    try {
      ok = wait_enqueued(comm_, t0, timeout_s_, detail::describe(*this, op));
    } catch (const CommError& e) {
      fail(e.what());
    }
    if (!ok) timed_out(op, t0);
  }
  // Until the enqueued calls ran on the stream, an NCCL error, or the timeout.
  void wait(const char* op, Clock::time_point t0) {
    wait_enqueued_or_fail(op, t0);
    for (;;) {
      const cudaError_t q = cudaStreamQuery(stream_);
      if (q == cudaSuccess) return;
      if (q != cudaErrorNotReady) cuda(q, op);
      ncclResult_t st = ncclSuccess;
      ncclCommGetAsyncError(comm_, &st);
      if (st != ncclSuccess && st != ncclInProgress)
        fail(cat("dist: ", detail::describe(*this, op), " failed: ", ncclGetErrorString(st)));
      const double waited = detail::seconds_since(t0);
      if (timeout_s_ > 0 && waited >= timeout_s_) timed_out(op, t0);
      if (waited > 20e-3) {
        std::this_thread::sleep_for(std::chrono::microseconds(100));
      } else if (waited > 50e-6) {
        std::this_thread::yield();
      }
    }
  }

  ncclComm_t comm_;
  int device_;
  std::string name_;
  int rank_ = 0;
  int size_ = 1;
  cudaStream_t stream_ = nullptr;
  int64_t* scratch_ = nullptr;  // device: counts out (size), counts in (size), barrier word (1)
  bool broken_ = false;
};

}  // namespace

bool nccl_compiled() { return true; }

std::unique_ptr<Communicator> nccl_communicator(Communicator& bootstrap, int device) {
  const auto t0 = Clock::now();
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    throw Error("dist: nccl_communicator(): no CUDA device is present");
  }
  MOE_CHECK(device >= 0 && device < count, "dist: nccl_communicator(): device ", device,
            " is not one of the ", count, " CUDA devices");
  cuda_check(cudaSetDevice(device), "cudaSetDevice");
  ncclUniqueId id{};
  if (bootstrap.rank() == 0) {
    const ncclResult_t r = ncclGetUniqueId(&id);
    if (r != ncclSuccess) throw Error(cat("dist: ncclGetUniqueId failed: ", ncclGetErrorString(r)));
  }
  bootstrap.broadcast(&id, static_cast<int64_t>(sizeof(id)), DType::U8, 0);
  ncclConfig_t config = nonblocking_config();
  ncclComm_t comm = nullptr;
  const ncclResult_t r = ncclCommInitRankConfig(&comm, bootstrap.size(), id, bootstrap.rank(), &config);
  const std::string what = cat("nccl_communicator() over '", bootstrap.name(), "' (rank ", bootstrap.rank(),
                               " of ", bootstrap.size(), ", device ", device, ")");
  if (r != ncclSuccess && r != ncclInProgress) {
    throw CommError(cat("dist: ", what, ": ncclCommInitRankConfig failed: ", ncclGetErrorString(r)));
  }
  bool ok = false;
  try {
    ok = wait_enqueued(comm, t0, bootstrap.timeout_s(), what);
  } catch (const CommError&) {
    ncclCommAbort(comm);
    throw;
  }
  if (!ok) {
    ncclCommAbort(comm);
    throw CommError(cat("dist: ", what, " timed out after ", detail::seconds_since(t0), " s"));
  }
  auto c = std::make_unique<NcclCommunicator>(comm, device, bootstrap.name());
  c->set_timeout(bootstrap.timeout_s());
  return c;
}

#endif  // MOE_HAVE_NCCL

}  // namespace moe::dist
