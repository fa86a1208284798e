#include "cli/ep_flags.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <thread>

#include "cli/common.h"
#include "moe/core/error.h"
#include "moe/core/parallel.h"

namespace moe::cli {

void add_ep_flags(CLI::App* c, EpFlags& f) {
  c->add_option("--expert-parallel", f.n,
                "Shard the routed experts over N ranks started by `mpirun -np N` (rank 0 leads; each rank "
                "reads only its experts and a replica of the dense parts)")
      ->check(in_range(1, 1 << 16))
      ->capture_default_str();
  c->add_option("--comm-timeout", f.timeout_s,
                "Expert parallelism: seconds a rank waits for the others before the job fails (0 = forever)")
      ->check(in_range(0, 1e9))
      ->capture_default_str();
}

std::shared_ptr<dist::Communicator> ep_world(const EpFlags& f, int threads) {
  if (!dist::launched_by_mpi()) {
    MOE_CHECK(f.n == 1, "--expert-parallel ", f.n, " needs that many processes: start it with `mpirun -np ",
              f.n, " moe ... --expert-parallel ", f.n, "`");
    apply_threads(threads);
    return nullptr;
  }
  MOE_CHECK(dist::mpi_compiled(), "--expert-parallel: this build has no MPI");
  std::shared_ptr<dist::Communicator> world = dist::mpi_world();
  MOE_CHECK(world->size() == f.n, "--expert-parallel ", f.n, " must equal the number of processes (",
            world->size(), ")");
  world->set_timeout(f.timeout_s);
  if (threads > 0) {
    apply_threads(threads);
  } else if (const char* local = std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE")) {
    // The cores shared by the ranks of this node.
    const int per_node = std::max(1, std::atoi(local));
    const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    set_num_threads(std::max(1, cores / per_node));
  }
  if (f.n == 1) return nullptr;
  return world;
}

int with_ep_ranks(const EpFlags& f, int threads,
                  const std::function<int(std::shared_ptr<dist::Communicator>)>& body) {
  std::shared_ptr<dist::Communicator> ranks = ep_world(f, threads);
  if (!ranks) return body(nullptr);
  try {
    return body(ranks);
  } catch (const std::exception& e) {
    std::string msg = cat("moe: error: rank ", ranks->rank(), " of ", ranks->size(), ": ", e.what());
    std::replace(msg.begin(), msg.end(), '\n', ' ');
    msg += '\n';
    std::fputs(msg.c_str(), stderr);  // one write, so that mpirun forwards the line whole
    std::fflush(stderr);
    ranks->abort_job(dynamic_cast<const dist::CommError*>(&e) ? kExitFailure : kExitUsage);
  }
  return kExitFailure;  // not reached: abort_job does not return
}

int run_follower(infer::Lockstep& ls, const model::Transformer& m) {
  ls.follow(m);
  return kExitOk;
}

}  // namespace moe::cli
