// Placement names and the device-memory hook (moe/core/placement.h).
#include "moe/core/placement.h"

#include <atomic>

#include "moe/core/error.h"

namespace moe {

namespace {
// Constant-initialised, so a registration from another file's static initialiser is never lost.
std::atomic<DeviceMemory*> g_device_memory{nullptr};
}  // namespace

const char* placement_name(Placement p) {
  switch (p) {
    case Placement::Host:
      return "host";
    case Placement::Device:
      return "device";
    case Placement::Pinned:
      return "pinned";
  }
  return "?";
}

void register_device_memory(DeviceMemory* m) { g_device_memory.store(m, std::memory_order_release); }

DeviceMemory* device_memory() { return g_device_memory.load(std::memory_order_acquire); }

DeviceMemory& require_device_memory(const char* what) {
  DeviceMemory* m = device_memory();
  MOE_CHECK(m != nullptr, "tensor '", what,
            "': placement device needs CUDA, and this build has no CUDA support (or does not link the "
            "kernels library's CUDA runtime)");
  MOE_CHECK(m->device_count() > 0, "tensor '", what,
            "': placement device needs a CUDA device, and none is present (no GPU or no driver)");
  return *m;
}

}  // namespace moe
