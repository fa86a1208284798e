// Expert-parallel × data-parallel groups (see make_groups() in moe/dist/comm.h).
#include "moe/dist/comm.h"

namespace moe::dist {

ParallelGroups make_groups(std::shared_ptr<Communicator> world, int ep, bool hierarchical_ep,
                           int ranks_per_node) {
  MOE_CHECK(world != nullptr, "dist: make_groups(): world is null");
  MOE_CHECK(ep >= 1 && world->size() % ep == 0, "dist: make_groups(): expert-parallel size ep = ", ep,
            " must be >= 1 and divide the world size ", world->size(), " (communicator '", world->name(),
            "')");
  const int rank = world->rank();
  const int ep_rank = rank % ep, dp_rank = rank / ep;  // rank = dp_rank · ep + ep_rank
  ParallelGroups g;
  g.world = world;
  std::shared_ptr<Communicator> ep_comm = world->split(dp_rank, ep_rank, "ep");
  g.dp = world->split(ep_rank, dp_rank, "dp");
  g.ep = hierarchical_ep ? std::shared_ptr<Communicator>(hierarchical(ep_comm, ranks_per_node)) : ep_comm;
  return g;
}

}  // namespace moe::dist
