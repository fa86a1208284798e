// Harness of the MPI tests (moe_mpi_tests, run under mpirun by CTest; see mpi_main.cpp).
//
// Write a test as TEST_F(MpiTest, Name): comm() is a fresh communicator over all ranks for this test
// alone (split from the world in SetUp), so a test that fails on one rank and leaves a collective
// unmatched cannot disturb the next test: the waiting ranks time out (test_timeout()) and fail too.
// TearDown makes every rank agree: a test failed on one rank fails on all of them.
// Skip on a condition every rank sees alike (e.g. comm().size()), never on rank-local state.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "moe/dist/comm.h"

namespace moe::test {

// Seconds a collective inside a test may wait: 60, or the environment variable MOE_MPI_TEST_TIMEOUT.
double test_timeout();

// The MPI world, set by mpi_main.cpp before the tests run.
dist::Communicator& mpi_world_comm();
std::shared_ptr<dist::Communicator> mpi_world_ptr();

class MpiTest : public ::testing::Test {
 protected:
  void SetUp() override;
  void TearDown() override;
  dist::Communicator& comm() { return *comm_; }
  std::shared_ptr<dist::Communicator> comm_ptr() { return comm_; }
  int rank() const { return comm_->rank(); }
  int size() const { return comm_->size(); }
  // A seed chosen by rank 0 from std::random_device and broadcast: the same on every rank, fresh
  // each run. Printed on failure (SCOPED_TRACE in the test).
  uint64_t shared_seed();

 private:
  std::shared_ptr<dist::Communicator> comm_;
};

}  // namespace moe::test

namespace moe::test {

// counts (size, size): counts[s · size + d] elements go from rank s to rank d.
struct CountMatrix {
  int size = 0;
  std::vector<int64_t> counts;
  int64_t at(int s, int d) const { return counts[static_cast<size_t>(s) * size + d]; }
  std::vector<int64_t> row(int s) const;     // what s sends
  std::vector<int64_t> column(int d) const;  // what d receives
};
// Random counts in [1, max_count], about a third of the blocks empty; rank 1 (when size > 1) sends
// nothing and the last rank (when size > 2) receives nothing.
CountMatrix random_counts(int size, uint64_t seed, int64_t max_count);

// The value of element i of the block from rank s to rank d: exact in every dtype used (< 2^24).
inline double block_value(int s, int d, int64_t i) {
  return static_cast<double>((s * 64 + d) * 4096 + i % 4096);
}

// What rank `me` sends: block d holds counts[d] elements block_value(me, d, i), in `dtype`.
std::vector<unsigned char> send_bytes(int me, const std::vector<int64_t>& counts, DType dtype);

// Runs comm.alltoallv with `m` in `dtype` (f32, f64, i64, i32, u8 or bf16), the receive buffer
// poisoned first, and checks every received element against block_value (bf16:
// rounded; u8: modulo 251). Also checks exchange_counts. Adds gtest failures; returns the received bytes.
std::vector<unsigned char> run_alltoallv(dist::Communicator& comm, const CountMatrix& m, DType dtype);

}  // namespace moe::test
