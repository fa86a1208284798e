// Tensor placements (moe/core/placement.h): Host and Pinned behave as host memory; Device without a
// device is a clear error; a Device tensor's host-only accessors throw without touching its memory.
//
// The Device rules are tested here twice: with a stand-in device runtime (host memory behind the
// DeviceMemory hook, registered for the test), which runs on any machine, and with the real CUDA
// runtime, skipped where there is no device.
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "moe/core/error.h"
#include "moe/core/placement.h"
#include "moe/core/tensor.h"

namespace moe {
namespace {

bool has_device() {
  DeviceMemory* dm = device_memory();
  return dm != nullptr && dm->device_count() > 0;
}

// Runs f and returns the message of the moe::Error it throws ("" when it does not throw).
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

#define EXPECT_ERROR_HAS(stmt, text)                                              \
  do {                                                                            \
    const std::string msg_ = error_of([&] { stmt; });                             \
    EXPECT_NE(msg_.find(text), std::string::npos) << "message: '" << msg_ << "'"; \
  } while (0)

Tensor iota(const Shape& s, const std::string& name, Placement p = Placement::Host) {
  Tensor t = Tensor::empty(s, DType::F32, name, p);
  for (int64_t i = 0; i < t.numel(); ++i) t.set(i, static_cast<double>(i) + 0.5);
  return t;
}

TEST(Placement, NamesAndDefaults) {
  EXPECT_STREQ(placement_name(Placement::Host), "host");
  EXPECT_STREQ(placement_name(Placement::Device), "device");
  EXPECT_STREQ(placement_name(Placement::Pinned), "pinned");
  EXPECT_TRUE(host_accessible(Placement::Pinned));
  EXPECT_FALSE(host_accessible(Placement::Device));
  EXPECT_EQ(Tensor().placement(), Placement::Host);
  const Tensor t = Tensor::zeros({2, 3});
  EXPECT_EQ(t.placement(), Placement::Host);
  EXPECT_FALSE(t.on_device());
  EXPECT_EQ(t.slice(0, 1, 2).placement(), Placement::Host);
}

TEST(Placement, PinnedIsHostAccessibleWithOrWithoutADevice) {
  Tensor p = Tensor::zeros({3, 4}, DType::F32, "p", Placement::Pinned);
  EXPECT_EQ(p.placement(), Placement::Pinned);
  EXPECT_EQ(p.to_vector(), std::vector<double>(12, 0.0));
  p.fill(2.0);
  p.set(5, -1.5);
  EXPECT_EQ(p.get(5), -1.5);
  EXPECT_EQ(p.get(4), 2.0);
  // views, clones and dtype conversions keep working; a view shares the placement
  EXPECT_EQ(p.transpose(0, 1).placement(), Placement::Pinned);
  EXPECT_EQ(p.transpose(0, 1).contiguous().get(1), p.get(4));
  EXPECT_EQ(p.clone().placement(), Placement::Pinned);
  EXPECT_EQ(p.to(DType::F64).get(5), -1.5);
  // explicit copies between host and pinned
  const Tensor h = iota({3, 4}, "h");
  const Tensor hp = h.to(Placement::Pinned);
  EXPECT_EQ(hp.placement(), Placement::Pinned);
  EXPECT_EQ(hp.to_vector(), h.to_vector());
  const Tensor back = hp.to(Placement::Host);
  EXPECT_EQ(back.placement(), Placement::Host);
  EXPECT_EQ(back.to_vector(), h.to_vector());
  EXPECT_NE(back.raw(), hp.raw());  // always a copy
  p.copy_from(h);
  EXPECT_EQ(p.to_vector(), h.to_vector());
  // a strided host tensor copies to a contiguous pinned one
  const Tensor ht = h.transpose(0, 1).to(Placement::Pinned);
  EXPECT_TRUE(ht.is_contiguous());
  EXPECT_EQ(ht.to_vector(), h.transpose(0, 1).to_vector());
}

TEST(Placement, DeviceWithoutADeviceIsAClearError) {
  if (has_device()) GTEST_SKIP() << "a CUDA device is present";
  EXPECT_ERROR_HAS(Tensor::empty({4}, DType::F32, "w", Placement::Device),
                   "tensor 'w': placement device needs");
  EXPECT_ERROR_HAS(Tensor::zeros({4}, DType::F32, "w", Placement::Device),
                   "tensor 'w': placement device needs");
  const Tensor h = iota({2, 2}, "h");
  EXPECT_ERROR_HAS(h.to(Placement::Device), "tensor 'h': placement device needs");
  const std::string msg = error_of([] { Tensor::empty({4}, DType::F32, "w", Placement::Device); });
  if (device_memory() == nullptr) {
    EXPECT_NE(msg.find("no CUDA support"), std::string::npos) << msg;
  } else {
    EXPECT_NE(msg.find("none is present"), std::string::npos) << msg;
  }
}

// A device runtime made of host memory: lets the Device rules run on any machine. Counts what the
// tensor code asks of it.
class StandInDevice final : public DeviceMemory {
 public:
  int device_count() const override { return 1; }
  void* alloc(size_t bytes) override {
    ++allocs;
    return std::malloc(bytes == 0 ? 1 : bytes);
  }
  void free(void* p) override {
    ++frees;
    std::free(p);
  }
  void* alloc_pinned(size_t bytes) override {
    ++pinned_allocs;
    return std::malloc(bytes == 0 ? 1 : bytes);
  }
  void free_pinned(void* p) override {
    ++pinned_frees;
    std::free(p);
  }
  void copy(void* dst, Placement to, const void* src, Placement from, size_t bytes) override {
    EXPECT_TRUE(to == Placement::Device || from == Placement::Device);
    ++copies;
    std::memcpy(dst, src, bytes);
  }
  void zero(void* dst, size_t bytes) override {
    ++zeros;
    std::memset(dst, 0, bytes);
  }
  int allocs = 0, frees = 0, pinned_allocs = 0, pinned_frees = 0, copies = 0, zeros = 0;
};

class PlacementStandIn : public ::testing::Test {
 protected:
  void SetUp() override {
    saved_ = device_memory();
    register_device_memory(&dev_);
  }
  void TearDown() override { register_device_memory(saved_); }
  StandInDevice dev_;

 private:
  DeviceMemory* saved_ = nullptr;
};

TEST_F(PlacementStandIn, HostOnlyAccessorsOnADeviceTensorThrowNamingIt) {
  {
    Tensor w = Tensor::zeros({2, 3}, DType::F32, "w", Placement::Device);
    EXPECT_EQ(dev_.zeros, 1);
    EXPECT_EQ(w.placement(), Placement::Device);
    EXPECT_TRUE(w.on_device());
    EXPECT_NE(w.data<float>(), nullptr);  // the device pointer, for ops
    const char* msg = "tensor 'w': on device; copy it to the host first";
    EXPECT_ERROR_HAS(w.get(0), msg);
    EXPECT_ERROR_HAS(w.set(0, 1.0), msg);
    EXPECT_ERROR_HAS(w.to_vector(), msg);
    EXPECT_ERROR_HAS(w.fill(1.0), msg);
    EXPECT_ERROR_HAS(w.to(DType::BF16), msg);
    EXPECT_ERROR_HAS(w.transpose(0, 1).contiguous(), msg);
    EXPECT_ERROR_HAS(check_finite(w, "w"), msg);
    // views share the placement; a contiguous one is itself
    EXPECT_TRUE(w.slice(0, 0, 1).on_device());
    EXPECT_EQ(w.contiguous().raw(), w.raw());
    // copies to or from the device keep the dtype and need contiguous tensors
    Tensor h64 = Tensor::zeros({2, 3}, DType::F64, "h64");
    EXPECT_ERROR_HAS(h64.copy_from(w), "keeps the dtype");
    Tensor ht = Tensor::zeros({3, 2}, DType::F32, "ht");
    EXPECT_ERROR_HAS(ht.transpose(0, 1).copy_from(w), "needs both tensors contiguous");
    EXPECT_ERROR_HAS(w.transpose(0, 1).to(Placement::Host), "needs both tensors contiguous");
    Tensor bad = Tensor::zeros({3, 2}, DType::F32, "bad");
    EXPECT_ERROR_HAS(bad.copy_from(w), "expected shape (3, 2), got (2, 3)");
    EXPECT_EQ(dev_.copies, 0);  // nothing was copied by a refused call
  }
  EXPECT_EQ(dev_.frees, dev_.allocs);
}

TEST_F(PlacementStandIn, CopiesBetweenPlacementsRoundTrip) {
  const size_t cache_before = tensor_cache_stats().held_bytes;
  {
    const Tensor h = iota({3, 5}, "x");
    const Tensor d = h.to(Placement::Device);
    EXPECT_EQ(d.placement(), Placement::Device);
    EXPECT_EQ(d.name(), "x");
    EXPECT_EQ(dev_.copies, 1);
    const Tensor d2 = d.clone();  // device to device
    EXPECT_TRUE(d2.on_device());
    EXPECT_NE(d2.raw(), d.raw());
    const Tensor d3 = d2.to(DType::F32);  // same dtype: a device copy
    EXPECT_TRUE(d3.on_device());
    EXPECT_EQ(d3.to(Placement::Host).to_vector(), h.to_vector());
    // host <- device into an existing tensor, and a strided host source copied contiguous first
    Tensor out = Tensor::zeros({3, 5}, DType::F32, "out");
    out.copy_from(d);
    EXPECT_EQ(out.to_vector(), h.to_vector());
    const Tensor dt = h.transpose(0, 1).to(Placement::Device);
    EXPECT_EQ(dt.to(Placement::Host).to_vector(), h.transpose(0, 1).to_vector());
    // pinned memory comes from the device runtime when there is a device
    const Tensor p = d.to(Placement::Pinned);
    EXPECT_EQ(dev_.pinned_allocs, 1);
    EXPECT_EQ(p.to_vector(), h.to_vector());
    // empty tensors allocate and copy nothing harmful
    const Tensor e = Tensor::empty({0, 4}, DType::F32, "e", Placement::Device);
    EXPECT_EQ(e.to(Placement::Host).numel(), 0);
    // device buffers never enter the host buffer cache
    { const Tensor big = Tensor::empty({1 << 19}, DType::F32, "big", Placement::Device); }
  }
  EXPECT_EQ(dev_.frees, dev_.allocs);
  EXPECT_EQ(dev_.pinned_frees, dev_.pinned_allocs);
  EXPECT_EQ(tensor_cache_stats().held_bytes, cache_before);
}

// The same on the real device, where there is one.
TEST(PlacementCuda, RoundTripAndAccessorErrors) {
  if (!has_device()) GTEST_SKIP() << "no CUDA device";
  const Tensor h = iota({4, 33}, "x");
  Tensor d = h.to(Placement::Device);
  EXPECT_TRUE(d.on_device());
  EXPECT_EQ(d.to(Placement::Host).to_vector(), h.to_vector());
  EXPECT_EQ(d.clone().to(Placement::Pinned).to_vector(), h.to_vector());
  const Tensor z = Tensor::zeros({4, 33}, DType::F32, "z", Placement::Device);
  EXPECT_EQ(z.to(Placement::Host).to_vector(), std::vector<double>(4 * 33, 0.0));
  EXPECT_ERROR_HAS(d.get(0), "tensor 'x': on device; copy it to the host first");
  EXPECT_ERROR_HAS(d.fill(0), "tensor 'x': on device; copy it to the host first");
  Tensor p = Tensor::zeros({4, 33}, DType::F32, "p", Placement::Pinned);  // page-locked here
  p.copy_from(d);
  EXPECT_EQ(p.to_vector(), h.to_vector());
}

}  // namespace
}  // namespace moe
