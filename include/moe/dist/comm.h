// Communicators for expert and data parallelism: one interface, implemented on existing
// distributed engines (Open MPI for host memory, NCCL for GPU memory) and by a world of one.
//
// Every call is a collective over the communicator's ranks: all ranks call the same operations in
// the same order (a rank with nothing to send still calls). Buffers are host memory for "self" and
// "mpi", device memory for "nccl". Counts are in elements of `dtype`.
//
// Faults: every blocking call waits at most timeout_s() seconds (set_timeout; 0 = forever). A peer
// that never answers, or a rank that died, makes the call throw dist::CommError naming the
// operation, the communicator and the time waited, so the caller can stop with a clear message
// instead of hanging. After a CommError the communicator is unusable: the process should report the
// error and exit (abort_job() tells the engine to bring the other ranks down too).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "moe/core/dtype.h"
#include "moe/core/error.h"

namespace moe::dist {

class CommError : public Error {
 public:
  using Error::Error;
};

enum class ReduceOp { Sum, Max, Min };

// Bytes and time of the calls made through one communicator (this rank's view).
struct CommStats {
  int64_t alltoall_calls = 0;
  int64_t alltoall_bytes_sent = 0;      // payload sent to OTHER ranks (the self block is not counted)
  int64_t alltoall_bytes_received = 0;  // payload received from other ranks
  double alltoall_s = 0;                // wall time inside alltoallv (counts exchange included)
  int64_t allreduce_calls = 0;
  int64_t allreduce_bytes = 0;  // elements · size of the buffers reduced
  double allreduce_s = 0;
  int64_t broadcast_calls = 0;
  double broadcast_s = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string backend() const = 0;  // "self", "mpi", "nccl", "hierarchical(mpi)"
  virtual std::string name() const = 0;     // e.g. "world", "ep", "dp", for messages

  // All-to-all with per-rank counts. send holds size() blocks back to back, block j (send_counts[j]
  // elements) going to rank j; recv receives block i (recv_counts[i] elements) from rank i, back to
  // back in rank order. recv_counts must be what the peers send (use exchange_counts first).
  virtual void alltoallv(const void* send, const std::vector<int64_t>& send_counts, void* recv,
                         const std::vector<int64_t>& recv_counts, DType dtype) = 0;
  // recv_counts[i] = send_counts[j = rank()] of rank i: one int64 to every rank (host vectors,
  // for every backend).
  virtual std::vector<int64_t> exchange_counts(const std::vector<int64_t>& send_counts) = 0;
  // In place: buf (n elements) ← op over all ranks' buf. Sum of f32/f64 is taken in rank order
  // where the engine allows it (the MPI communicator folds in rank order itself, on any number of
  // hosts: same bits on every rank and run; NCCL sums in its own order: do not rely on it across
  // engines).
  virtual void allreduce(void* buf, int64_t n, DType dtype, ReduceOp op) = 0;
  // buf (n elements) ← root's buf.
  virtual void broadcast(void* buf, int64_t n, DType dtype, int root) = 0;
  // recv (size() · n elements) ← every rank's send (n elements), in rank order.
  virtual void allgather(const void* send, void* recv, int64_t n, DType dtype) = 0;
  virtual void barrier() = 0;
  // Sub-communicator of the ranks with the same color, ordered by key (then by rank). Collective.
  virtual std::unique_ptr<Communicator> split(int color, int key, const std::string& name) = 0;

  void set_timeout(double seconds) { timeout_s_ = seconds; }
  double timeout_s() const { return timeout_s_; }
  const CommStats& stats() const { return stats_; }
  void reset_stats() { stats_ = CommStats(); }

  // Brings the whole job down after a fatal error on this rank (MPI_Abort for MPI; exit otherwise).
  // Never returns. For the command-line tool only; the library itself never calls it.
  [[noreturn]] virtual void abort_job(int code) = 0;

 protected:
  double timeout_s_ = 300;
  CommStats stats_;
};

// A world of one rank (no engine): alltoallv copies the self block, reductions are identities.
std::unique_ptr<Communicator> self_communicator();

// ---- Open MPI ----
// True when the library was built with MPI (Debian's libopenmpi-dev).
bool mpi_compiled();
// True when this process was started by mpirun/mpiexec (environment variables of Open MPI / PMIx),
// so a caller can choose between the MPI world and self_communicator() without initialising MPI.
bool launched_by_mpi();
// The MPI world (MPI_COMM_WORLD), initialising MPI on first use (MPI_THREAD_MULTIPLE when
// available, else MPI_THREAD_SERIALIZED) and finalising it at process exit. Throws when MPI was
// not compiled in.
std::shared_ptr<Communicator> mpi_world();
// True once mpi_world() has initialised MPI with MPI_THREAD_MULTIPLE: then different threads may
// call collectives at the same time, each on its own communicator. Otherwise (MPI_THREAD_SERIALIZED
// or less) only one thread at a time may call into any MPI communicator.
bool mpi_thread_multiple();

// ---- NCCL ----
bool nccl_compiled();
// A NCCL communicator over the same ranks as `bootstrap` (which broadcasts the NCCL unique id), on
// CUDA device `device`; buffers are device memory. Throws when NCCL was not compiled in or no GPU is
// present.
std::unique_ptr<Communicator> nccl_communicator(Communicator& bootstrap, int device);

// ---- Hierarchical all-to-all ----
// Wraps `world` (ranks laid out node-major: rank = node · ranks_per_node + local) so that alltoallv
// runs in two stages: inside each node first (every rank gathers what its node sends to the ranks
// with its local index on every node), then across nodes between ranks of equal local index. Each
// pair of nodes then exchanges one large message per local index instead of ranks_per_node² small
// ones. Results equal the flat alltoallv. Other calls pass through to `world`.
// ranks_per_node must divide world.size(); 0 = detect from the engine (ranks sharing memory).
std::unique_ptr<Communicator> hierarchical(std::shared_ptr<Communicator> world, int ranks_per_node = 0);

// ---- Expert-parallel × data-parallel groups ----
// world = ep · dp ranks; rank = dp_rank · ep + ep_rank (an expert-parallel group is ep consecutive
// ranks, so it stays inside a node when ep ≤ ranks per node). The ep group shards the experts; the
// dp group holds the replicas of one expert shard (their expert gradients are all-reduced over it);
// non-expert parameters are replicated over the whole world.
struct ParallelGroups {
  std::shared_ptr<Communicator> world;
  std::shared_ptr<Communicator> ep;  // size ep
  std::shared_ptr<Communicator> dp;  // size world / ep
  int ep_rank() const { return ep->rank(); }
  int dp_rank() const { return dp->rank(); }
};
// Throws moe::Error unless ep >= 1 divides world->size(). hierarchical_ep: the ep group's
// all-to-all runs through hierarchical() with ranks_per_node (0 = detect).
ParallelGroups make_groups(std::shared_ptr<Communicator> world, int ep, bool hierarchical_ep = false,
                           int ranks_per_node = 0);

}  // namespace moe::dist
