// Contexts and workspaces (moe/kernels/context.h). Host backends use aligned host memory and have
// nothing to wait for; Cuda uses the stream and device memory through src/kernels/cuda/runtime.cu.
#include "moe/kernels/context.h"

#include <cstdlib>
#include <memory>

#include "moe/core/error.h"
#ifdef MOE_HAVE_CUDA
#include "kernels/cuda/cuda.h"
#endif

namespace moe::kernels {

namespace {

constexpr size_t kAlign = 256;

void release(Backend b, void* p) {
  if (p == nullptr) return;
#ifdef MOE_HAVE_CUDA
  if (b == Backend::Cuda) return cuda::device_free(p);
#endif
  (void)b;
  std::free(p);
}

}  // namespace

Workspace::Workspace(Backend b) : backend_(b) {}

Workspace::~Workspace() { release(backend_, data_); }

void* Workspace::reserve(size_t bytes) {
  if (bytes <= capacity_ && data_ != nullptr) return data_;
  const size_t size = (bytes + kAlign - 1) / kAlign * kAlign + kAlign;
  void* fresh = nullptr;
  if (backend_ == Backend::Cuda) {
#ifdef MOE_HAVE_CUDA
    cuda::synchronize();  // earlier ops may still read the old block
    fresh = cuda::device_alloc(size);
#else
    throw Error("workspace: the cuda backend is not available (this build has no CUDA support)");
#endif
  } else {
    fresh = std::aligned_alloc(kAlign, size);
    MOE_CHECK(fresh != nullptr, "workspace: cannot allocate ", size, " bytes");
  }
  release(backend_, data_);
  data_ = fresh;
  capacity_ = size;
  ++allocations_;
  return data_;
}

Context::Context(Backend b, void* stream) : backend_(b), stream_(stream), workspace_(b) {}

Context::~Context() {
#ifdef MOE_HAVE_CUDA
  if (device_error_) cuda::device_free(device_error_);
#endif
}

DeviceError* Context::device_error() {
  MOE_CHECK(backend_ == Backend::Cuda, "context: device errors exist on the cuda backend only");
#ifdef MOE_HAVE_CUDA
  if (device_error_ == nullptr) {
    device_error_ = static_cast<DeviceError*>(cuda::device_alloc(sizeof(DeviceError)));
    const DeviceError none;
    cuda::copy_to_device(device_error_, &none, sizeof(none));
  }
#endif
  return device_error_;
}

void Context::synchronize() {
  if (backend_ != Backend::Cuda) return;
#ifdef MOE_HAVE_CUDA
  cuda::stream_synchronize(stream_);
  if (device_error_ == nullptr) return;
  DeviceError e;
  cuda::copy_to_host(&e, device_error_, sizeof(e));
  if (e.code == 0) return;
  const DeviceError none;
  cuda::copy_to_device(device_error_, &none, sizeof(none));
  switch (e.code) {
    case 1:
      throw Error(cat("permute: expert[", e.index, "] = ", e.value, " is outside [0, E = ", e.bound, ")"));
    default:
      throw Error(cat("a cuda op recorded error code ", e.code, " at index ", e.index));
  }
#endif
}

Context& default_context(Backend b) {
  thread_local std::unique_ptr<Context> contexts[3];
  const int i = static_cast<int>(b);
  MOE_CHECK(i >= 0 && i < 3, "unknown backend ", i);
  if (!contexts[i]) {
    contexts[i] = std::make_unique<Context>(b);
    contexts[i]->set_eager_errors(true);
  }
  return *contexts[i];
}

}  // namespace moe::kernels
