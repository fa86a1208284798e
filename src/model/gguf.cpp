// GGUF reader: header, metadata and tensor infos, validated before anything is allocated.
#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>

#include "moe/core/error.h"
#include "moe/model/gguf.h"

namespace moe::gguf {

namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as a little-endian u32
constexpr uint32_t kMaxDims = 4;         // GGML_MAX_DIMS
constexpr uint64_t kMaxAlignment = uint64_t{1} << 20;

// Sequential reads of a file whose size is known, each checked against the bytes left, so that a
// length field is compared with the rest of the file before anything of that length is allocated.
class Cursor {
 public:
  Cursor(std::ifstream& in, uint64_t size, const std::string& path) : in_(in), size_(size), path_(path) {}
  uint64_t pos() const { return pos_; }
  uint64_t left() const { return size_ - pos_; }

  void bytes(void* dst, uint64_t n, const std::string& what) {
    MOE_CHECK(n <= left(), "gguf '", path_, "': truncated file: ", what, " needs ", n, " bytes at offset ",
              pos_, " but only ", left(), " remain");
    in_.read(static_cast<char*>(dst), static_cast<std::streamsize>(n));
    MOE_CHECK(in_.good(), "gguf '", path_, "': read error at offset ", pos_, " (", what, ")");
    pos_ += n;
  }
  template <typename T>
  T scalar(const std::string& what) {
    T v;
    bytes(&v, sizeof(T), what);
    return v;
  }
  std::string str(const std::string& what) {
    const auto n = scalar<uint64_t>(what + " length");
    MOE_CHECK(n <= left(), "gguf '", path_, "': ", what, " has length ", n, " but only ", left(),
              " bytes remain in the file");
    std::string s(static_cast<size_t>(n), '\0');
    if (n > 0) bytes(s.data(), n, what);
    return s;
  }

 private:
  std::ifstream& in_;
  uint64_t size_;
  uint64_t pos_ = 0;
  const std::string& path_;
};

// Smallest encoded size of one value of type t (strings: their u64 length; arrays: type + count).
uint64_t min_size(ValueType t) {
  switch (t) {
    case ValueType::U8:
    case ValueType::I8:
    case ValueType::BOOL:
      return 1;
    case ValueType::U16:
    case ValueType::I16:
      return 2;
    case ValueType::U32:
    case ValueType::I32:
    case ValueType::F32:
      return 4;
    case ValueType::U64:
    case ValueType::I64:
    case ValueType::F64:
    case ValueType::STRING:
      return 8;
    case ValueType::ARRAY:
      return 12;
  }
  return 1;
}

bool known_type(uint32_t t) { return t <= static_cast<uint32_t>(ValueType::F64); }
bool is_int_type(ValueType t) {
  return t != ValueType::F32 && t != ValueType::F64 && t != ValueType::STRING && t != ValueType::ARRAY;
}

// One scalar of an integer type (bool included) as int64; u64 above INT64_MAX is refused.
int64_t read_int(Cursor& c, ValueType t, const std::string& what, const std::string& path) {
  switch (t) {
    case ValueType::U8:
    case ValueType::BOOL:
      return c.scalar<uint8_t>(what);
    case ValueType::I8:
      return c.scalar<int8_t>(what);
    case ValueType::U16:
      return c.scalar<uint16_t>(what);
    case ValueType::I16:
      return c.scalar<int16_t>(what);
    case ValueType::U32:
      return c.scalar<uint32_t>(what);
    case ValueType::I32:
      return c.scalar<int32_t>(what);
    case ValueType::I64:
      return c.scalar<int64_t>(what);
    case ValueType::U64: {
      const auto v = c.scalar<uint64_t>(what);
      MOE_CHECK(v <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()), "gguf '", path, "': ", what,
                " = ", v, " is out of range");
      return static_cast<int64_t>(v);
    }
    default:
      throw Error(cat("gguf '", path, "': ", what, ": not an integer type"));
  }
}

// An f32 as the shortest decimal that reads back as the same f32 (1e-6, not 9.99999997e-07): the
// value the writer most likely meant, as a double.
double shortest_double(float f) {
  if (!std::isfinite(f)) return static_cast<double>(f);
  char buf[32];
  for (int prec = 1; prec <= 9; ++prec) {
    std::snprintf(buf, sizeof buf, "%.*g", prec, static_cast<double>(f));
    const double d = std::strtod(buf, nullptr);
    if (static_cast<float>(d) == f) return d;
  }
  return static_cast<double>(f);
}

double read_float(Cursor& c, ValueType t, const std::string& what) {
  return t == ValueType::F32 ? shortest_double(c.scalar<float>(what)) : c.scalar<double>(what);
}

ValueType read_type(Cursor& c, const std::string& what, const std::string& path) {
  const auto t = c.scalar<uint32_t>(what + " type");
  MOE_CHECK(known_type(t), "gguf '", path, "': ", what, " has unknown value type ", t);
  return static_cast<ValueType>(t);
}

// An array's elements (depth 0) or, for an array inside an array, only checked and skipped.
void read_array(Cursor& c, Value& v, const std::string& what, const std::string& path, int depth) {
  v.elem = read_type(c, what + " element", path);
  v.count = c.scalar<uint64_t>(what + " count");
  const uint64_t need = min_size(v.elem);
  MOE_CHECK(v.count <= c.left() / need, "gguf '", path, "': ", what, " claims ", v.count, " elements of ",
            value_type_name(v.elem), " but only ", c.left(), " bytes remain in the file");
  if (v.elem == ValueType::ARRAY) {
    MOE_CHECK(depth == 0, "gguf '", path, "': ", what,
              ": arrays nested more than two deep are not supported");
    for (uint64_t i = 0; i < v.count; ++i) {
      Value inner;
      read_array(c, inner, cat(what, "[", i, "]"), path, depth + 1);
    }
    return;
  }
  const bool keep = depth == 0;
  if (v.elem == ValueType::STRING) {
    if (keep) v.strings.reserve(static_cast<size_t>(v.count));
    for (uint64_t i = 0; i < v.count; ++i) {
      std::string s = c.str(what);
      if (keep) v.strings.push_back(std::move(s));
    }
  } else if (v.elem == ValueType::F32 || v.elem == ValueType::F64) {
    if (keep) v.floats.reserve(static_cast<size_t>(v.count));
    for (uint64_t i = 0; i < v.count; ++i) {
      const double f = read_float(c, v.elem, what);
      if (keep) v.floats.push_back(f);
    }
  } else {
    if (keep) v.ints.reserve(static_cast<size_t>(v.count));
    for (uint64_t i = 0; i < v.count; ++i) {
      const int64_t x = read_int(c, v.elem, what, path);
      if (keep) v.ints.push_back(x);
    }
  }
}

Value read_value(Cursor& c, const std::string& key, const std::string& path) {
  Value v;
  const std::string what = cat("metadata '", key, "'");
  v.type = read_type(c, what, path);
  if (v.type == ValueType::STRING)
    v.s = c.str(what);
  else if (v.type == ValueType::ARRAY)
    read_array(c, v, what, path, 0);
  else if (v.type == ValueType::F32 || v.type == ValueType::F64)
    v.f = read_float(c, v.type, what);
  else
    v.i = read_int(c, v.type, what, path);
  return v;
}

}  // namespace

bool ggml_type_supported(uint32_t t) {
  switch (static_cast<GgmlType>(t)) {
    case GgmlType::F32:
    case GgmlType::F16:
    case GgmlType::BF16:
    case GgmlType::Q4_0:
    case GgmlType::Q8_0:
    case GgmlType::Q4_K:
    case GgmlType::Q6_K:
      return true;
  }
  return false;
}

const char* ggml_type_name(uint32_t t) {
  // ggml's names (ggml.c type_traits), for the types a file may hold.
  static const char* const kNames[] = {
      "f32",   "f16",    "q4_0", "q4_1", "q4_2", "q4_3",    "q5_0",   "q5_1",    "q8_0",  "q8_1",   "q2_K",
      "q3_K",  "q4_K",   "q5_K", "q6_K", "q8_K", "iq2_xxs", "iq2_xs", "iq3_xxs", "iq1_s", "iq4_nl", "iq3_s",
      "iq2_s", "iq4_xs", "i8",   "i16",  "i32",  "i64",     "f64",    "iq1_m",   "bf16"};
  if (t < sizeof(kNames) / sizeof(kNames[0])) return kNames[t];
  return "unknown";
}

GgmlType ggml_type_from_name(const std::string& name) {
  std::string n = name;
  std::transform(n.begin(), n.end(), n.begin(), [](unsigned char ch) { return std::tolower(ch); });
  for (GgmlType t : {GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0, GgmlType::Q4_0,
                     GgmlType::Q4_K, GgmlType::Q6_K}) {
    std::string tn = ggml_type_name(static_cast<uint32_t>(t));
    std::transform(tn.begin(), tn.end(), tn.begin(), [](unsigned char ch) { return std::tolower(ch); });
    if (tn == n) return t;
  }
  throw Error(cat("unknown ggml type '", name, "' (expected f32, f16, bf16, q8_0, q4_0, q4_K or q6_K)"));
}

const char* value_type_name(ValueType t) {
  static const char* const kNames[] = {"u8",   "i8",     "u16",   "i16", "u32", "i32", "f32",
                                       "bool", "string", "array", "u64", "i64", "f64"};
  const auto i = static_cast<uint32_t>(t);
  return i < 13 ? kNames[i] : "unknown";
}

bool Value::is_int() const { return is_int_type(type); }

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : ne) n *= d;
  return n;
}

Shape TensorInfo::shape() const { return Shape(ne.rbegin(), ne.rend()); }

Reader::Reader(std::string path) : path_(std::move(path)) {
  namespace fs = std::filesystem;
  const std::string& p = path_;
  std::error_code ec;
  MOE_CHECK(fs::is_regular_file(p, ec), "gguf '", p, "': no such file");
  file_size_ = fs::file_size(p, ec);
  MOE_CHECK(!ec, "gguf '", p, "': cannot read its size: ", ec.message());
  std::ifstream in(p, std::ios::binary);
  MOE_CHECK(in.good(), "gguf '", p, "': cannot open");
  Cursor c(in, file_size_, p);

  const auto magic = c.scalar<uint32_t>("magic");
  MOE_CHECK(magic == kMagic, "gguf '", p, "': bad magic (not a GGUF file)");
  version_ = c.scalar<uint32_t>("version");
  MOE_CHECK(version_ == 2 || version_ == 3, "gguf '", p, "': unsupported GGUF version ", version_,
            " (2 and 3 are supported)");
  const auto n_tensors = c.scalar<uint64_t>("tensor count");
  const auto n_kv = c.scalar<uint64_t>("metadata count");
  // Each key/value pair takes at least 8 + 4 + 1 bytes, each tensor info 8 + 4 + 4 + 8.
  MOE_CHECK(n_kv <= c.left() / 13, "gguf '", p, "': header claims ", n_kv,
            " metadata pairs but the file has only ", c.left(), " bytes left");
  MOE_CHECK(n_tensors <= c.left() / 24, "gguf '", p, "': header claims ", n_tensors,
            " tensors but the file has only ", c.left(), " bytes left");

  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key = c.str(cat("metadata key #", i));
    MOE_CHECK(!kv_.count(key), "gguf '", p, "': metadata key '", key, "' appears twice");
    Value v = read_value(c, key, p);
    kv_.emplace(std::move(key), std::move(v));
  }
  if (const Value* a = find("general.alignment")) {
    MOE_CHECK(
        a->is_int() && a->i > 0 && (a->i & (a->i - 1)) == 0 && static_cast<uint64_t>(a->i) <= kMaxAlignment,
        "gguf '", p, "': general.alignment must be a power of two up to ", kMaxAlignment);
    alignment_ = static_cast<uint64_t>(a->i);
  }

  tensors_.reserve(static_cast<size_t>(n_tensors));
  for (uint64_t i = 0; i < n_tensors; ++i) {
    TensorInfo t;
    t.name = c.str(cat("tensor name #", i));
    const std::string what = cat("gguf '", p, "': tensor '", t.name, "'");
    MOE_CHECK(!by_name_.count(t.name), what, " appears twice");
    const auto n_dims = c.scalar<uint32_t>("tensor dims");
    MOE_CHECK(n_dims >= 1 && n_dims <= kMaxDims, what, " has ", n_dims, " dims (1 to ", kMaxDims,
              " supported)");
    int64_t numel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const auto v = c.scalar<uint64_t>("tensor dim");
      MOE_CHECK(v >= 1 && v <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()), what, ": dim ", d,
                " = ", v, " is out of range");
      const auto dv = static_cast<int64_t>(v);
      MOE_CHECK(numel <= std::numeric_limits<int64_t>::max() / dv, what,
                ": the product of its dims overflows");
      numel *= dv;
      t.ne.push_back(dv);
    }
    const auto type = c.scalar<uint32_t>("tensor type");
    MOE_CHECK(ggml_type_supported(type), what, " has ggml type ", type, " (", ggml_type_name(type),
              "), which this engine does not read (f32, f16, bf16, q8_0, q4_0, q4_K and q6_K are supported)");
    t.type = static_cast<GgmlType>(type);
    const int64_t bs = ggml_block_size(t.type);
    MOE_CHECK(t.ne[0] % bs == 0, what, ": row length ", t.ne[0], " is not a multiple of the ",
              ggml_type_name(type), " block size ", bs);
    const uint64_t blocks = static_cast<uint64_t>(numel / bs);
    const auto bb = static_cast<uint64_t>(ggml_block_bytes(t.type));
    MOE_CHECK(blocks <= std::numeric_limits<uint64_t>::max() / bb, what, ": its size overflows");
    t.bytes = blocks * bb;
    t.offset = c.scalar<uint64_t>("tensor offset");
    MOE_CHECK(t.offset % alignment_ == 0, what, ": data offset ", t.offset,
              " is not a multiple of the alignment ", alignment_);
    by_name_[t.name] = tensors_.size();
    tensors_.push_back(std::move(t));
  }
  data_start_ = (c.pos() + alignment_ - 1) / alignment_ * alignment_;
  MOE_CHECK(data_start_ <= file_size_ || tensors_.empty(), "gguf '", p,
            "': truncated file: the data section at ", data_start_, " starts past the end of the file (",
            file_size_, " bytes)");
  const uint64_t data_size = file_size_ >= data_start_ ? file_size_ - data_start_ : 0;
  for (TensorInfo& t : tensors_) {
    MOE_CHECK(t.offset <= data_size && t.bytes <= data_size - t.offset, "gguf '", p, "': tensor '", t.name,
              "' (", ggml_type_name(static_cast<uint32_t>(t.type)), ", ne ",
              shape_str(Shape(t.ne.begin(), t.ne.end())), ", ", t.bytes, " bytes at data offset ", t.offset,
              ") lies past the end of the file (data section of ", data_size, " bytes)");
    t.offset += data_start_;
  }
}

const Value* Reader::find(const std::string& key) const {
  auto it = kv_.find(key);
  return it == kv_.end() ? nullptr : &it->second;
}

std::string Reader::get_string(const std::string& key) const {
  const Value* v = find(key);
  MOE_CHECK(v, "gguf '", path_, "': missing metadata '", key, "'");
  MOE_CHECK(v->type == ValueType::STRING, "gguf '", path_, "': metadata '", key, "' is ",
            value_type_name(v->type), ", expected a string");
  return v->s;
}

int64_t Reader::get_int(const std::string& key) const {
  const Value* v = find(key);
  MOE_CHECK(v, "gguf '", path_, "': missing metadata '", key, "'");
  MOE_CHECK(v->is_int(), "gguf '", path_, "': metadata '", key, "' is ", value_type_name(v->type),
            ", expected an integer");
  return v->i;
}

double Reader::get_float(const std::string& key) const {
  const Value* v = find(key);
  MOE_CHECK(v, "gguf '", path_, "': missing metadata '", key, "'");
  MOE_CHECK(v->is_float() || v->is_int(), "gguf '", path_, "': metadata '", key, "' is ",
            value_type_name(v->type), ", expected a number");
  return v->is_float() ? v->f : static_cast<double>(v->i);
}

int64_t Reader::get_int(const std::string& key, int64_t fallback) const {
  return has(key) ? get_int(key) : fallback;
}
double Reader::get_float(const std::string& key, double fallback) const {
  return has(key) ? get_float(key) : fallback;
}
std::string Reader::get_string(const std::string& key, const std::string& fallback) const {
  return has(key) ? get_string(key) : fallback;
}

const TensorInfo* Reader::find_tensor(const std::string& name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

const TensorInfo& Reader::tensor(const std::string& name) const {
  const TensorInfo* t = find_tensor(name);
  MOE_CHECK(t, "gguf '", path_, "': no tensor '", name, "'");
  return *t;
}

std::vector<uint8_t> Reader::read_raw(const TensorInfo& t) const {
  std::ifstream in(path_, std::ios::binary);
  MOE_CHECK(in.good(), "gguf '", path_, "': cannot open");
  std::vector<uint8_t> buf(static_cast<size_t>(t.bytes));
  in.seekg(static_cast<std::streamoff>(t.offset));
  in.read(reinterpret_cast<char*>(buf.data()), static_cast<std::streamsize>(t.bytes));
  MOE_CHECK(in.good(), "gguf '", path_, "': tensor '", t.name, "': read error (", t.bytes,
            " bytes at offset ", t.offset, ")");
  return buf;
}

Tensor Reader::load_f32_slice(const std::string& name, int64_t i) const {
  const TensorInfo& t = tensor(name);
  const int64_t n = t.ne.back();
  MOE_CHECK(t.ne.size() >= 2 && i >= 0 && i < n, "gguf '", path_, "': tensor '", name, "': slice ", i,
            " of its outermost dim (", n, ")");
  TensorInfo part = t;
  part.ne.pop_back();
  part.bytes = t.bytes / static_cast<uint64_t>(n);
  part.offset = t.offset + static_cast<uint64_t>(i) * part.bytes;
  const std::vector<uint8_t> raw = read_raw(part);
  Tensor out = Tensor::empty(part.shape(), DType::F32, name);
  dequantize_row(t.type, raw.data(), part.numel(), out.data<float>());
  return out;
}

Tensor Reader::load_f32(const std::string& name) const {
  const TensorInfo& t = tensor(name);
  const std::vector<uint8_t> raw = read_raw(t);
  Tensor out = Tensor::empty(t.shape(), DType::F32, name);
  dequantize_row(t.type, raw.data(), t.numel(), out.data<float>());
  return out;
}

}  // namespace moe::gguf
