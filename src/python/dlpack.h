// Zero-copy exchange of host tensors with other frameworks through DLPack capsules
// (torch.utils.dlpack, numpy.from_dlpack, ...). The structs follow the DLPack ABI (v0.8 layout of
// DLManagedTensor, which every consumer of the "dltensor" capsule reads); only what moe_cpp needs.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "moe/core/tensor.h"

namespace moe::python {

struct DLDevice {
  int32_t device_type;  // 1 = CPU
  int32_t device_id;
};
struct DLDataType {
  uint8_t code;  // 0 int, 1 uint, 2 float, 4 bfloat
  uint8_t bits;
  uint16_t lanes;
};
struct DLTensor {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;  // in elements; null = contiguous
  uint64_t byte_offset;
};
struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor* self);
};

// Takes a "dltensor" capsule (renamed "used_dltensor", as the protocol says) and returns a tensor over
// the same memory; the producer's deleter runs when the last tensor sharing it goes. Throws moe::Error
// naming `what` for a device tensor, a strided (non-contiguous) one or an unsupported dtype.
Tensor from_dlpack(const pybind11::capsule& cap, const std::string& what);

// A "dltensor" capsule over the tensor's memory (contiguous host tensors; no copy): the consumer
// (e.g. torch.utils.dlpack.from_dlpack) keeps the storage alive.
pybind11::capsule to_dlpack(const Tensor& t);

}  // namespace moe::python
