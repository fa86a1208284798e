// Where a tensor's memory lives, and the hook through which core reaches device memory.
//
//   Host    ordinary 64-byte aligned host memory (the default; large buffers go through the tensor
//           buffer cache, moe/core/tensor.h)
//   Device  memory of the CUDA device; only its pointer is usable on the host (ops take it), element
//           access from the host throws
//   Pinned  page-locked host memory (faster and asynchronous host <-> device copies); host-accessible
//           like Host. Without a device runtime or a device, Pinned falls back to ordinary host memory
//           (no error: a pinned buffer only speeds up copies that cannot happen without a device)
//
// core knows no device API (it is the lowest layer): the kernels layer's CUDA runtime
// (src/kernels/cuda/runtime.cu) registers a DeviceMemory at static initialisation when the build has
// CUDA. Without one, a Device allocation throws moe::Error saying so.
#pragma once

#include <cstddef>

namespace moe {

enum class Placement { Host, Device, Pinned };
const char* placement_name(Placement p);  // "host", "device", "pinned"
// Whether memory of placement p can be read and written by host code (Host, Pinned).
inline bool host_accessible(Placement p) { return p != Placement::Device; }

// Device memory operations, implemented by the device runtime. All calls are synchronous (a copy
// has finished when it returns) and throw moe::Error on failure, except the two frees.
class DeviceMemory {
 public:
  virtual ~DeviceMemory() = default;
  virtual int device_count() const = 0;  // 0 when there is no device or no driver
  virtual void* alloc(size_t bytes) = 0;
  virtual void free(void* p) = 0;
  virtual void* alloc_pinned(size_t bytes) = 0;
  virtual void free_pinned(void* p) = 0;
  // bytes from src (in placement from) to dst (in placement to); at least one of them is Device.
  virtual void copy(void* dst, Placement to, const void* src, Placement from, size_t bytes) = 0;
  virtual void zero(void* dst, size_t bytes) = 0;  // device memory
};

// Registers the device runtime's memory (null: none). The object must outlive every tensor it
// allocated; the CUDA runtime registers a static one.
void register_device_memory(DeviceMemory* m);
// The registered device memory, or null (a build without CUDA).
DeviceMemory* device_memory();
// The registered device memory when a device is present; otherwise throws moe::Error naming `what`
// (a tensor) and why (no CUDA in this build, or no device found).
DeviceMemory& require_device_memory(const char* what);

}  // namespace moe
