// The two-stage (hierarchical) all-to-all and the expert-parallel × data-parallel groups, under mpirun.
#include "mpi_testutil.h"

namespace moe::test {
namespace {

// World ranks of the members of `c`, in c's rank order.
std::vector<int32_t> members(dist::Communicator& c) {
  const int32_t me = mpi_world_comm().rank();
  std::vector<int32_t> all(static_cast<size_t>(c.size()), -1);
  c.allgather(&me, all.data(), 1, DType::I32);
  return all;
}

TEST_F(MpiTest, HierarchicalEqualsFlat) {
  const uint64_t seed = shared_seed();
  SCOPED_TRACE(cat("seed ", seed));
  for (int per_node = 1; per_node <= size(); ++per_node) {
    if (size() % per_node != 0) continue;
    SCOPED_TRACE(cat("ranks_per_node ", per_node));
    auto h = dist::hierarchical(comm_ptr(), per_node);
    EXPECT_EQ(h->backend(), "hierarchical(mpi)");
    EXPECT_EQ(h->size(), size());
    EXPECT_EQ(h->rank(), rank());
    for (int round = 0; round < 3; ++round) {
      const CountMatrix m = random_counts(size(), seed + 10 * per_node + round, 200);
      const std::vector<unsigned char> flat = run_alltoallv(comm(), m, DType::F32);
      h->reset_stats();
      const std::vector<unsigned char> two_stage = run_alltoallv(*h, m, DType::F32);
      EXPECT_EQ(flat, two_stage) << "round " << round;
      // Its stats are those of the flat exchange (payload to other ranks), not of the two stages.
      int64_t bytes = 0;
      for (int j = 0; j < size(); ++j) bytes += j == rank() ? 0 : m.at(rank(), j) * 4;
      EXPECT_EQ(h->stats().alltoall_calls, 1);
      EXPECT_EQ(h->stats().alltoall_bytes_sent, bytes);
    }
    run_alltoallv(*h, random_counts(size(), seed + 99, 3), DType::U8);  // tiny and odd-sized blocks
  }
}

TEST_F(MpiTest, HierarchicalPassesOtherCallsThrough) {
  auto h = dist::hierarchical(comm_ptr(), size() % 2 == 0 ? 2 : 1);
  h->set_timeout(33);
  double x = rank() + 1;
  h->allreduce(&x, 1, DType::F64, dist::ReduceOp::Sum);
  EXPECT_EQ(x, size() * (size() + 1) / 2.0);
  EXPECT_EQ(h->stats().allreduce_calls, 1);
  int64_t b = rank() == 0 ? 17 : -1;
  h->broadcast(&b, 1, DType::I64, 0);
  EXPECT_EQ(b, 17);
  h->barrier();
  auto sub = h->split(0, rank(), "sub");
  EXPECT_EQ(sub->backend(), "mpi");
  EXPECT_EQ(sub->timeout_s(), 33);
}

TEST_F(MpiTest, HierarchicalDetectsRanksPerNode) {
  // All ranks of these tests share one machine: detection finds one node of size() ranks.
  auto h = dist::hierarchical(comm_ptr(), 0);
  const uint64_t seed = shared_seed();
  run_alltoallv(*h, random_counts(size(), seed, 100), DType::I64);
}

TEST_F(MpiTest, HierarchicalRejectsRanksPerNodeThatDoNotDivide) {
  if (size() < 3) GTEST_SKIP() << "needs a size with a non-divisor";
  EXPECT_THROW(dist::hierarchical(comm_ptr(), size() - 1), Error);
  EXPECT_THROW(dist::hierarchical(comm_ptr(), -1), Error);
}

TEST_F(MpiTest, GroupsLayout) {
  const uint64_t seed = shared_seed();
  SCOPED_TRACE(cat("seed ", seed));
  for (int ep : {1, 2, 4}) {
    if (size() % ep != 0) continue;
    SCOPED_TRACE(cat("ep ", ep));
    const dist::ParallelGroups g = dist::make_groups(comm_ptr(), ep);
    ASSERT_EQ(g.ep->size(), ep);
    ASSERT_EQ(g.dp->size(), size() / ep);
    EXPECT_EQ(g.ep->name(), "ep");
    EXPECT_EQ(g.dp->name(), "dp");
    EXPECT_EQ(g.world.get(), comm_ptr().get());
    EXPECT_EQ(g.ep_rank(), rank() % ep);
    EXPECT_EQ(g.dp_rank(), rank() / ep);
    const int base = mpi_world_comm().rank() - rank();  // the test communicator is the world in order
    const std::vector<int32_t> ep_members = members(*g.ep), dp_members = members(*g.dp);
    for (int i = 0; i < ep; ++i) EXPECT_EQ(ep_members[i], base + g.dp_rank() * ep + i) << "ep member " << i;
    for (int i = 0; i < size() / ep; ++i)
      EXPECT_EQ(dp_members[i], base + i * ep + g.ep_rank()) << "dp member " << i;
    run_alltoallv(*g.ep, random_counts(ep, seed + ep, 50), DType::F32);
    double grad = g.ep_rank() * 100 + g.dp_rank();  // the dp group sums one shard's replicas
    g.dp->allreduce(&grad, 1, DType::F64, dist::ReduceOp::Sum);
    const int dp = size() / ep;
    EXPECT_EQ(grad, g.ep_rank() * 100.0 * dp + dp * (dp - 1) / 2.0);
  }
}

TEST_F(MpiTest, GroupsWithHierarchicalEp) {
  if (size() % 4 != 0) GTEST_SKIP() << "needs 4 ranks";
  const dist::ParallelGroups g = dist::make_groups(comm_ptr(), 4, true, 2);
  EXPECT_EQ(g.ep->backend(), "hierarchical(mpi)");
  EXPECT_EQ(g.ep->name(), "ep");
  const uint64_t seed = shared_seed();
  run_alltoallv(*g.ep, random_counts(4, seed, 80), DType::I64);
}

TEST_F(MpiTest, GroupsRejectEpThatDoesNotDivide) {
  EXPECT_THROW(dist::make_groups(comm_ptr(), 0), Error);
  EXPECT_THROW(dist::make_groups(comm_ptr(), size() + 1), Error);
  if (size() == 4) {
    EXPECT_THROW(dist::make_groups(comm_ptr(), 3), Error);
  }
}

}  // namespace
}  // namespace moe::test
