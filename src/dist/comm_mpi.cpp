// The MPI communicator (Open MPI; host memory).
//
// Every collective is nonblocking MPI calls (MPI_Iallreduce, MPI_Ibcast, MPI_Iallgather, MPI_Ialltoall,
// MPI_Ibarrier, MPI_Isend/MPI_Irecv) followed by a loop on MPI_Test until they complete or timeout_s() has
// passed; then dist::CommError. The loop spins for the first 50 µs, then yields the core, and after 20 ms
// sleeps 100 µs between tests, so ranks that wait long (or share cores) do not burn them.
//
// alltoallv is point-to-point (MPI_Irecv / MPI_Isend per non-empty block), so that blocks beyond int counts
// can go in pieces that both sides agree on. Counts: MPI takes int counts. Messages and collectives beyond
// mpi_count_limit() (INT_MAX) elements go in pieces; Open MPI 4.1 (Debian 12) has no large-count MPI_*_c
// calls.
//
// Sum of f32/f64 is a left fold in rank order done here ((b0 + b1) + b2 ...), not MPI_Allreduce,
// whose order of operations is up to the implementation: each rank receives every rank's copy of a
// slice of the buffer (alltoallv), folds it, and the slices are gathered back (allgatherv); small
// buffers are gathered whole and folded on every rank. Same bits on every rank and in every run.
//
// MPI is initialised on the first mpi_world() and finalised at exit, unless a call failed or timed
// out: a peer may then never reach MPI_Finalize, so the process leaves without it and mpirun ends
// the job (a rank that exits without MPI_Finalize brings the job down).
#include "dist/comm_mpi.h"

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>

#include "dist/comm_util.h"

#if defined(MOE_HAVE_MPI)
#define OMPI_SKIP_MPICXX 1  // the C API only: the deprecated C++ bindings do not build warning-free
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>
#endif

namespace moe::dist {

bool launched_by_mpi() {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"}) {
    if (std::getenv(var) != nullptr) return true;
  }
  return false;
}

namespace detail {
namespace {
int64_t g_count_limit = INT_MAX;
}
void set_mpi_count_limit(int64_t limit) {
  g_count_limit = limit <= 0 ? INT_MAX : std::min<int64_t>(limit, INT_MAX);
}
int64_t mpi_count_limit() { return g_count_limit; }
}  // namespace detail

#if !defined(MOE_HAVE_MPI)

bool mpi_compiled() { return false; }
bool mpi_thread_multiple() { return false; }
std::shared_ptr<Communicator> mpi_world() {
  throw Error("dist: this build has no MPI (configure with libopenmpi-dev installed, -DMOE_MPI=ON)");
}
namespace detail {
int mpi_ranks_per_node(Communicator&) { return 0; }
}  // namespace detail

#else  // MOE_HAVE_MPI

namespace {

using Clock = std::chrono::steady_clock;
constexpr int kAlltoallTag = 0x6d6f;  // the point-to-point messages of alltoallv

struct MpiRuntime {
  std::mutex mu;
  bool we_initialised = false;
  int thread_level = MPI_THREAD_SINGLE;
  bool failed = false;  // a call failed or timed out: do not finalise (a peer may never get there)
  std::shared_ptr<Communicator> world;
};
MpiRuntime& runtime() {
  static MpiRuntime* rt = new MpiRuntime;  // never destroyed: the exit handler and late frees use it
  return *rt;
}

void finalize_at_exit() {
  MpiRuntime& rt = runtime();
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized || !rt.we_initialised || rt.failed) return;
  MPI_Finalize();
}

std::string mpi_error_string(int rc) {
  char buf[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(rc, buf, &len) != MPI_SUCCESS) return cat("MPI error ", rc);
  return std::string(buf, static_cast<size_t>(len));
}

// A datatype of `elem` bytes, for moving data (no arithmetic).
MPI_Datatype move_type(int64_t elem) {
  switch (elem) {
    case 1:
      return MPI_BYTE;
    case 2:
      return MPI_UINT16_T;
    case 4:
      return MPI_UINT32_T;
    case 8:
      return MPI_UINT64_T;
    default:
      throw Error(cat("dist: no MPI datatype of ", elem, " bytes"));
  }
}

// The datatype MPI reduces `dtype` as, or null when MPI cannot.
MPI_Datatype reduce_type(DType dtype) {
  switch (dtype) {
    case DType::F32:
      return MPI_FLOAT;
    case DType::F64:
      return MPI_DOUBLE;
    case DType::I8:
      return MPI_INT8_T;
    case DType::I32:
      return MPI_INT32_T;
    case DType::I64:
      return MPI_INT64_T;
    case DType::U8:
      return MPI_UINT8_T;
    default:
      return MPI_DATATYPE_NULL;
  }
}

MPI_Op mpi_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum:
      return MPI_SUM;
    case ReduceOp::Max:
      return MPI_MAX;
    case ReduceOp::Min:
      return MPI_MIN;
  }
  return MPI_SUM;
}

template <typename T>
void fold_rank_order(const T* parts, int64_t len, int nparts, T* out) {  // parts (nparts, len) -> out (len)
  for (int64_t i = 0; i < len; ++i) {
    T acc = parts[i];
    for (int r = 1; r < nparts; ++r) acc += parts[r * len + i];
    out[i] = acc;
  }
}

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator(MPI_Comm comm, std::string name, bool owned)
      : comm_(comm), name_(std::move(name)), owned_(owned) {
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  }
  ~MpiCommunicator() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (owned_ && !broken_ && !finalized) MPI_Comm_free(&comm_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "mpi"; }
  std::string name() const override { return name_; }
  MPI_Comm handle() const { return comm_; }

  void alltoallv(const void* send, const std::vector<int64_t>& send_counts, void* recv,
                 const std::vector<int64_t>& recv_counts, DType dtype) override {
    const auto t0 = Clock::now();
    const int64_t elem = detail::check_alltoallv(*this, send, send_counts, recv, recv_counts, dtype);
    usable("alltoallv");
    const std::vector<int64_t> sdispl = detail::prefix_offsets(send_counts);
    const std::vector<int64_t> rdispl = detail::prefix_offsets(recv_counts);
    if (send == recv && sdispl.back() > 0) {
      throw Error(cat("dist: ", detail::describe(*this, "alltoallv"), ": send and recv are the same buffer"));
    }
    alltoallv_p2p(static_cast<const char*>(send), send_counts, sdispl, static_cast<char*>(recv), recv_counts,
                  rdispl, elem, t0);
    detail::record_alltoall(stats_, send_counts, recv_counts, rank_, elem, detail::seconds_since(t0));
  }

  std::vector<int64_t> exchange_counts(const std::vector<int64_t>& send_counts) override {
    const auto t0 = Clock::now();
    detail::check_count_vector(*this, "exchange_counts", "send_counts", send_counts);
    usable("exchange_counts");
    std::vector<int64_t> recv(static_cast<size_t>(size_), -1);
    MPI_Request req;
    check(MPI_Ialltoall(send_counts.data(), 1, MPI_INT64_T, recv.data(), 1, MPI_INT64_T, comm_, &req),
          "exchange_counts");
    wait(&req, 1, "exchange_counts", t0);
    stats_.alltoall_s += detail::seconds_since(t0);
    return recv;
  }

  void allreduce(void* buf, int64_t n, DType dtype, ReduceOp op) override {
    const auto t0 = Clock::now();
    const int64_t elem = detail::element_bytes(dtype, "allreduce");
    detail::check_buffer(*this, "allreduce", "buf", buf, n);
    MPI_Datatype t = reduce_type(dtype);
    if (t == MPI_DATATYPE_NULL) {
      throw Error(cat("dist: ", detail::describe(*this, "allreduce"), ": MPI cannot reduce ",
                      dtype_name(dtype), "; reduce in f32"));
    }
    usable("allreduce");
    if (op == ReduceOp::Sum && dtype == DType::F32) {
      rank_order_sum(static_cast<float*>(buf), n, t0);
    } else if (op == ReduceOp::Sum && dtype == DType::F64) {
      rank_order_sum(static_cast<double*>(buf), n, t0);
    } else {
      char* p = static_cast<char*>(buf);
      for (int64_t done = 0; done < n;) {
        const int64_t len = std::min(n - done, detail::mpi_count_limit());
        MPI_Request req;
        check(
            MPI_Iallreduce(MPI_IN_PLACE, p + done * elem, static_cast<int>(len), t, mpi_op(op), comm_, &req),
            "allreduce");
        wait(&req, 1, "allreduce", t0);
        done += len;
      }
    }
    stats_.allreduce_calls += 1;
    stats_.allreduce_bytes += n * elem;
    stats_.allreduce_s += detail::seconds_since(t0);
  }

  void broadcast(void* buf, int64_t n, DType dtype, int root) override {
    const auto t0 = Clock::now();
    const int64_t elem = detail::element_bytes(dtype, "broadcast");
    detail::check_buffer(*this, "broadcast", "buf", buf, n);
    detail::check_root(*this, "broadcast", root);
    usable("broadcast");
    bcast_pieces(static_cast<char*>(buf), n, elem, root, "broadcast", t0);
    stats_.broadcast_calls += 1;
    stats_.broadcast_s += detail::seconds_since(t0);
  }

  void allgather(const void* send, void* recv, int64_t n, DType dtype) override {
    const auto t0 = Clock::now();
    const int64_t elem = detail::element_bytes(dtype, "allgather");
    detail::check_buffer(*this, "allgather", "send", send, n);
    detail::check_buffer(*this, "allgather", "recv", recv, n);
    usable("allgather");
    char* out = static_cast<char*>(recv);
    if (n * size_ <= detail::mpi_count_limit()) {
      MPI_Datatype t = move_type(elem);
      MPI_Request req;
      check(MPI_Iallgather(send, static_cast<int>(n), t, out, static_cast<int>(n), t, comm_, &req),
            "allgather");
      wait(&req, 1, "allgather", t0);
    } else {  // large: every rank broadcasts its part, in pieces
      if (n > 0) std::memmove(out + rank_ * n * elem, send, static_cast<size_t>(n * elem));
      for (int r = 0; r < size_; ++r) bcast_pieces(out + r * n * elem, n, elem, r, "allgather", t0);
    }
  }

  void barrier() override {
    const auto t0 = Clock::now();
    usable("barrier");
    MPI_Request req;
    check(MPI_Ibarrier(comm_, &req), "barrier");
    wait(&req, 1, "barrier", t0);
  }

  std::unique_ptr<Communicator> split(int color, int key, const std::string& name) override {
    if (color < 0)
      throw Error(cat("dist: ", detail::describe(*this, "split"), ": color ", color, " is negative"));
    usable("split");
    barrier_named("split");  // MPI_Comm_split has no timeout: first make sure every rank is here
    MPI_Comm sub = MPI_COMM_NULL;
    check(MPI_Comm_split(comm_, color, key, &sub), "split");
    auto c = std::make_unique<MpiCommunicator>(sub, name, true);
    c->set_timeout(timeout_s());
    return c;
  }

  [[noreturn]] void abort_job(int code) override {
    std::fflush(nullptr);
    MPI_Abort(comm_, code);
    std::_Exit(code);  // MPI_Abort does not return; this satisfies [[noreturn]]
  }

  // Collective: ranks per node (see comm_mpi.h).
  int ranks_per_node() {
    const auto t0 = Clock::now();
    usable("ranks_per_node");
    barrier_named("ranks_per_node");
    MPI_Comm local = MPI_COMM_NULL;
    check(MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &local), "ranks_per_node");
    int lsize = 0, lrank = 0;
    MPI_Comm_size(local, &lsize);
    MPI_Comm_rank(local, &lrank);
    MPI_Comm_free(&local);
    const int mine[2] = {lsize, lrank};
    std::vector<int> all(static_cast<size_t>(2 * size_));
    MPI_Request req;
    check(MPI_Iallgather(mine, 2, MPI_INT, all.data(), 2, MPI_INT, comm_, &req), "ranks_per_node");
    wait(&req, 1, "ranks_per_node", t0);
    const int per_node = all[0];
    for (int r = 0; r < size_; ++r) {
      if (all[2 * r] != per_node || all[2 * r + 1] != r % per_node) {
        throw Error(cat("dist: communicator '", name_,
                        "': the ranks are not laid out node-major with equal ranks per ", "node (rank ", r,
                        " is local rank ", all[2 * r + 1], " of ", all[2 * r],
                        " on its node); pass ranks_per_node explicitly"));
      }
    }
    return per_node;
  }

 private:
  void usable(const char* op) const {
    if (broken_) {
      throw CommError(cat("dist: ", detail::describe(*this, op),
                          ": the communicator is unusable after an earlier failure or timeout"));
    }
  }

  [[noreturn]] void fail(const std::string& msg) {
    broken_ = true;
    std::lock_guard<std::mutex> lk(runtime().mu);
    runtime().failed = true;
    throw CommError(msg);
  }

  void check(int rc, const char* op) {
    if (rc != MPI_SUCCESS)
      fail(cat("dist: ", detail::describe(*this, op), " failed: ", mpi_error_string(rc)));
  }

  // Tests `reqs` until all complete or timeout_s() has passed since t0 (the start of the call).
  void wait(MPI_Request* reqs, int n, const char* op, Clock::time_point t0) {
    for (;;) {
      int done = 0;
      check(MPI_Testall(n, reqs, &done, MPI_STATUSES_IGNORE), op);
      if (done) return;
      const double waited = detail::seconds_since(t0);
      if (timeout_s_ > 0 && waited >= timeout_s_) {
        fail(cat("dist: ", detail::describe(*this, op), " timed out after ", waited,
                 " s: a peer never called it, called a different collective, or died"));
      }
      if (waited > 20e-3) {
        std::this_thread::sleep_for(std::chrono::microseconds(100));
      } else if (waited > 50e-6) {
        std::this_thread::yield();
      }
    }
  }

  void barrier_named(const char* op) {
    const auto t0 = Clock::now();
    MPI_Request req;
    check(MPI_Ibarrier(comm_, &req), op);
    wait(&req, 1, op, t0);
  }

  void bcast_pieces(char* buf, int64_t n, int64_t elem, int root, const char* op, Clock::time_point t0) {
    MPI_Datatype t = move_type(elem);
    for (int64_t done = 0; done < n;) {
      const int64_t len = std::min(n - done, detail::mpi_count_limit());
      MPI_Request req;
      check(MPI_Ibcast(buf + done * elem, static_cast<int>(len), t, root, comm_, &req), op);
      wait(&req, 1, op, t0);
      done += len;
    }
  }

  // alltoallv as point-to-point messages: one per non-empty block, or several of at most
  // mpi_count_limit() bytes for a larger one. Sender and receiver both derive the pieces from the
  // block's size, so they agree without asking each other (a choice between MPI_Ialltoallv and this
  // by the counts of one rank would not: another rank's counts may differ). MPI keeps messages
  // between two ranks with one tag in order, also across successive calls. Empty blocks send nothing.
  void alltoallv_p2p(const char* send, const std::vector<int64_t>& sc, const std::vector<int64_t>& sd,
                     char* recv, const std::vector<int64_t>& rc, const std::vector<int64_t>& rd, int64_t elem,
                     Clock::time_point t0) {
    const int64_t piece = detail::mpi_count_limit();
    std::vector<MPI_Request> reqs;
    for (int k = 1; k < size_; ++k) {
      const int r = (rank_ - k + size_) % size_;
      for (int64_t off = 0; off < rc[r] * elem; off += piece) {
        const int64_t len = std::min(piece, rc[r] * elem - off);
        reqs.emplace_back();
        check(MPI_Irecv(recv + rd[r] * elem + off, static_cast<int>(len), MPI_BYTE, r, kAlltoallTag, comm_,
                        &reqs.back()),
              "alltoallv");
      }
    }
    for (int k = 1; k < size_; ++k) {  // rank + 1, rank + 2, ...: not every rank at rank 0 first
      const int r = (rank_ + k) % size_;
      for (int64_t off = 0; off < sc[r] * elem; off += piece) {
        const int64_t len = std::min(piece, sc[r] * elem - off);
        reqs.emplace_back();
        check(MPI_Isend(send + sd[r] * elem + off, static_cast<int>(len), MPI_BYTE, r, kAlltoallTag, comm_,
                        &reqs.back()),
              "alltoallv");
      }
    }
    if (sc[rank_] > 0)
      std::memcpy(recv + rd[rank_] * elem, send + sd[rank_] * elem, static_cast<size_t>(sc[rank_] * elem));
    if (!reqs.empty()) wait(reqs.data(), static_cast<int>(reqs.size()), "alltoallv", t0);
  }

  // buf (n) <- the left fold in rank order of every rank's buf, in segments of at most
  // mpi_count_limit() elements (so every count and displacement below fits an int).
  template <typename T>
  void rank_order_sum(T* buf, int64_t n, Clock::time_point t0) {
    if (size_ == 1) return;
    const int64_t seg = detail::mpi_count_limit();
    for (int64_t done = 0; done < n; done += seg)
      rank_order_sum_segment(buf + done, std::min(seg, n - done), t0);
  }

  template <typename T>
  void rank_order_sum_segment(T* buf, int64_t n, Clock::time_point t0) {
    MPI_Datatype t = move_type(sizeof(T));
    const int p = size_;
    if (n * p <=
        std::min<int64_t>(65536, detail::mpi_count_limit())) {  // small: gather whole, fold everywhere
      std::vector<T> all(static_cast<size_t>(n * p));
      MPI_Request req;
      check(MPI_Iallgather(buf, static_cast<int>(n), t, all.data(), static_cast<int>(n), t, comm_, &req),
            "allreduce");
      wait(&req, 1, "allreduce", t0);
      fold_rank_order(all.data(), n, p, buf);
      return;
    }
    // Rank q owns the slice [lo[q], lo[q + 1]) of the buffer.
    std::vector<int> lo(static_cast<size_t>(p + 1)), len(static_cast<size_t>(p));
    for (int q = 0; q <= p; ++q) lo[q] = static_cast<int>(n * q / p);
    for (int q = 0; q < p; ++q) len[q] = lo[q + 1] - lo[q];
    const int mine = len[rank_];
    std::vector<T> parts(static_cast<size_t>(mine) * p);  // (p, mine): every rank's copy of my slice
    std::vector<int> rcounts(static_cast<size_t>(p), mine), rdispl(static_cast<size_t>(p));
    for (int q = 0; q < p; ++q) rdispl[q] = q * mine;
    MPI_Request req;
    check(MPI_Ialltoallv(buf, len.data(), lo.data(), t, parts.data(), rcounts.data(), rdispl.data(), t, comm_,
                         &req),
          "allreduce");
    wait(&req, 1, "allreduce", t0);
    fold_rank_order(parts.data(), mine, p, buf + lo[rank_]);
    check(MPI_Iallgatherv(MPI_IN_PLACE, 0, t, buf, len.data(), lo.data(), t, comm_, &req), "allreduce");
    wait(&req, 1, "allreduce", t0);
  }

  MPI_Comm comm_;
  std::string name_;
  bool owned_;
  bool broken_ = false;
  int rank_ = 0;
  int size_ = 1;
};

}  // namespace

bool mpi_compiled() { return true; }

bool mpi_thread_multiple() {
  MpiRuntime& rt = runtime();
  std::lock_guard<std::mutex> lk(rt.mu);
  return rt.world != nullptr && rt.thread_level >= MPI_THREAD_MULTIPLE;
}

std::shared_ptr<Communicator> mpi_world() {
  MpiRuntime& rt = runtime();
  std::lock_guard<std::mutex> lk(rt.mu);
  if (rt.world) return rt.world;
  int finalized = 0, initialized = 0;
  MPI_Finalized(&finalized);
  if (finalized) throw Error("dist: MPI was already finalised; mpi_world() cannot start it again");
  MPI_Initialized(&initialized);
  if (!initialized) {
    int provided = MPI_THREAD_SINGLE;
    const int rc = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided);
    if (rc != MPI_SUCCESS) throw Error(cat("dist: MPI_Init_thread failed: ", mpi_error_string(rc)));
    rt.we_initialised = true;
    rt.thread_level = provided;
    std::atexit(finalize_at_exit);
  } else {
    MPI_Query_thread(&rt.thread_level);
  }
  // Errors come back as return codes (turned into CommError) instead of aborting the job.
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  rt.world = std::make_shared<MpiCommunicator>(MPI_COMM_WORLD, "world", false);
  return rt.world;
}

namespace detail {
int mpi_ranks_per_node(Communicator& comm) {
  auto* mpi = dynamic_cast<MpiCommunicator*>(&comm);
  return mpi == nullptr ? 0 : mpi->ranks_per_node();
}
}  // namespace detail

#endif  // MOE_HAVE_MPI

}  // namespace moe::dist
