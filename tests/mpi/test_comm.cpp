// The MPI communicator: every collective against values computed from (rank, index), under mpirun
// with 2 and 4 ranks (tests/mpi/CMakeLists.txt).
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <type_traits>

#include "dist/comm_mpi.h"
#include "mpi_testutil.h"

namespace moe::test {
namespace {

using dist::ReduceOp;

// Lowers the MPI count limit for one test (the same on every rank), so that the piecewise paths for
// counts beyond INT_MAX run on small buffers.
struct CountLimit {
  explicit CountLimit(int64_t limit) { dist::detail::set_mpi_count_limit(limit); }
  ~CountLimit() { dist::detail::set_mpi_count_limit(0); }
};

// Rank r's input to the reductions: n values from a generator seeded with seed + r.
template <typename T>
std::vector<T> rank_input(uint64_t seed, int r, int64_t n) {
  std::mt19937_64 rng(seed + static_cast<uint64_t>(r));
  std::uniform_real_distribution<double> u(-1, 1);
  std::vector<T> v(static_cast<size_t>(n));
  for (T& x : v)
    x = std::is_floating_point_v<T> ? static_cast<T>(u(rng)) : static_cast<T>(rng() % 2001) - 1000;
  return v;
}

// The reduction over ranks 0..p-1 of rank_input, as a left fold in rank order in T.
template <typename T>
std::vector<T> expected_reduce(uint64_t seed, int p, int64_t n, ReduceOp op) {
  std::vector<T> acc = rank_input<T>(seed, 0, n);
  for (int r = 1; r < p; ++r) {
    const std::vector<T> v = rank_input<T>(seed, r, n);
    for (int64_t i = 0; i < n; ++i) {
      if (op == ReduceOp::Sum) acc[i] += v[i];
      if (op == ReduceOp::Max) acc[i] = std::max(acc[i], v[i]);
      if (op == ReduceOp::Min) acc[i] = std::min(acc[i], v[i]);
    }
  }
  return acc;
}

// Bitwise: the MPI sum of f32/f64 is a rank-order fold, so it equals expected_reduce exactly.
template <typename T>
void check_allreduce(dist::Communicator& c, uint64_t seed, int64_t n, ReduceOp op) {
  std::vector<T> buf = rank_input<T>(seed, c.rank(), n);
  c.allreduce(buf.data(), n, dtype_of<T>::value, op);
  const std::vector<T> want = expected_reduce<T>(seed, c.size(), n, op);
  int64_t bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (std::memcmp(&buf[i], &want[i], sizeof(T)) != 0 && bad++ < 5) {
      ADD_FAILURE() << "allreduce " << dtype_name(dtype_of<T>::value) << " op " << static_cast<int>(op)
                    << " n = " << n << ": element " << i << " is " << buf[i] << ", expected " << want[i]
                    << " (rank " << c.rank() << ")";
    }
  }
  EXPECT_EQ(bad, 0);
}

TEST_F(MpiTest, WorldIsMpi) {
  EXPECT_TRUE(dist::mpi_compiled());
  EXPECT_TRUE(dist::launched_by_mpi());
  EXPECT_EQ(comm().backend(), "mpi");
  EXPECT_EQ(mpi_world_comm().name(), "world");
  EXPECT_EQ(mpi_world_comm().size(), size());
  if (const char* env = std::getenv("OMPI_COMM_WORLD_SIZE")) {
    EXPECT_EQ(size(), std::atoi(env));
  }
  if (rank() == 0) std::printf("MPI_THREAD_MULTIPLE: %s\n", dist::mpi_thread_multiple() ? "yes" : "no");
}

TEST_F(MpiTest, AlltoallvRandomCountsEveryDtype) {
  const uint64_t seed = shared_seed();
  SCOPED_TRACE(cat("seed ", seed));
  int round = 0;
  for (DType t : {DType::I64, DType::F32, DType::F64, DType::BF16, DType::U8, DType::I32}) {
    run_alltoallv(comm(), random_counts(size(), seed + round++, 300), t);
  }
}

TEST_F(MpiTest, AlltoallvNothingAnywhere) {
  const std::vector<int64_t> zero(static_cast<size_t>(size()), 0);
  comm().alltoallv(nullptr, zero, nullptr, zero, DType::F32);
  EXPECT_EQ(comm().exchange_counts(zero), zero);
}

TEST_F(MpiTest, AlltoallvInPiecesBeyondTheCountLimit) {
  const uint64_t seed = shared_seed();
  SCOPED_TRACE(cat("seed ", seed));
  CountLimit limit(100);  // blocks of up to 400 elements · 8 bytes go as several messages
  run_alltoallv(comm(), random_counts(size(), seed, 400), DType::I64);
  run_alltoallv(comm(), random_counts(size(), seed + 1, 7), DType::F32);
}

TEST_F(MpiTest, ExchangeCounts) {
  std::vector<int64_t> send(static_cast<size_t>(size()));
  for (int j = 0; j < size(); ++j) send[j] = 1000 * rank() + j + (int64_t{1} << 40);  // beyond 32 bits
  const std::vector<int64_t> got = comm().exchange_counts(send);
  ASSERT_EQ(got.size(), send.size());
  for (int i = 0; i < size(); ++i)
    EXPECT_EQ(got[i], 1000 * i + rank() + (int64_t{1} << 40)) << "from rank " << i;
}

TEST_F(MpiTest, AllreduceEveryOpAndDtype) {
  const uint64_t seed = shared_seed();
  SCOPED_TRACE(cat("seed ", seed));
  // 1 and 7: gathered whole; 5000 and 100003: each rank folds a slice (alltoallv + allgatherv).
  for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{5000}, int64_t{100003}}) {
    for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Max, ReduceOp::Min}) {
      check_allreduce<float>(comm(), seed, n, op);
      check_allreduce<double>(comm(), seed + 1, n, op);
      check_allreduce<int64_t>(comm(), seed + 2, n, op);
      check_allreduce<int32_t>(comm(), seed + 3, n, op);
    }
  }
  float none = 1.5f;
  comm().allreduce(&none, 0, DType::F32, ReduceOp::Sum);
  EXPECT_EQ(none, 1.5f);
}

TEST_F(MpiTest, AllreduceInSegmentsBeyondTheCountLimit) {
  const uint64_t seed = shared_seed();
  SCOPED_TRACE(cat("seed ", seed));
  CountLimit limit(1000);
  check_allreduce<float>(comm(), seed, 10007, ReduceOp::Sum);
  check_allreduce<double>(comm(), seed + 1, 2999, ReduceOp::Sum);
  check_allreduce<int64_t>(comm(), seed + 2, 10007, ReduceOp::Max);
}

TEST_F(MpiTest, BroadcastFromEveryRoot) {
  for (int64_t limit : {int64_t{0}, int64_t{64}}) {  // 0: one call; 64: in pieces
    CountLimit lim(limit);
    for (int root = 0; root < size(); ++root) {
      std::vector<double> buf(1000);
      for (size_t i = 0; i < buf.size(); ++i)
        buf[i] = rank() == root ? block_value(root, 0, i) : std::nan("");
      comm().broadcast(buf.data(), 1000, DType::F64, root);
      for (size_t i = 0; i < buf.size(); ++i)
        ASSERT_EQ(buf[i], block_value(root, 0, i)) << "root " << root << " i " << i;
    }
  }
}

TEST_F(MpiTest, AllgatherInRankOrder) {
  for (int64_t limit : {int64_t{0}, int64_t{20}}) {  // 20 < 13 · size: every rank broadcasts its part
    CountLimit lim(limit);
    std::vector<int32_t> send(13), recv(13 * static_cast<size_t>(size()), -1);
    for (int i = 0; i < 13; ++i) send[i] = static_cast<int32_t>(block_value(rank(), 0, i));
    comm().allgather(send.data(), recv.data(), 13, DType::I32);
    for (int r = 0; r < size(); ++r) {
      for (int i = 0; i < 13; ++i) ASSERT_EQ(recv[r * 13 + i], block_value(r, 0, i)) << "from rank " << r;
    }
  }
}

TEST_F(MpiTest, Barrier) {
  for (int i = 0; i < 20; ++i) comm().barrier();
}

TEST_F(MpiTest, SplitOrdersByKeyThenRank) {
  comm().set_timeout(42);
  auto sub = comm().split(rank() % 2, -rank(), "odd_even");
  EXPECT_EQ(sub->name(), "odd_even");
  EXPECT_EQ(sub->backend(), "mpi");
  EXPECT_EQ(sub->timeout_s(), 42);
  const int members = (size() + 1 - rank() % 2) / 2;
  ASSERT_EQ(sub->size(), members);
  std::vector<int32_t> ranks(static_cast<size_t>(members), -1);
  const int32_t me = rank();
  sub->allgather(&me, ranks.data(), 1, DType::I32);
  for (int i = 0; i < members; ++i) {  // descending world ranks of my parity (key = -rank)
    const int want = (size() - 1 - (size() - 1 - rank() % 2) % 2) - 2 * i;
    EXPECT_EQ(ranks[i], want) << "member " << i;
  }
  EXPECT_EQ(ranks[sub->rank()], rank());
  // Equal keys: ordered by rank.
  auto same = comm().split(0, 7, "same");
  EXPECT_EQ(same->rank(), rank());
}

TEST_F(MpiTest, StatsCountBytesToOtherRanks) {
  const uint64_t seed = shared_seed();
  SCOPED_TRACE(cat("seed ", seed));
  const CountMatrix m = random_counts(size(), seed, 50);
  comm().reset_stats();
  run_alltoallv(comm(), m, DType::I64);
  run_alltoallv(comm(), m, DType::BF16);
  int64_t sent = 0, received = 0;
  for (int j = 0; j < size(); ++j) {
    if (j == rank()) continue;
    sent += m.at(rank(), j) * (8 + 2);
    received += m.at(j, rank()) * (8 + 2);
  }
  const dist::CommStats& s = comm().stats();
  EXPECT_EQ(s.alltoall_calls, 2);
  EXPECT_EQ(s.alltoall_bytes_sent, sent);
  EXPECT_EQ(s.alltoall_bytes_received, received);
  EXPECT_GT(s.alltoall_s, 0);
  std::vector<float> v(10, 1.0f);
  comm().allreduce(v.data(), 10, DType::F32, ReduceOp::Sum);
  comm().broadcast(v.data(), 10, DType::F32, 0);
  EXPECT_EQ(s.allreduce_calls, 1);
  EXPECT_EQ(s.allreduce_bytes, 40);
  EXPECT_EQ(s.broadcast_calls, 1);
  comm().reset_stats();
  EXPECT_EQ(comm().stats().alltoall_calls, 0);
}

TEST_F(MpiTest, BadArgumentsThrowBeforeCommunicating) {
  const std::vector<int64_t> short_counts(static_cast<size_t>(size()) + 1, 0),
      zero(static_cast<size_t>(size()), 0);
  std::vector<int64_t> negative = zero;
  negative[0] = -1;
  float x[4] = {};
  EXPECT_THROW(comm().alltoallv(x, short_counts, x, zero, DType::F32), Error);
  EXPECT_THROW(comm().alltoallv(x, negative, x, zero, DType::F32), Error);
  EXPECT_THROW(comm().exchange_counts(short_counts), Error);
  EXPECT_THROW(comm().alltoallv(x, zero, x, zero, DType::I4), Error);
  EXPECT_THROW(comm().broadcast(x, 1, DType::F32, size()), Error);
  EXPECT_THROW(comm().broadcast(x, -1, DType::F32, 0), Error);
  EXPECT_THROW(comm().allreduce(x, 1, DType::BF16, ReduceOp::Sum), Error);
  EXPECT_THROW(comm().split(-1, 0, "bad"), Error);
  std::vector<int64_t> self_only = zero;
  self_only[rank()] = 1;
  EXPECT_THROW(comm().alltoallv(x, self_only, x, self_only, DType::F32), Error);  // same buffer
  try {
    comm().broadcast(x, 1, DType::F32, size());
  } catch (const dist::CommError&) {
    ADD_FAILURE() << "bad arguments are a moe::Error, not a CommError";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("root"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("'test'"), std::string::npos) << e.what();
  }
  comm().barrier();  // still usable
}

}  // namespace
}  // namespace moe::test
