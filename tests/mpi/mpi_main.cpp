// main() of moe_mpi_tests: initialises MPI through dist::mpi_world(), runs the tests on every rank and
// makes the ranks agree on the result (each test's TearDown already does; the exit status is the
// maximum over ranks). Rank 0 prints GoogleTest's usual output; the other ranks print only failures,
// prefixed with their rank.
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>

#include "mpi_testutil.h"

namespace moe::test {
namespace {

std::shared_ptr<dist::Communicator> g_world;

// Prints failed assertions of ranks > 0 (their default printer is removed).
class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  // The test's name is kept here: UnitTest::current_test_info() would take a lock that GoogleTest
  // holds while it reports a part result.
  void OnTestStart(const ::testing::TestInfo& t) override {
    test_ = std::string(t.test_suite_name()) + "." + t.name();
  }
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (!r.failed()) return;
    std::fprintf(stderr, "[rank %d] %s: %s:%d: %s\n", rank_, test_.c_str(),
                 r.file_name() ? r.file_name() : "?", r.line_number(), r.message());
  }

 private:
  int rank_;
  std::string test_;
};

}  // namespace

double test_timeout() {
  const char* env = std::getenv("MOE_MPI_TEST_TIMEOUT");
  return env != nullptr ? std::atof(env) : 60.0;
}

dist::Communicator& mpi_world_comm() { return *g_world; }
std::shared_ptr<dist::Communicator> mpi_world_ptr() { return g_world; }

void MpiTest::SetUp() {
  // The world waits longer than a test's collectives: in TearDown a rank that failed early waits for
  // the others to time out inside the test (possibly on several communicators) before they agree.
  g_world->set_timeout(5 * test_timeout());
  comm_ = g_world->split(0, g_world->rank(), "test");
  comm_->set_timeout(test_timeout());
}

void MpiTest::TearDown() {
  int64_t failed = HasFailure() ? 1 : 0;
  g_world->allreduce(&failed, 1, DType::I64, dist::ReduceOp::Max);
  if (failed != 0 && !HasFailure())
    ADD_FAILURE() << "this test failed on another rank (see its [rank N] lines)";
  comm_.reset();
}

uint64_t MpiTest::shared_seed() {
  uint64_t seed = 0;
  if (comm_->rank() == 0)
    seed = (static_cast<uint64_t>(std::random_device{}()) << 32) | std::random_device{}();
  comm_->broadcast(&seed, 1, DType::I64, 0);
  return seed;
}

}  // namespace moe::test

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  using moe::test::g_world;
  try {
    g_world = moe::dist::mpi_world();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moe_mpi_tests: %s\n", e.what());
    return 1;
  }
  const int rank = g_world->rank();
  if (rank != 0) {
    ::testing::TestEventListeners& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new moe::test::RankFailurePrinter(rank));
  }
  const int rc = RUN_ALL_TESTS();
  try {
    int64_t failed = rc != 0 ? 1 : 0;
    g_world->set_timeout(120);
    g_world->allreduce(&failed, 1, moe::DType::I64, moe::dist::ReduceOp::Max);
    if (rank == 0 && failed != 0 && rc == 0)
      std::fprintf(stderr, "moe_mpi_tests: a test failed on another rank\n");
    g_world.reset();
    return failed != 0 ? 1 : 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moe_mpi_tests: rank %d: %s\n", rank, e.what());
    g_world->abort_job(1);
  }
}
