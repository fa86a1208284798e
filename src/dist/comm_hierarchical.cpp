// Two-stage all-to-all (see hierarchical() in moe/dist/comm.h).
//
// World of W = N · L ranks, rank = node · L + local. A block b(s -> d) goes from rank s = (n, l) to
// rank d = (dn, dl). Stage 1 runs inside each node: rank (n, l) sends to (n, dl) every block it has
// for the ranks (·, dl), ordered by destination node. Rank (n, dl) then holds b((n, l) -> (dn, dl))
// for all l and dn, ordered (l, dn); it reorders them to (dn, l) and stage 2 runs between the ranks
// of local index dl on every node: (n, dl) sends to (dn, dl) the blocks b((n, l) -> (dn, dl)) for
// l = 0..L-1. (dn, dl) receives them ordered (n, l), which is the flat rank order: they land in
// `recv` directly, equal to the flat alltoallv. The block sizes stage 1 delivers come from a small
// count exchange inside the node (N int64 per pair of local ranks) before it.
//
// Costs: two copies of the send payload on the host (stage-1 packing and the reordering), and every
// block that leaves the node crosses the node's memory twice. Host memory only. With one rank per
// node (L = 1) or one node (N = 1) there is only one stage: the flat alltoallv over the ranks of the
// other stage, which are then all ranks in order.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>

#include "dist/comm_mpi.h"
#include "dist/comm_util.h"
#include "moe/dist/comm.h"

namespace moe::dist {
namespace {

using Clock = std::chrono::steady_clock;

// Adds what `world` did during one pass-through call to `stats`.
class StatsDelta {
 public:
  StatsDelta(const Communicator& world, CommStats& stats)
      : world_(world), stats_(stats), before_(world.stats()) {}
  ~StatsDelta() {
    const CommStats& a = world_.stats();
    stats_.alltoall_calls += a.alltoall_calls - before_.alltoall_calls;
    stats_.alltoall_bytes_sent += a.alltoall_bytes_sent - before_.alltoall_bytes_sent;
    stats_.alltoall_bytes_received += a.alltoall_bytes_received - before_.alltoall_bytes_received;
    stats_.alltoall_s += a.alltoall_s - before_.alltoall_s;
    stats_.allreduce_calls += a.allreduce_calls - before_.allreduce_calls;
    stats_.allreduce_bytes += a.allreduce_bytes - before_.allreduce_bytes;
    stats_.allreduce_s += a.allreduce_s - before_.allreduce_s;
    stats_.broadcast_calls += a.broadcast_calls - before_.broadcast_calls;
    stats_.broadcast_s += a.broadcast_s - before_.broadcast_s;
  }
  StatsDelta(const StatsDelta&) = delete;
  StatsDelta& operator=(const StatsDelta&) = delete;

 private:
  const Communicator& world_;
  CommStats& stats_;
  CommStats before_;
};

class HierarchicalCommunicator final : public Communicator {
 public:
  HierarchicalCommunicator(std::shared_ptr<Communicator> world, int ranks_per_node)
      : world_(std::move(world)), per_node_(ranks_per_node) {
    timeout_s_ = world_->timeout_s();
    const int r = world_->rank();
    node_ = world_->split(r / per_node_, r % per_node_, world_->name() + "/node");
    cross_ = world_->split(r % per_node_, r / per_node_, world_->name() + "/cross");
  }

  int rank() const override { return world_->rank(); }
  int size() const override { return world_->size(); }
  std::string backend() const override { return "hierarchical(" + world_->backend() + ")"; }
  std::string name() const override { return world_->name(); }

  void alltoallv(const void* send, const std::vector<int64_t>& send_counts, void* recv,
                 const std::vector<int64_t>& recv_counts, DType dtype) override {
    const auto t0 = Clock::now();
    const int64_t elem = detail::check_alltoallv(*this, send, send_counts, recv, recv_counts, dtype);
    const int L = per_node_, N = size() / per_node_;
    if (L == 1 || N == 1) {  // one stage is all of it: the other communicator is the world in rank order
      Communicator* only = L == 1 ? cross_.get() : node_.get();
      sync_timeout(only, t0);
      only->alltoallv(send, send_counts, recv, recv_counts, dtype);
      account(send_counts, recv_counts, elem, t0);
      return;
    }

    // Counts: cnt (L, N), cnt[l][dn] = size of b((my_node, l) -> (dn, my_local)).
    std::vector<int64_t> mine(static_cast<size_t>(L) * N);  // (L, N): my counts grouped by local index
    for (int dl = 0; dl < L; ++dl) {
      for (int dn = 0; dn < N; ++dn) mine[dl * N + dn] = send_counts[dn * L + dl];
    }
    std::vector<int64_t> cnt(static_cast<size_t>(L) * N);
    sync_timeout(node_.get(), t0);
    node_->alltoallv(mine.data(), std::vector<int64_t>(L, N), cnt.data(), std::vector<int64_t>(L, N),
                     DType::I64);

    // Stage 1: pack my blocks ordered (dl, dn) and exchange inside the node.
    const std::vector<int64_t> soff = detail::prefix_offsets(send_counts);
    std::vector<int64_t> s1_counts(L, 0), r1_counts(L, 0);
    for (int dl = 0; dl < L; ++dl) {
      for (int dn = 0; dn < N; ++dn) {
        s1_counts[dl] += send_counts[dn * L + dl];
        r1_counts[dl] += cnt[dl * N + dn];
      }
    }
    const int64_t total_send = soff.back(), total_mid = detail::prefix_offsets(r1_counts).back();
    pack_.resize(static_cast<size_t>(std::max<int64_t>(total_send * elem, 1)));
    const char* src = static_cast<const char*>(send);
    int64_t pos = 0;
    for (int dl = 0; dl < L; ++dl) {
      for (int dn = 0; dn < N; ++dn) {
        const int d = dn * L + dl;
        if (send_counts[d] > 0)
          std::memcpy(pack_.data() + pos, src + soff[d] * elem, static_cast<size_t>(send_counts[d] * elem));
        pos += send_counts[d] * elem;
      }
    }
    mid_.resize(static_cast<size_t>(std::max<int64_t>(total_mid * elem, 1)));
    sync_timeout(node_.get(), t0);
    node_->alltoallv(pack_.data(), s1_counts, mid_.data(), r1_counts, dtype);

    // Reorder (l, dn) -> (dn, l) for stage 2.
    std::vector<int64_t> mid_off(static_cast<size_t>(L) * N + 1, 0);  // offsets of the (l, dn) blocks in mid_
    for (int i = 0; i < L * N; ++i) mid_off[i + 1] = mid_off[i] + cnt[i];
    pack_.resize(static_cast<size_t>(std::max<int64_t>(total_mid * elem, 1)));
    std::vector<int64_t> s2_counts(N, 0), r2_counts(N, 0);
    pos = 0;
    for (int dn = 0; dn < N; ++dn) {
      for (int l = 0; l < L; ++l) {
        const int64_t c = cnt[l * N + dn];
        if (c > 0)
          std::memcpy(pack_.data() + pos, mid_.data() + mid_off[l * N + dn] * elem,
                      static_cast<size_t>(c * elem));
        pos += c * elem;
        s2_counts[dn] += c;
        r2_counts[dn] += recv_counts[dn * L + l];
      }
    }
    // Stage 2: between the ranks of my local index on every node, straight into recv.
    sync_timeout(cross_.get(), t0);
    cross_->alltoallv(pack_.data(), s2_counts, recv, r2_counts, dtype);

    account(send_counts, recv_counts, elem, t0);
  }

  std::vector<int64_t> exchange_counts(const std::vector<int64_t>& send_counts) override {
    world_->set_timeout(timeout_s_);
    StatsDelta d(*world_, stats_);
    return world_->exchange_counts(send_counts);
  }
  void allreduce(void* buf, int64_t n, DType dtype, ReduceOp op) override {
    world_->set_timeout(timeout_s_);
    StatsDelta d(*world_, stats_);
    world_->allreduce(buf, n, dtype, op);
  }
  void broadcast(void* buf, int64_t n, DType dtype, int root) override {
    world_->set_timeout(timeout_s_);
    StatsDelta d(*world_, stats_);
    world_->broadcast(buf, n, dtype, root);
  }
  void allgather(const void* send, void* recv, int64_t n, DType dtype) override {
    world_->set_timeout(timeout_s_);
    StatsDelta d(*world_, stats_);
    world_->allgather(send, recv, n, dtype);
  }
  void barrier() override {
    world_->set_timeout(timeout_s_);
    world_->barrier();
  }
  // The sub-communicator is a plain one of the wrapped engine (not hierarchical).
  std::unique_ptr<Communicator> split(int color, int key, const std::string& name) override {
    world_->set_timeout(timeout_s_);
    return world_->split(color, key, name);
  }
  [[noreturn]] void abort_job(int code) override {
    world_->abort_job(code);
    std::_Exit(code);  // not reached: abort_job never returns
  }

 private:
  // Stats of one alltoallv as the flat exchange it stands for (payload to and from other ranks).
  void account(const std::vector<int64_t>& send_counts, const std::vector<int64_t>& recv_counts, int64_t elem,
               Clock::time_point t0) {
    detail::record_alltoall(stats_, send_counts, recv_counts, rank(), elem, detail::seconds_since(t0));
  }

  // The inner calls share what is left of this call's timeout.
  void sync_timeout(Communicator* inner, Clock::time_point t0) const {
    if (timeout_s_ <= 0) {
      inner->set_timeout(0);
      return;
    }
    inner->set_timeout(std::max(timeout_s_ - detail::seconds_since(t0), 1e-6));
  }

  std::shared_ptr<Communicator> world_;
  int per_node_;
  std::unique_ptr<Communicator> node_;   // the ranks of my node, by local index
  std::unique_ptr<Communicator> cross_;  // the ranks of my local index, by node
  std::vector<char> pack_, mid_;         // staging buffers, kept between calls
};

}  // namespace

std::unique_ptr<Communicator> hierarchical(std::shared_ptr<Communicator> world, int ranks_per_node) {
  MOE_CHECK(world != nullptr, "dist: hierarchical(): world is null");
  MOE_CHECK(world->backend() != "nccl", "dist: hierarchical(): communicator '", world->name(),
            "' is nccl (device memory); the two-stage all-to-all stages through host memory (self, mpi)");
  MOE_CHECK(ranks_per_node >= 0, "dist: hierarchical(): ranks_per_node = ", ranks_per_node, " is negative");
  int per_node = ranks_per_node;
  if (per_node == 0) {
    per_node = detail::mpi_ranks_per_node(*world);
    if (per_node == 0) {
      MOE_CHECK(world->size() == 1,
                "dist: hierarchical(): cannot detect the ranks per node of communicator '", world->name(),
                "' (", world->backend(), "); pass ranks_per_node");
      per_node = 1;
    }
  }
  MOE_CHECK(world->size() % per_node == 0, "dist: hierarchical(): ranks_per_node = ", per_node,
            " does not divide the size of communicator '", world->name(), "' (", world->size(), ")");
  return std::make_unique<HierarchicalCommunicator>(std::move(world), per_node);
}

}  // namespace moe::dist
