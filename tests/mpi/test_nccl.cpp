// The NCCL communicator (device buffers), bootstrapped over the MPI test communicator. Runs only
// where every rank has its own GPU (NCCL refuses two ranks on one device); skipped elsewhere.
#if defined(MOE_HAVE_NCCL)
#include <cuda_runtime.h>

#include <cmath>

#include "mpi_testutil.h"

namespace moe::test {
namespace {

// Device buffer of n bytes, freed at scope end.
struct DeviceBuffer {
  explicit DeviceBuffer(size_t n) : bytes(n) {
    if (cudaMalloc(&ptr, n == 0 ? 1 : n) != cudaSuccess) ptr = nullptr;
    if (ptr != nullptr) cudaMemset(ptr, 0xff, n == 0 ? 1 : n);  // poison: NaN / -1
  }
  ~DeviceBuffer() { cudaFree(ptr); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void* ptr = nullptr;
  size_t bytes;
};

class NcclTest : public MpiTest {
 protected:
  void SetUp() override {
    MpiTest::SetUp();
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess) devices = 0;
    int64_t usable = devices >= size() ? 1 : 0;  // every rank must agree to skip
    comm().allreduce(&usable, 1, DType::I64, dist::ReduceOp::Min);
    if (usable == 0)
      GTEST_SKIP() << "needs one GPU per rank (" << devices << " GPUs, " << size() << " ranks)";
    nccl_ = dist::nccl_communicator(comm(), rank() % devices);
  }
  void TearDown() override {
    nccl_.reset();
    MpiTest::TearDown();
  }
  std::unique_ptr<dist::Communicator> nccl_;
};

TEST_F(NcclTest, AlltoallvEqualsMpi) {
  const uint64_t seed = shared_seed();
  SCOPED_TRACE(cat("seed ", seed));
  EXPECT_EQ(nccl_->backend(), "nccl");
  EXPECT_EQ(nccl_->size(), size());
  EXPECT_EQ(nccl_->rank(), rank());
  for (DType t : {DType::F32, DType::BF16, DType::I64}) {
    const CountMatrix m = random_counts(size(), seed + static_cast<int>(t), 500);
    const std::vector<unsigned char> want = run_alltoallv(comm(), m, t);  // on the host, checked itself
    const size_t elem = static_cast<size_t>(dtype_bits(t) / 8);
    const std::vector<int64_t> sc = m.row(rank()), rc = m.column(rank());
    EXPECT_EQ(nccl_->exchange_counts(sc), rc);
    int64_t ns = 0, nr = 0;
    for (int j = 0; j < size(); ++j) ns += sc[j], nr += rc[j];
    const std::vector<unsigned char> send = send_bytes(rank(), sc, t);
    DeviceBuffer ds(send.size()), dr(static_cast<size_t>(nr) * elem);
    ASSERT_TRUE(ds.ptr && dr.ptr);
    ASSERT_EQ(cudaMemcpy(ds.ptr, send.data(), send.size(), cudaMemcpyHostToDevice), cudaSuccess);
    nccl_->alltoallv(ds.ptr, sc, dr.ptr, rc, t);
    std::vector<unsigned char> got(dr.bytes);
    ASSERT_EQ(cudaMemcpy(got.data(), dr.ptr, got.size(), cudaMemcpyDeviceToHost), cudaSuccess);
    EXPECT_EQ(got, want) << dtype_name(t);
  }
  EXPECT_EQ(nccl_->stats().alltoall_calls, 3);
}

TEST_F(NcclTest, AllreduceBroadcastAllgatherBarrierSplit) {
  const int64_t n = 4099;
  std::vector<float> host(n);
  for (int64_t i = 0; i < n; ++i) host[i] = static_cast<float>(block_value(rank(), 0, i)) * 0.5f;
  DeviceBuffer d(n * 4);
  ASSERT_TRUE(d.ptr);
  ASSERT_EQ(cudaMemcpy(d.ptr, host.data(), n * 4, cudaMemcpyHostToDevice), cudaSuccess);
  nccl_->allreduce(d.ptr, n, DType::F32, dist::ReduceOp::Sum);
  ASSERT_EQ(cudaMemcpy(host.data(), d.ptr, n * 4, cudaMemcpyDeviceToHost), cudaSuccess);
  for (int64_t i = 0; i < n; ++i) {
    double want = 0;
    for (int r = 0; r < size(); ++r) want += block_value(r, 0, i) * 0.5;
    // Integers and halves below 2^24: every order of summation is exact.
    ASSERT_EQ(host[i], static_cast<float>(want)) << "element " << i;
  }
  int64_t v = rank() == size() - 1 ? 1234567890123 : -1;
  DeviceBuffer b(8);
  ASSERT_EQ(cudaMemcpy(b.ptr, &v, 8, cudaMemcpyHostToDevice), cudaSuccess);
  nccl_->broadcast(b.ptr, 1, DType::I64, size() - 1);
  ASSERT_EQ(cudaMemcpy(&v, b.ptr, 8, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(v, 1234567890123);
  const int32_t me = rank();
  DeviceBuffer gs(4), gr(4 * static_cast<size_t>(size()));
  ASSERT_EQ(cudaMemcpy(gs.ptr, &me, 4, cudaMemcpyHostToDevice), cudaSuccess);
  nccl_->allgather(gs.ptr, gr.ptr, 1, DType::I32);
  std::vector<int32_t> all(static_cast<size_t>(size()));
  ASSERT_EQ(cudaMemcpy(all.data(), gr.ptr, all.size() * 4, cudaMemcpyDeviceToHost), cudaSuccess);
  for (int r = 0; r < size(); ++r) EXPECT_EQ(all[r], r);
  nccl_->barrier();
  auto sub = nccl_->split(0, -rank(), "reversed");
  EXPECT_EQ(sub->rank(), size() - 1 - rank());
  EXPECT_EQ(sub->backend(), "nccl");
  sub->barrier();
}

}  // namespace
}  // namespace moe::test
#endif  // MOE_HAVE_NCCL
