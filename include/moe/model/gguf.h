// GGUF files (llama.cpp's model format): read and write.
//
// Layout (little-endian, versions 2 and 3): magic "GGUF", u32 version, u64 tensor count, u64
// metadata count; the metadata key/value pairs (key: u64 length + bytes; value: u32 type + value,
// arrays as u32 element type + u64 count + elements); one info per tensor (name, u32 n_dims, u64
// dims innermost first — ne[0] is the row length, the reverse of PyTorch's shape —, u32 ggml type,
// u64 offset into the data section); padding to `general.alignment` (default 32); the data section.
//
// Every malformed input throws moe::Error naming the file (and the key or tensor): a bad magic, an
// unsupported version, a truncated file, a count or length that cannot fit in the rest of the file
// (checked before anything is allocated, so a hostile header cannot ask for gigabytes), nested
// arrays deeper than one level, a tensor with more than 4 dims, a zero or overflowing dim product,
// an unknown ggml type, a row length that is not a whole number of the type's blocks, an offset
// that is not aligned, tensor data past the end of the file, two tensors with the same name.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "moe/core/tensor.h"

namespace moe::gguf {

// The ggml tensor types this engine reads (their numbers in ggml.h); others are refused by name.
enum class GgmlType : uint32_t { F32 = 0, F16 = 1, Q4_0 = 2, Q8_0 = 8, Q4_K = 12, Q6_K = 14, BF16 = 30 };
bool ggml_type_supported(uint32_t t);
const char* ggml_type_name(uint32_t t);            // "q4_K", or "type 7" for one this engine does not know
GgmlType ggml_type_from_name(const std::string&);  // "f32", "q8_0", ... (case-insensitive); throws
int64_t ggml_block_size(GgmlType t);               // elements per block (1 for float types)
int64_t ggml_block_bytes(GgmlType t);              // bytes per block

// Blocks of ggml's layouts (ggml-common.h), n elements (a multiple of the type's block size):
// dequantize_row reads n values from `src` (n / block · block_bytes bytes); quantize_row writes
// F32, F16, BF16, Q8_0 and Q4_0 the way ggml's reference quantizers do (round to nearest;
// Q8_0: d = max|x| / 127; Q4_0: d = x_at_max|x| / -8) and refuses the k-quants.
void dequantize_row(GgmlType t, const uint8_t* src, int64_t n, float* dst);
void quantize_row(GgmlType t, const float* src, int64_t n, uint8_t* dst);
uint64_t ggml_row_bytes(GgmlType t, int64_t n);  // bytes of n elements (n a multiple of the block)

// Metadata value types (gguf_type in ggml).
enum class ValueType : uint32_t {
  U8 = 0,
  I8 = 1,
  U16 = 2,
  I16 = 3,
  U32 = 4,
  I32 = 5,
  F32 = 6,
  BOOL = 7,
  STRING = 8,
  ARRAY = 9,
  U64 = 10,
  I64 = 11,
  F64 = 12
};
const char* value_type_name(ValueType t);

// One metadata value. Scalars: integers in `i` (u64 above INT64_MAX is refused), floats in `f` (an
// f32 as the shortest decimal that reads back as that f32: 1e-6 rather than 9.99999997e-07),
// bools in `i` (0/1), strings in `s`. Arrays: `elem` is the element type and the elements are in
// `ints` (integer and bool types), `floats` or `strings`; an array of arrays keeps only its count.
struct Value {
  ValueType type = ValueType::U32;
  int64_t i = 0;
  double f = 0;
  std::string s;
  ValueType elem = ValueType::U32;
  uint64_t count = 0;  // array length
  std::vector<int64_t> ints;
  std::vector<double> floats;
  std::vector<std::string> strings;
  bool is_array() const { return type == ValueType::ARRAY; }
  bool is_int() const;  // an integer or bool scalar
  bool is_float() const { return type == ValueType::F32 || type == ValueType::F64; }
};

struct TensorInfo {
  std::string name;
  std::vector<int64_t> ne;  // dims, innermost first (ne[0] = elements per row)
  GgmlType type = GgmlType::F32;
  uint64_t offset = 0;  // absolute, from the start of the file
  uint64_t bytes = 0;
  int64_t numel() const;
  Shape shape() const;  // PyTorch order: ne reversed
};

// Parses and validates the whole header at construction; reads tensor data on demand.
class Reader {
 public:
  explicit Reader(std::string path);

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_start() const { return data_start_; }
  const std::map<std::string, Value>& metadata() const { return kv_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }  // in file order

  bool has(const std::string& key) const { return kv_.count(key) != 0; }
  const Value* find(const std::string& key) const;  // null when absent
  // Typed reads of a key; throw moe::Error naming the file and key when it is absent or of another type.
  std::string get_string(const std::string& key) const;
  int64_t get_int(const std::string& key) const;
  double get_float(const std::string& key) const;  // float or integer values
  int64_t get_int(const std::string& key, int64_t fallback) const;
  double get_float(const std::string& key, double fallback) const;
  std::string get_string(const std::string& key, const std::string& fallback) const;

  const TensorInfo* find_tensor(const std::string& name) const;  // null when absent
  const TensorInfo& tensor(const std::string& name) const;       // throws when absent
  std::vector<uint8_t> read_raw(const TensorInfo& t) const;      // the tensor's bytes as stored
  // The tensor dequantized to f32, shape in PyTorch order (ne reversed), named `name`.
  Tensor load_f32(const std::string& name) const;
  // Slice i of the outermost dim (PyTorch dim 0) only, e.g. one expert of a stacked (E, F, d)
  // tensor: its bytes are read alone (blocks never cross rows).
  Tensor load_f32_slice(const std::string& name, int64_t i) const;

 private:
  std::string path_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_start_ = 0;
  uint64_t file_size_ = 0;
  std::map<std::string, Value> kv_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> by_name_;
};

// A tensor to write: a name, a value (f32, any shape; written with dims reversed) and the ggml type
// to store it as. Quantized types need a last dim that is a multiple of their block.
struct WriteTensor {
  std::string name;
  Tensor value;
  GgmlType type = GgmlType::F32;
};

// Writes a GGUF v3 file (alignment 32, to path + ".tmp", then renamed). Metadata keys are written in
// the order given.
struct WriteFile {
  std::vector<std::pair<std::string, Value>> metadata;
  std::vector<WriteTensor> tensors;
};
void write_file(const std::string& path, const WriteFile& f);

// Value constructors for writing.
Value str_value(std::string s);
Value u32_value(uint32_t v);
Value i32_value(int32_t v);
Value f32_value(float v);
Value bool_value(bool v);
Value str_array(std::vector<std::string> v);
Value f32_array(std::vector<double> v);
Value i32_array(std::vector<int64_t> v);

}  // namespace moe::gguf
