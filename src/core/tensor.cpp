#include "moe/core/tensor.h"

#include <cmath>
#include <cstdlib>
#include <mutex>
#include <new>
#include <sstream>
#include <vector>

#include <sys/mman.h>

#include "moe/core/parallel.h"

namespace moe {

std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << '(';
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  if (s.size() == 1) os << ',';
  os << ')';
  return os.str();
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  bool negative = false;
  for (int64_t d : s)
    if (d == 0) return 0;
  for (int64_t d : s) {
    negative = negative || d < 0;
    MOE_CHECK(!__builtin_mul_overflow(n, d, &n), "shape ", shape_str(s),
              ": the element count overflows int64");
  }
  MOE_CHECK(negative || n <= kMaxTensorElements, "shape ", shape_str(s), " has ", n,
            " elements, more than a tensor may hold (", kMaxTensorElements, ")");
  return n;
}

// Buffers of at least kHugeMin bytes are 2 MiB aligned and marked for transparent huge pages
// (where the kernel offers them on request, "madvise" mode): their first touch then faults once per
// 2 MiB instead of once per 4 KiB. Activations of a large MoE layer are fresh mappings every step
// (glibc maps big blocks and unmaps them on free), and those faults cost ~5% of a step here.
constexpr size_t kHuge = size_t{2} << 20;
constexpr size_t kHugeMin = size_t{8} << 20;

void* aligned_alloc64(size_t bytes) {
  if (bytes >= kHugeMin) {
    const size_t rounded = (bytes + kHuge - 1) / kHuge * kHuge;
    void* p = std::aligned_alloc(kHuge, rounded);
    if (!p) throw Error(cat("out of memory allocating ", bytes, " bytes"));
#ifdef MADV_HUGEPAGE
    (void)madvise(p, rounded, MADV_HUGEPAGE);  // a hint: without huge pages nothing changes
#endif
    return p;
  }
  const size_t rounded = (bytes + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, rounded == 0 ? 64 : rounded);
  if (!p) throw Error(cat("out of memory allocating ", bytes, " bytes"));
  return p;
}

void aligned_free64(void* p) { std::free(p); }

namespace {

#if defined(__SANITIZE_ADDRESS__)
constexpr bool kSanitized = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif
#else
constexpr bool kSanitized = false;
#endif

constexpr size_t kCacheMin = size_t{1} << 20;

// The size class of a buffer of `bytes` (0: too small to cache).
size_t block_class(size_t bytes) {
  if (bytes < kCacheMin) return 0;
  const size_t step = bytes >= kHugeMin ? kHuge : size_t{64} << 10;
  return (bytes + step - 1) / step * step;
}

size_t default_cache_limit() {
  if (const char* env = std::getenv("MOE_TENSOR_CACHE_MB")) {
    char* end = nullptr;
    const unsigned long long mb = std::strtoull(env, &end, 10);
    if (end != env && *end == '\0') return static_cast<size_t>(mb) << 20;
  }
  return kSanitized ? 0 : size_t{1024} << 20;
}

// Free blocks, oldest first; a handful at a time, so linear scans are cheap.
struct BlockCache {
  std::mutex mu;
  std::vector<std::pair<size_t, void*>> blocks;
  size_t held = 0;
  size_t limit = default_cache_limit();
  uint64_t reused = 0, fresh = 0;

  void* take(size_t cls) {
    std::lock_guard<std::mutex> lock(mu);
    for (size_t i = blocks.size(); i-- > 0;) {  // the most recently freed of its class
      if (blocks[i].first != cls) continue;
      void* p = blocks[i].second;
      blocks.erase(blocks.begin() + static_cast<std::ptrdiff_t>(i));
      held -= cls;
      ++reused;
      return p;
    }
    ++fresh;
    return nullptr;
  }
  // Keeps p (class cls) or frees it; frees the oldest blocks beyond the limit.
  void give(size_t cls, void* p) {
    std::vector<void*> out;
    {
      std::lock_guard<std::mutex> lock(mu);
      if (cls > limit) {
        out.push_back(p);
      } else {
        blocks.emplace_back(cls, p);
        held += cls;
        size_t drop = 0;
        while (held > limit) {
          held -= blocks[drop].first;
          out.push_back(blocks[drop].second);
          ++drop;
        }
        blocks.erase(blocks.begin(), blocks.begin() + static_cast<std::ptrdiff_t>(drop));
      }
    }
    for (void* q : out) aligned_free64(q);
  }
  void release_all() {
    std::vector<std::pair<size_t, void*>> out;
    {
      std::lock_guard<std::mutex> lock(mu);
      out.swap(blocks);
      held = 0;
    }
    for (auto& b : out) aligned_free64(b.second);
  }
};

// Never destroyed: tensors in static objects may be freed after any destructor would have run.
// The blocks it holds at exit stay reachable from it.
BlockCache& block_cache() {
  static BlockCache* c = new BlockCache;
  return *c;
}

}  // namespace

TensorCacheStats tensor_cache_stats() {
  BlockCache& c = block_cache();
  std::lock_guard<std::mutex> lock(c.mu);
  TensorCacheStats s;
  s.held_bytes = c.held;
  s.held_blocks = c.blocks.size();
  s.limit_bytes = c.limit;
  s.reused = c.reused;
  s.fresh = c.fresh;
  return s;
}

void tensor_cache_release() { block_cache().release_all(); }

void set_tensor_cache_limit(size_t bytes) {
  BlockCache& c = block_cache();
  {
    std::lock_guard<std::mutex> lock(c.mu);
    c.limit = bytes;
  }
  c.release_all();
}

Storage::Storage(size_t bytes, Placement placement, const char* what) : bytes_(bytes), placement_(placement) {
  if (placement == Placement::Device) {
    DeviceMemory& dm = require_device_memory(what);
    data_ = dm.alloc(bytes);
    runtime_ = &dm;
    return;
  }
  if (placement == Placement::Pinned) {
    DeviceMemory* dm = device_memory();
    if (dm == nullptr || dm->device_count() == 0) {
      data_ = aligned_alloc64(bytes);  // the documented fallback: ordinary host memory
      return;
    }
    data_ = dm->alloc_pinned(bytes);
    runtime_ = dm;
    return;
  }
  block_ = block_class(bytes);
  if (block_ != 0) {
    BlockCache& c = block_cache();
    data_ = c.take(block_);
    if (data_ != nullptr) return;
    try {
      data_ = aligned_alloc64(block_);
    } catch (const Error&) {
      c.release_all();  // the cache's blocks may be what the system is short of
      data_ = aligned_alloc64(block_);
    }
    return;
  }
  data_ = aligned_alloc64(bytes);
}

Storage::Storage(void* data, size_t bytes, std::shared_ptr<void> owner)
    : data_(data), bytes_(bytes), owner_(std::move(owner)), borrowed_(true) {}

Storage::~Storage() {
  if (borrowed_) return;  // owner_ (if any) lets go of the memory
  if (block_ != 0) {
    block_cache().give(block_, data_);
  } else if (placement_ == Placement::Device) {
    runtime_->free(data_);
  } else if (runtime_ != nullptr) {
    runtime_->free_pinned(data_);
  } else {
    aligned_free64(data_);
  }
}

static Shape contiguous_strides(const Shape& shape) {
  Shape st(shape.size());
  int64_t s = 1;
  for (int i = static_cast<int>(shape.size()) - 1; i >= 0; --i) {
    st[i] = s;
    s *= shape[i];
  }
  return st;
}

static size_t bytes_for(int64_t numel, DType dt) {
  return static_cast<size_t>((numel * dtype_bits(dt) + 7) / 8);
}

namespace {
// Fast conversions between contiguous float buffers; false when the pair has no fast path.
bool convert_contiguous(DType from, const void* src, DType to, void* dst, int64_t n) {
  auto run = [n](auto&& op) {
    parallel_for(n, 1 << 16, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) op(i);
    });
  };
  if (from == DType::F32 && to == DType::BF16) {
    run([&](int64_t i) { static_cast<uint16_t*>(dst)[i] = f32_to_bf16(static_cast<const float*>(src)[i]); });
  } else if (from == DType::BF16 && to == DType::F32) {
    run([&](int64_t i) { static_cast<float*>(dst)[i] = bf16_to_f32(static_cast<const uint16_t*>(src)[i]); });
  } else if (from == DType::F32 && to == DType::F64) {
    run([&](int64_t i) { static_cast<double*>(dst)[i] = static_cast<const float*>(src)[i]; });
  } else if (from == DType::F64 && to == DType::F32) {
    run([&](int64_t i) {
      static_cast<float*>(dst)[i] = static_cast<float>(static_cast<const double*>(src)[i]);
    });
  } else {
    return false;
  }
  return true;
}
}  // namespace

Tensor Tensor::empty(const Shape& shape, DType dtype, std::string name, Placement placement) {
  for (int64_t d : shape)
    MOE_CHECK(d >= 0, "tensor '", name, "': negative dimension in shape ", shape_str(shape));
  Tensor t;
  t.storage_ = std::make_shared<Storage>(bytes_for(shape_numel(shape), dtype), placement, name.c_str());
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  t.dtype_ = dtype;
  t.name_ = std::move(name);
  return t;
}

Tensor Tensor::borrow(void* data, const Shape& shape, DType dtype, std::shared_ptr<void> owner,
                      std::string name) {
  for (int64_t d : shape)
    MOE_CHECK(d >= 0, "tensor '", name, "': negative dimension in shape ", shape_str(shape));
  const size_t bytes = bytes_for(shape_numel(shape), dtype);
  MOE_CHECK(data != nullptr || bytes == 0, "tensor '", name, "': borrowed memory is null for shape ",
            shape_str(shape));
  Tensor t;
  t.storage_ = std::make_shared<Storage>(data, bytes, std::move(owner));
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  t.dtype_ = dtype;
  t.name_ = std::move(name);
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, std::string name, Placement placement) {
  Tensor t = empty(shape, dtype, std::move(name), placement);
  if (placement == Placement::Device) {
    t.storage_->runtime()->zero(t.storage_->data(), t.storage_->bytes());
  } else {
    std::memset(t.storage_->data(), 0, t.storage_->bytes());
  }
  return t;
}

Tensor Tensor::full(const Shape& shape, double value, DType dtype, std::string name) {
  Tensor t = empty(shape, dtype, std::move(name));
  t.fill(value);
  return t;
}

Tensor Tensor::from(const std::vector<double>& values, const Shape& shape, DType dtype, std::string name) {
  MOE_CHECK(static_cast<int64_t>(values.size()) == shape_numel(shape), "tensor '", name, "': ", values.size(),
            " values do not fill shape ", shape_str(shape));
  Tensor t = empty(shape, dtype, std::move(name));
  const int64_t n = static_cast<int64_t>(values.size());
  if (dtype == DType::F64) {
    if (n > 0) std::memcpy(t.raw(), values.data(), values.size() * sizeof(double));
  } else if (!convert_contiguous(DType::F64, values.data(), dtype, t.raw(), n)) {
    for (int64_t i = 0; i < n; ++i) t.set(i, values[static_cast<size_t>(i)]);
  }
  return t;
}

int64_t Tensor::size(int d) const {
  const int nd = dim();
  const int dd = d < 0 ? d + nd : d;
  MOE_CHECK(dd >= 0 && dd < nd, "tensor '", name_, "': dimension ", d, " out of range for shape ",
            shape_str(shape_));
  return shape_[dd];
}

size_t Tensor::nbytes() const { return bytes_for(numel(), dtype_); }

bool Tensor::is_contiguous() const { return strides_ == contiguous_strides(shape_); }

void* Tensor::raw() const {
  MOE_CHECK(storage_, "tensor '", name_, "' is undefined");
  auto* base = static_cast<char*>(storage_->data());
  if (dtype_ == DType::I4) return base + offset_ / 2;
  return base + offset_ * (dtype_bits(dtype_) / 8);
}

void Tensor::check_host(const char* op) const {
  MOE_CHECK(placement() != Placement::Device, "tensor '", name_, "': on device; copy it to the host first (",
            op, ")");
}

void Tensor::check_dtype(DType expected, const char* what) const {
  MOE_CHECK(dtype_ == expected, "tensor '", what ? what : name_.c_str(), "': expected dtype ",
            dtype_name(expected), ", got ", dtype_name(dtype_));
}

int64_t Tensor::storage_index(int64_t flat) const {
  int64_t idx = offset_;
  for (int d = dim() - 1; d >= 0; --d) {
    const int64_t n = shape_[d];
    idx += (flat % n) * strides_[d];
    flat /= n;
  }
  return idx;
}

double Tensor::get(int64_t flat) const {
  MOE_CHECK(storage_, "tensor '", name_, "' is undefined");
  check_host("get");
  MOE_CHECK(flat >= 0 && flat < numel(), "tensor '", name_, "': index ", flat, " out of range for ",
            shape_str(shape_));
  const int64_t i = storage_index(flat);
  const void* base = storage_->data();
  switch (dtype_) {
    case DType::F32:
      return static_cast<const float*>(base)[i];
    case DType::F64:
      return static_cast<const double*>(base)[i];
    case DType::BF16:
      return bf16_to_f32(static_cast<const uint16_t*>(base)[i]);
    case DType::F16:
      return f16_to_f32(static_cast<const uint16_t*>(base)[i]);
    case DType::I8:
      return static_cast<const int8_t*>(base)[i];
    case DType::I32:
      return static_cast<const int32_t*>(base)[i];
    case DType::I64:
      return static_cast<double>(static_cast<const int64_t*>(base)[i]);
    case DType::U8:
      return static_cast<const uint8_t*>(base)[i];
    case DType::I4: {
      const uint8_t b = static_cast<const uint8_t*>(base)[i / 2];
      int v = (i % 2 == 0) ? (b & 0xf) : (b >> 4);
      return v >= 8 ? v - 16 : v;
    }
  }
  return 0;
}

void Tensor::set(int64_t flat, double v) {
  MOE_CHECK(storage_, "tensor '", name_, "' is undefined");
  check_host("set");
  MOE_CHECK(flat >= 0 && flat < numel(), "tensor '", name_, "': index ", flat, " out of range for ",
            shape_str(shape_));
  const int64_t i = storage_index(flat);
  void* base = storage_->data();
  switch (dtype_) {
    case DType::F32:
      static_cast<float*>(base)[i] = static_cast<float>(v);
      break;
    case DType::F64:
      static_cast<double*>(base)[i] = v;
      break;
    case DType::BF16:
      static_cast<uint16_t*>(base)[i] = f32_to_bf16(static_cast<float>(v));
      break;
    case DType::F16:
      static_cast<uint16_t*>(base)[i] = f32_to_f16(static_cast<float>(v));
      break;
    case DType::I8:
      static_cast<int8_t*>(base)[i] = static_cast<int8_t>(v);
      break;
    case DType::I32:
      static_cast<int32_t*>(base)[i] = static_cast<int32_t>(v);
      break;
    case DType::I64:
      static_cast<int64_t*>(base)[i] = static_cast<int64_t>(v);
      break;
    case DType::U8:
      static_cast<uint8_t*>(base)[i] = static_cast<uint8_t>(v);
      break;
    case DType::I4: {
      MOE_CHECK(v >= -8 && v <= 7, "tensor '", name_, "': value ", v, " does not fit int4");
      auto* b = static_cast<uint8_t*>(base) + i / 2;
      const uint8_t nib = static_cast<uint8_t>(static_cast<int>(v) & 0xf);
      *b = (i % 2 == 0) ? static_cast<uint8_t>((*b & 0xf0) | nib)
                        : static_cast<uint8_t>((*b & 0x0f) | (nib << 4));
      break;
    }
  }
}

std::vector<double> Tensor::to_vector() const {
  check_host("to_vector");
  const int64_t n = numel();
  std::vector<double> out(static_cast<size_t>(n));
  if (is_contiguous() && dtype_ == DType::F64) {
    if (n > 0) std::memcpy(out.data(), raw(), static_cast<size_t>(n) * sizeof(double));
  } else if (!is_contiguous() || !convert_contiguous(dtype_, raw(), DType::F64, out.data(), n)) {
    for (int64_t i = 0; i < n; ++i) out[static_cast<size_t>(i)] = get(i);
  }
  return out;
}

Tensor Tensor::reshape(const Shape& shape) const {
  MOE_CHECK(shape_numel(shape) == numel(), "tensor '", name_, "': cannot reshape ", shape_str(shape_), " to ",
            shape_str(shape));
  MOE_CHECK(is_contiguous(), "tensor '", name_, "': reshape needs a contiguous tensor");
  Tensor t = *this;
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  return t;
}

Tensor Tensor::slice(int d, int64_t begin, int64_t end) const {
  const int dd = d < 0 ? d + dim() : d;
  MOE_CHECK(dd >= 0 && dd < dim(), "tensor '", name_, "': slice dimension ", d, " out of range");
  MOE_CHECK(0 <= begin && begin <= end && end <= shape_[dd], "tensor '", name_, "': slice [", begin, ", ",
            end, ") out of range for dimension ", dd, " of size ", shape_[dd]);
  MOE_CHECK(dtype_ != DType::I4, "tensor '", name_, "': slicing int4 tensors is not supported");
  Tensor t = *this;
  t.offset_ += begin * strides_[dd];
  t.shape_[dd] = end - begin;
  return t;
}

Tensor Tensor::transpose(int d0, int d1) const {
  const int a = d0 < 0 ? d0 + dim() : d0, b = d1 < 0 ? d1 + dim() : d1;
  MOE_CHECK(a >= 0 && a < dim() && b >= 0 && b < dim(), "tensor '", name_, "': transpose(", d0, ", ", d1,
            ") out of range for ", shape_str(shape_));
  Tensor t = *this;
  std::swap(t.shape_[a], t.shape_[b]);
  std::swap(t.strides_[a], t.strides_[b]);
  return t;
}

Tensor Tensor::contiguous() const {
  if (is_contiguous()) return *this;
  check_host("contiguous of a strided tensor");
  return clone();
}

Tensor Tensor::clone() const {
  Tensor t = empty(shape_, dtype_, name_, placement());
  if (t.on_device() || on_device()) {
    t.copy_from(*this);
  } else if (is_contiguous() && dtype_ != DType::I4) {
    std::memcpy(t.raw(), raw(), nbytes());
  } else {
    t.copy_from(*this);
  }
  return t;
}

Tensor Tensor::to(DType dtype) const {
  if (dtype != dtype_) check_host("dtype conversion");
  Tensor t = empty(shape_, dtype, name_, on_device() ? Placement::Device : Placement::Host);
  t.copy_from(*this);
  return t;
}

Tensor Tensor::to(Placement p) const {
  MOE_CHECK(storage_, "tensor '", name_, "' is undefined");
  Tensor t = empty(shape_, dtype_, name_, p);
  t.copy_from(on_device() ? *this : contiguous());
  return t;
}

void Tensor::fill(double v) {
  check_host("fill");
  const int64_t n = numel();
  if (dtype_ == DType::F32 && is_contiguous()) {
    float* p = data<float>();
    for (int64_t i = 0; i < n; ++i) p[i] = static_cast<float>(v);
    return;
  }
  for (int64_t i = 0; i < n; ++i) set(i, v);
}

void Tensor::copy_from(const Tensor& src) {
  MOE_CHECK(src.shape_ == shape_, "copy into tensor '", name_, "': expected shape ", shape_str(shape_),
            ", got ", shape_str(src.shape_), " from '", src.name_, "'");
  if (on_device() || src.on_device()) return copy_across(src);
  if (src.dtype_ == dtype_ && is_contiguous() && src.is_contiguous() && dtype_ != DType::I4) {
    std::memcpy(raw(), src.raw(), nbytes());
    return;
  }
  const int64_t n = numel();
  if (is_contiguous() && src.is_contiguous() && convert_contiguous(src.dtype_, src.raw(), dtype_, raw(), n))
    return;
  for (int64_t i = 0; i < n; ++i) set(i, src.get(i));
}

void Tensor::copy_across(const Tensor& src) {
  MOE_CHECK(src.dtype_ == dtype_, "copy into tensor '", name_, "' (", placement_name(placement()), ") from '",
            src.name_, "' (", placement_name(src.placement()), "): a copy to or from the device ",
            "keeps the dtype; expected ", dtype_name(dtype_), ", got ", dtype_name(src.dtype_),
            " (convert on the host)");
  MOE_CHECK(is_contiguous() && src.is_contiguous(), "copy into tensor '", name_, "' from '", src.name_,
            "': a copy to or from the device needs both tensors contiguous");
  const size_t bytes = nbytes();
  if (bytes == 0) return;
  DeviceMemory* dm = on_device() ? storage_->runtime() : src.storage_->runtime();
  dm->copy(raw(), placement(), src.raw(), src.placement(), bytes);
}

void check_defined(const Tensor& t, const std::string& what) {
  MOE_CHECK(t.defined(), "tensor '", what, "' is missing (undefined)");
}

void check_shape(const Tensor& t, const Shape& expected, const std::string& what) {
  check_defined(t, what);
  bool ok = t.dim() == static_cast<int>(expected.size());
  for (size_t i = 0; ok && i < expected.size(); ++i) ok = expected[i] < 0 || expected[i] == t.shape()[i];
  MOE_CHECK(ok, "tensor '", what, "': expected shape ", shape_str(expected), ", got ", shape_str(t.shape()));
}

void check_finite(const Tensor& t, const std::string& what) {
  check_defined(t, what);
  MOE_CHECK(!t.on_device(), "tensor '", what, "': on device; copy it to the host first (check_finite)");
  const int64_t n = t.numel();
  auto report = [&](int64_t i, double v) {
    throw Error(cat("tensor '", what, "' of shape ", shape_str(t.shape()), ": non-finite value ", v,
                    " at flat index ", i));
  };
  if (t.dtype() == DType::F32 && t.is_contiguous()) {
    const float* p = t.data<float>();
    for (int64_t i = 0; i < n; ++i)
      if (!std::isfinite(p[i])) report(i, p[i]);
    return;
  }
  if (t.dtype() == DType::F64 && t.is_contiguous()) {
    const double* p = t.data<double>();
    for (int64_t i = 0; i < n; ++i)
      if (!std::isfinite(p[i])) report(i, p[i]);
    return;
  }
  for (int64_t i = 0; i < n; ++i) {
    const double v = t.get(i);
    if (!std::isfinite(v)) report(i, v);
  }
}

}  // namespace moe
