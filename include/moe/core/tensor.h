// A strided tensor over reference-counted, 64-byte aligned storage.
//
// Storage has a placement (moe/core/placement.h): host memory (the default), device memory or pinned
// host memory. Views share the placement of their storage. Host code reads and writes only Host and
// Pinned tensors: element access, fill, dtype conversion and strided copies of a Device tensor throw
// moe::Error ("tensor 'w': on device; copy it to the host first"); raw()/data<T>() give its device
// pointer, for ops running on the device. Copies between placements are explicit: to(Placement) and
// copy_from (same dtype, contiguous).
//
// Shape and strides are in elements. Views (reshape, slice, transpose) share storage. Every tensor
// may carry a name, used in error messages ("tensor 'w_gate': expected shape (8, 64, 32), got ...").
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "moe/core/dtype.h"
#include "moe/core/error.h"
#include "moe/core/placement.h"

namespace moe {

using Shape = std::vector<int64_t>;

std::string shape_str(const Shape& s);  // "(4, 8)"
// The most elements one tensor may hold (2^40: terabytes, beyond any machine's memory, far below
// int64 overflow of its byte count).
inline constexpr int64_t kMaxTensorElements = int64_t{1} << 40;
// Product of the dimensions; throws moe::Error when it overflows or exceeds kMaxTensorElements.
int64_t shape_numel(const Shape& s);

// 64-byte aligned allocation (cache line and AVX-512 register size). Throws moe::Error on failure.
void* aligned_alloc64(size_t bytes);
void aligned_free64(void* p);

// Tensor buffer cache (host placement only). Freed tensor buffers of at least 1 MiB are kept (up to a limit
// of bytes held) and handed to the next tensor of the same size class instead of going back to the system: a
// training step allocates the same activation shapes every step, and a fresh mapping costs a page
// fault and a page clear per page on first touch (9% of a fine-grained MoE layer's forward+backward
// in the kernel's page clearing here, by perf).
// Size classes: 64 KiB steps below 8 MiB, 2 MiB steps above. When the limit would be exceeded the
// blocks freed longest ago go back first; an allocation that fails releases the cache and retries.
// Default limit: MOE_TENSOR_CACHE_MB (MiB) if set, else 1024 MiB; 0 under AddressSanitizer (so a
// use after free stays detectable) unless MOE_TENSOR_CACHE_MB says otherwise.
struct TensorCacheStats {
  size_t held_bytes = 0;  // bytes of free blocks kept now
  size_t held_blocks = 0;
  size_t limit_bytes = 0;
  uint64_t reused = 0;  // allocations served from the cache
  uint64_t fresh = 0;   // cacheable allocations that went to the system
};
TensorCacheStats tensor_cache_stats();
void tensor_cache_release();                // returns every kept block to the system
void set_tensor_cache_limit(size_t bytes);  // 0 turns the cache off (and releases it)

class Storage {
 public:
  // `what` names the tensor in errors (a Device placement without CUDA or without a device).
  explicit Storage(size_t bytes, Placement placement = Placement::Host, const char* what = "");
  // Host memory this storage does not own: `owner` keeps it alive and is released with the storage
  // (Tensor::borrow).
  Storage(void* data, size_t bytes, std::shared_ptr<void> owner);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  Placement placement() const { return placement_; }
  // The device runtime that allocated this block (Device, page-locked Pinned), else null.
  DeviceMemory* runtime() const { return runtime_; }

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
  size_t block_ = 0;  // size class of a cacheable block (0: not cacheable)
  Placement placement_ = Placement::Host;
  DeviceMemory* runtime_ = nullptr;  // the runtime that allocated a Device or page-locked Pinned block
  std::shared_ptr<void> owner_;      // borrowed memory: its owner (nothing is freed here)
  bool borrowed_ = false;
};

class Tensor {
 public:
  Tensor() = default;

  // placement: where the memory lives; Device throws moe::Error without CUDA or without a device.
  static Tensor empty(const Shape& shape, DType dtype = DType::F32, std::string name = {},
                      Placement placement = Placement::Host);
  static Tensor zeros(const Shape& shape, DType dtype = DType::F32, std::string name = {},
                      Placement placement = Placement::Host);
  static Tensor full(const Shape& shape, double value, DType dtype = DType::F32, std::string name = {});
  // A contiguous host tensor over memory the caller owns (e.g. another framework's tensor): no copy.
  // `owner` is held as long as any tensor shares this storage (null: the caller keeps `data` alive).
  // Throws when data is null with a non-empty shape or a dimension is negative.
  static Tensor borrow(void* data, const Shape& shape, DType dtype, std::shared_ptr<void> owner,
                       std::string name = {});
  // Copies `values` (converted to `dtype`) into a new contiguous tensor of `shape`.
  static Tensor from(const std::vector<double>& values, const Shape& shape, DType dtype = DType::F32,
                     std::string name = {});

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }
  DType dtype() const { return dtype_; }
  int dim() const { return static_cast<int>(shape_.size()); }
  int64_t size(int d) const;  // negative d counts from the end
  int64_t numel() const { return shape_numel(shape_); }
  size_t nbytes() const;  // bytes of the elements this tensor covers when contiguous
  bool is_contiguous() const;
  const std::string& name() const { return name_; }
  // Where the storage lives (Host for an undefined tensor).
  Placement placement() const { return storage_ ? storage_->placement() : Placement::Host; }
  bool on_device() const { return placement() == Placement::Device; }
  Tensor& set_name(std::string n) {
    name_ = std::move(n);
    return *this;
  }

  // Typed pointer to the first element; throws when T does not match dtype().
  template <typename T>
  T* data() const {
    check_dtype(dtype_of<T>::value);
    return static_cast<T*>(raw());
  }
  void* raw() const;

  // Element access for any float dtype, converted to/from double (slow; for tests and tools).
  // Host-accessible placements only (as fill, to_vector and the dtype conversions below).
  double get(int64_t flat_index) const;  // index into the logical (row-major) order
  void set(int64_t flat_index, double v);
  std::vector<double> to_vector() const;

  Tensor reshape(const Shape& shape) const;  // a view; requires contiguity
  Tensor slice(int d, int64_t begin, int64_t end) const;
  Tensor transpose(int d0, int d1) const;
  Tensor contiguous() const;  // itself when already contiguous (a strided Device tensor throws)
  Tensor clone() const;       // same placement; a Device tensor must be contiguous
  Tensor to(DType dtype) const;
  // A new contiguous tensor in placement p with this one's values (always a copy). Host <-> device
  // copies are synchronous; a strided Device tensor throws.
  Tensor to(Placement p) const;
  void fill(double v);
  // Same shape. Host-accessible tensors: any strides, converts dtype. With a Device tensor on either
  // side: same dtype and both contiguous (one synchronous copy through the device runtime).
  void copy_from(const Tensor& src);

  // Throws moe::Error naming the tensor when its memory is on the device: "tensor 'w': on device;
  // copy it to the host first (get)". `op` names what needed host access.
  void check_host(const char* op) const;

  // Throws moe::Error naming the tensor `what` (default: its own name) when dtype differs.
  void check_dtype(DType expected, const char* what = nullptr) const;

 private:
  std::shared_ptr<Storage> storage_;
  int64_t offset_ = 0;  // in elements (bytes for I4 are offset_/2)
  Shape shape_;
  Shape strides_;
  DType dtype_ = DType::F32;
  std::string name_;

  int64_t storage_index(int64_t flat_index) const;
  void copy_across(const Tensor& src);  // copy_from with a Device tensor on either side
};

// Shape checks with messages that name the tensor: "tensor 'x': expected shape (4, 8), got (4, 7)".
// A dimension of -1 in `expected` matches any size.
void check_shape(const Tensor& t, const Shape& expected, const std::string& what);
void check_defined(const Tensor& t, const std::string& what);
// Throws when any element is NaN or infinite, naming the tensor and the first bad index.
void check_finite(const Tensor& t, const std::string& what);

}  // namespace moe
