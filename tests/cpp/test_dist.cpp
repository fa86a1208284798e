// dist without an engine: the world of one rank, groups and the two-stage all-to-all on it, and the
// errors of the engines that this process did not start (no mpirun here; tests/mpi runs under it).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <limits>
#include <vector>

#include "moe/dist/comm.h"

namespace moe {
namespace {

using dist::ReduceOp;

TEST(DistSelf, IsAWorldOfOne) {
  auto c = dist::self_communicator();
  EXPECT_EQ(c->rank(), 0);
  EXPECT_EQ(c->size(), 1);
  EXPECT_EQ(c->backend(), "self");
  EXPECT_EQ(c->name(), "world");
  EXPECT_EQ(c->timeout_s(), 300);
  c->barrier();
}

TEST(DistSelf, AlltoallvCopiesTheSelfBlock) {
  auto c = dist::self_communicator();
  std::vector<float> send = {1.5f, -2.0f, 3.25f}, recv(4, std::nanf(""));
  const std::vector<int64_t> counts = {3};
  EXPECT_EQ(c->exchange_counts(counts), counts);
  c->alltoallv(send.data(), counts, recv.data(), counts, DType::F32);
  EXPECT_EQ(recv[0], 1.5f);
  EXPECT_EQ(recv[1], -2.0f);
  EXPECT_EQ(recv[2], 3.25f);
  EXPECT_TRUE(std::isnan(recv[3])) << "wrote past the block";
  EXPECT_EQ(c->stats().alltoall_calls, 1);
  EXPECT_EQ(c->stats().alltoall_bytes_sent, 0);  // the self block is not counted
  const std::vector<int64_t> none = {0};
  c->alltoallv(nullptr, none, nullptr, none, DType::F32);
}

TEST(DistSelf, ReductionsBroadcastAllgatherAreIdentities) {
  auto c = dist::self_communicator();
  std::vector<double> v = {1, 2, 3};
  for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Max, ReduceOp::Min}) c->allreduce(v.data(), 3, DType::F64, op);
  EXPECT_EQ(v, (std::vector<double>{1, 2, 3}));
  EXPECT_EQ(c->stats().allreduce_calls, 3);
  EXPECT_EQ(c->stats().allreduce_bytes, 3 * 3 * 8);
  c->broadcast(v.data(), 3, DType::F64, 0);
  EXPECT_EQ(v, (std::vector<double>{1, 2, 3}));
  EXPECT_EQ(c->stats().broadcast_calls, 1);
  std::vector<int64_t> out(2, -1);
  const int64_t in[2] = {7, 8};
  c->allgather(in, out.data(), 2, DType::I64);
  EXPECT_EQ(out, (std::vector<int64_t>{7, 8}));
  c->reset_stats();
  EXPECT_EQ(c->stats().allreduce_calls, 0);
}

TEST(DistSelf, SplitKeepsTheTimeout) {
  auto c = dist::self_communicator();
  c->set_timeout(5);
  auto s = c->split(3, 0, "ep");
  EXPECT_EQ(s->name(), "ep");
  EXPECT_EQ(s->size(), 1);
  EXPECT_EQ(s->timeout_s(), 5);
  EXPECT_THROW(c->split(-1, 0, "bad"), Error);
}

TEST(DistSelf, BadArgumentsNameTheCall) {
  auto c = dist::self_communicator();
  float x = 0;
  const std::vector<int64_t> two = {1, 1}, one = {1}, other = {2};
  try {
    c->alltoallv(&x, two, &x, one, DType::F32);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("alltoallv"), std::string::npos) << m;
    EXPECT_NE(m.find("send_counts"), std::string::npos) << m;
    EXPECT_NE(m.find("'world'"), std::string::npos) << m;
  }
  EXPECT_THROW(c->alltoallv(&x, one, &x, other, DType::F32), Error);  // recv_counts not what is sent
  EXPECT_THROW(c->alltoallv(&x, {-1}, &x, {-1}, DType::F32), Error);
  EXPECT_THROW(c->alltoallv(nullptr, one, &x, one, DType::F32), Error);
  EXPECT_THROW(c->alltoallv(&x, one, &x, one, DType::I4), Error);
  EXPECT_THROW(c->broadcast(&x, 1, DType::F32, 1), Error);
  EXPECT_THROW(c->allreduce(&x, -1, DType::F32, ReduceOp::Sum), Error);
  EXPECT_THROW(c->exchange_counts(two), Error);
}

TEST(DistGroups, OnAWorldOfOne) {
  std::shared_ptr<dist::Communicator> world = dist::self_communicator();
  const dist::ParallelGroups g = dist::make_groups(world, 1);
  EXPECT_EQ(g.world, world);
  EXPECT_EQ(g.ep->size(), 1);
  EXPECT_EQ(g.dp->size(), 1);
  EXPECT_EQ(g.ep->name(), "ep");
  EXPECT_EQ(g.dp->name(), "dp");
  EXPECT_EQ(g.ep_rank(), 0);
  EXPECT_EQ(g.dp_rank(), 0);
  const dist::ParallelGroups h = dist::make_groups(world, 1, true);
  EXPECT_EQ(h.ep->backend(), "hierarchical(self)");
}

TEST(DistGroups, EpMustDivideTheWorld) {
  std::shared_ptr<dist::Communicator> world = dist::self_communicator();
  for (int ep : {0, -1, 2}) {
    try {
      dist::make_groups(world, ep);
      ADD_FAILURE() << "ep = " << ep << " accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("ep = " + std::to_string(ep)), std::string::npos) << e.what();
    }
  }
  EXPECT_THROW(dist::make_groups(nullptr, 1), Error);
}

TEST(DistHierarchical, OnAWorldOfOne) {
  std::shared_ptr<dist::Communicator> world = dist::self_communicator();
  auto h = dist::hierarchical(world, 0);  // detection: one rank
  EXPECT_EQ(h->backend(), "hierarchical(self)");
  std::vector<int32_t> send = {4, 5}, recv(2, -1);
  const std::vector<int64_t> counts = {2};
  h->alltoallv(send.data(), counts, recv.data(), counts, DType::I32);
  EXPECT_EQ(recv, send);
  EXPECT_EQ(h->stats().alltoall_calls, 1);
  EXPECT_THROW(dist::hierarchical(world, 2), Error);
  EXPECT_THROW(dist::hierarchical(world, -1), Error);
}

TEST(DistEngines, CompiledFlagsMatchTheBuild) {
#if defined(MOE_HAVE_MPI)
  EXPECT_TRUE(dist::mpi_compiled());
#else
  EXPECT_FALSE(dist::mpi_compiled());
  EXPECT_THROW(dist::mpi_world(), Error);
#endif
#if defined(MOE_HAVE_NCCL)
  EXPECT_TRUE(dist::nccl_compiled());
#else
  EXPECT_FALSE(dist::nccl_compiled());
#endif
}

TEST(DistEngines, LaunchedByMpiReadsTheEnvironment) {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"}) unsetenv(var);
  EXPECT_FALSE(dist::launched_by_mpi());
  setenv("PMIX_RANK", "0", 1);
  EXPECT_TRUE(dist::launched_by_mpi());
  unsetenv("PMIX_RANK");
  setenv("OMPI_COMM_WORLD_SIZE", "2", 1);
  EXPECT_TRUE(dist::launched_by_mpi());
  unsetenv("OMPI_COMM_WORLD_SIZE");
}

TEST(DistEngines, NcclNeedsAGpu) {
  auto self = dist::self_communicator();
  if (dist::nccl_compiled()) {
    // Without a GPU: a clear moe::Error. With one, tests/mpi covers the NCCL communicator.
    try {
      auto c = dist::nccl_communicator(*self, 0);
      EXPECT_EQ(c->backend(), "nccl");
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("CUDA device"), std::string::npos) << e.what();
    }
  } else {
    EXPECT_THROW(dist::nccl_communicator(*self, 0), Error);
  }
  EXPECT_THROW(dist::nccl_communicator(*self, -1), Error);
}

}  // namespace
}  // namespace moe
