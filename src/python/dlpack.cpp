#include "python/dlpack.h"

#include <memory>
#include <vector>

#include "moe/core/error.h"

namespace moe::python {

namespace py = pybind11;

namespace {

constexpr const char* kCapsule = "dltensor";
constexpr const char* kUsed = "used_dltensor";

DType dtype_from(const DLDataType& t, const std::string& what) {
  MOE_CHECK(t.lanes == 1, "tensor '", what, "': vector dtypes (lanes ", t.lanes, ") are not supported");
  if (t.code == 2 && t.bits == 32) return DType::F32;
  if (t.code == 2 && t.bits == 64) return DType::F64;
  if (t.code == 2 && t.bits == 16) return DType::F16;
  if (t.code == 4 && t.bits == 16) return DType::BF16;
  if (t.code == 0 && t.bits == 32) return DType::I32;
  if (t.code == 0 && t.bits == 64) return DType::I64;
  if (t.code == 0 && t.bits == 8) return DType::I8;
  if (t.code == 1 && t.bits == 8) return DType::U8;
  throw Error(
      cat("tensor '", what, "': unsupported dtype (DLPack code ", int(t.code), ", ", int(t.bits), " bits)"));
}

DLDataType dl_dtype(DType t) {
  switch (t) {
    case DType::F32:
      return {2, 32, 1};
    case DType::F64:
      return {2, 64, 1};
    case DType::F16:
      return {2, 16, 1};
    case DType::BF16:
      return {4, 16, 1};
    case DType::I32:
      return {0, 32, 1};
    case DType::I64:
      return {0, 64, 1};
    case DType::I8:
      return {0, 8, 1};
    case DType::U8:
      return {1, 8, 1};
    default:
      throw Error(cat("dtype ", dtype_name(t), " has no DLPack equivalent"));
  }
}

// What an exported capsule owns: a tensor sharing the storage, and the shape the DLTensor points at.
struct Export {
  Tensor tensor;
  std::vector<int64_t> shape;
  DLManagedTensor managed{};
};

}  // namespace

Tensor from_dlpack(const py::capsule& cap, const std::string& what) {
  MOE_CHECK(std::string(cap.name() ? cap.name() : "") == kCapsule, "tensor '", what,
            "': expected a DLPack capsule ('dltensor'), got '", cap.name() ? cap.name() : "",
            "' (already used?)");
  auto* m = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(cap.ptr(), kCapsule));
  if (m == nullptr) throw py::error_already_set();
  // From here the capsule is ours: its deleter runs with the last tensor over its memory.
  std::shared_ptr<void> owner(m, [](void* p) {
    auto* mt = static_cast<DLManagedTensor*>(p);
    if (mt->deleter != nullptr) mt->deleter(mt);
  });
  PyCapsule_SetName(cap.ptr(), kUsed);
  const DLTensor& t = m->dl_tensor;
  MOE_CHECK(t.device.device_type == 1, "tensor '", what, "': on device type ", t.device.device_type,
            "; moe_cpp's layer runs on host (CPU) tensors");
  const DType dt = dtype_from(t.dtype, what);
  Shape shape(t.shape, t.shape + t.ndim);
  if (t.strides != nullptr) {
    int64_t expect = 1;
    for (int i = t.ndim - 1; i >= 0; --i) {
      MOE_CHECK(shape[i] == 1 || t.strides[i] == expect, "tensor '", what, "' of shape ", shape_str(shape),
                " is not contiguous (call .contiguous() first)");
      expect *= shape[i];
    }
  }
  void* data = static_cast<char*>(t.data) + t.byte_offset;
  return Tensor::borrow(data, shape, dt, std::move(owner), what);
}

py::capsule to_dlpack(const Tensor& t) {
  t.check_host("to_dlpack");
  MOE_CHECK(t.is_contiguous(), "tensor '", t.name(), "': only contiguous tensors are exported");
  auto ex = std::make_unique<Export>();
  ex->tensor = t;
  ex->shape.assign(t.shape().begin(), t.shape().end());
  DLTensor& d = ex->managed.dl_tensor;
  d.data = t.numel() > 0 ? t.raw() : nullptr;
  d.device = {1, 0};
  d.ndim = t.dim();
  d.dtype = dl_dtype(t.dtype());
  d.shape = ex->shape.data();
  d.strides = nullptr;
  d.byte_offset = 0;
  ex->managed.manager_ctx = ex.get();
  ex->managed.deleter = [](DLManagedTensor* self) { delete static_cast<Export*>(self->manager_ctx); };
  DLManagedTensor* m = &ex.release()->managed;
  // An unconsumed capsule frees the export itself; a consumer renames it and calls the deleter later.
  return py::capsule(m, kCapsule, [](PyObject* o) {
    if (PyCapsule_IsValid(o, kCapsule)) {
      auto* mt = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(o, kCapsule));
      mt->deleter(mt);
    }
  });
}

}  // namespace moe::python
