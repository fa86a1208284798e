// CUDA runtime helpers: device count (0 without GPU or driver), memory, errors.
#include <cuda_runtime.h>

#include "kernels/cuda/cuda.h"
#include "moe/core/error.h"

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

}  // namespace moe::kernels::cuda
