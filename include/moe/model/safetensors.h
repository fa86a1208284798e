// Hugging Face safetensors files: read and write.
//
// Layout: 8-byte little-endian header length n, n bytes of JSON header, then the data buffer.
// The header maps each tensor name to {"dtype": "F32", "shape": [2, 3], "data_offsets": [b, e]}
// (offsets relative to the start of the data buffer) and may hold "__metadata__": {str: str}.
//
// Supported dtypes: F64, F32, BF16, F16, I64, I32, I8, U8 (and BOOL, read as U8 with values 0/1).
// Shape [] is a scalar (numel 1). Every malformed input throws moe::Error naming the file and,
// where relevant, the tensor: a missing or truncated file, a header length beyond the file, invalid
// JSON, an unknown dtype, data_offsets out of the buffer or not matching shape x dtype size, or two
// tensors whose byte ranges overlap. Gaps between tensors and unused trailing bytes are accepted.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "moe/core/tensor.h"

namespace moe {

// One tensor entry of a safetensors header.
struct SafetensorsEntry {
  DType dtype = DType::F32;
  Shape shape;
  uint64_t begin = 0;  // byte offsets into the data buffer
  uint64_t end = 0;
};

// Reads the header once; loads tensors on demand (plain reads, one seek per tensor).
class SafetensorsReader {
 public:
  explicit SafetensorsReader(std::string path);  // parses and validates the whole header

  const std::string& path() const { return path_; }
  std::vector<std::string> names() const;  // sorted
  bool contains(const std::string& name) const { return entries_.count(name) != 0; }
  const SafetensorsEntry& entry(const std::string& name) const;  // throws when absent
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  uint64_t data_start() const { return data_start_; }  // file offset of the data buffer (8 + header length)

  Tensor load(const std::string& name) const;  // a new contiguous tensor named `name`
  // The tensor over the memory-mapped file, no copy (moe/core/mapped_file.h: pages are read as they
  // are touched; writes stay private). Undefined when its bytes are not aligned to its element size
  // (a writer that does not align its tensors) or it is packed int4: load it instead.
  Tensor map(const std::string& name) const;
  std::map<std::string, Tensor> load_all() const;

 private:
  std::string path_;
  uint64_t data_start_ = 0;  // 8 + header length
  uint64_t data_size_ = 0;
  std::map<std::string, SafetensorsEntry> entries_;
  std::map<std::string, std::string> metadata_;
};

// Every tensor of the file, by name.
std::map<std::string, Tensor> load_safetensors(const std::string& path);

// Writes `tensors` (any layout; non-contiguous ones are copied) to `path + ".tmp"`, then renames it
// to `path`, so a reader never sees a half-written file. I4 tensors and undefined tensors are
// rejected (safetensors has no packed int4 type). As the Hugging Face writer does, tensors are laid
// out back to back without gaps, ordered by element size (largest first) then name, so each one is
// aligned to its element size; the header is padded with spaces to a multiple of 8 bytes.
void save_safetensors(const std::string& path, const std::map<std::string, Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// "F32", "BF16", ... as written in safetensors headers; throws on I4.
const char* safetensors_dtype_name(DType t);

}  // namespace moe
