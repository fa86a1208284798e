// CUDA runtime helpers: device count (0 without GPU or driver), memory, errors; and the device
// memory of core's tensors (moe/core/placement.h), registered at static initialisation.
#include <cuda_runtime.h>

#include "kernels/cuda/cuda.h"
#include "moe/core/error.h"
#include "moe/core/placement.h"

namespace moe::kernels::cuda {

int device_count() {
  static const int count = [] {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      (void)cudaGetLastError();  // clear the sticky "no driver / no device" error
      return 0;
    }
    return n;
  }();
  return count;
}

void check_status(int status, const char* what) {
  const auto err = static_cast<cudaError_t>(status);
  MOE_CHECK(err == cudaSuccess, what, ": CUDA error ", cudaGetErrorName(err), ": ", cudaGetErrorString(err));
}

void* device_alloc(size_t bytes) {
  void* p = nullptr;
  check_status(cudaMalloc(&p, bytes == 0 ? 1 : bytes), "cuda::device_alloc");
  return p;
}

void device_free(void* p) {
  if (p) (void)cudaFree(p);  // not checked: called from destructors
}

void copy_to_device(void* dst, const void* src, size_t bytes) {
  check_status(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), "cuda::copy_to_device");
}

void copy_to_host(void* dst, const void* src, size_t bytes) {
  check_status(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "cuda::copy_to_host");
}

void synchronize() { check_status(cudaDeviceSynchronize(), "cuda::synchronize"); }

void stream_synchronize(void* stream) {
  check_status(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)), "cuda::stream_synchronize");
}

namespace {

cudaMemcpyKind copy_kind(Placement to, Placement from) {
  const bool dev_to = to == Placement::Device, dev_from = from == Placement::Device;
  if (dev_to && dev_from) return cudaMemcpyDeviceToDevice;
  return dev_to ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost;
}

// Tensor memory of placements Device and Pinned (core calls it only when device_count() > 0).
class CudaTensorMemory final : public DeviceMemory {
 public:
  int device_count() const override { return cuda::device_count(); }
  void* alloc(size_t bytes) override { return device_alloc(bytes); }
  void free(void* p) override { device_free(p); }
  void* alloc_pinned(size_t bytes) override {
    void* p = nullptr;
    check_status(cudaHostAlloc(&p, bytes == 0 ? 1 : bytes, cudaHostAllocDefault),
                 "tensor memory: cudaHostAlloc");
    return p;
  }
  void free_pinned(void* p) override {
    if (p) (void)cudaFreeHost(p);  // not checked: called from destructors
  }
  void copy(void* dst, Placement to, const void* src, Placement from, size_t bytes) override {
    check_status(cudaMemcpy(dst, src, bytes, copy_kind(to, from)), "tensor copy: cudaMemcpy");
  }
  void zero(void* dst, size_t bytes) override {
    check_status(cudaMemset(dst, 0, bytes), "tensor zeros: cudaMemset");
  }
};

// Never destroyed: device tensors in static objects may be freed after static destructors ran.
[[maybe_unused]] CudaTensorMemory* const g_tensor_memory = [] {
  auto* m = new CudaTensorMemory;
  register_device_memory(m);
  return m;
}();

}  // namespace

}  // namespace moe::kernels::cuda
