// GGUF writer (version 3, little-endian, alignment 32).
#include <cstring>

#include "moe/core/error.h"
#include "moe/core/file_io.h"
#include "moe/model/gguf.h"

namespace moe::gguf {

namespace {

constexpr uint64_t kAlign = 32;

template <typename T>
void put(std::string& out, T v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  out.append(b, sizeof(T));
}

void put_str(std::string& out, const std::string& s) {
  put<uint64_t>(out, s.size());
  out += s;
}

void put_scalar(std::string& out, ValueType t, int64_t i, double f) {
  switch (t) {
    case ValueType::U8:
    case ValueType::BOOL:
      return put<uint8_t>(out, static_cast<uint8_t>(i));
    case ValueType::I8:
      return put<int8_t>(out, static_cast<int8_t>(i));
    case ValueType::U16:
      return put<uint16_t>(out, static_cast<uint16_t>(i));
    case ValueType::I16:
      return put<int16_t>(out, static_cast<int16_t>(i));
    case ValueType::U32:
      return put<uint32_t>(out, static_cast<uint32_t>(i));
    case ValueType::I32:
      return put<int32_t>(out, static_cast<int32_t>(i));
    case ValueType::U64:
      return put<uint64_t>(out, static_cast<uint64_t>(i));
    case ValueType::I64:
      return put<int64_t>(out, i);
    case ValueType::F32:
      return put<float>(out, static_cast<float>(f));
    case ValueType::F64:
      return put<double>(out, f);
    default:
      throw Error("gguf writer: not a scalar type");
  }
}

void put_value(std::string& out, const std::string& key, const Value& v) {
  put<uint32_t>(out, static_cast<uint32_t>(v.type));
  if (v.type == ValueType::STRING) return put_str(out, v.s);
  if (v.type != ValueType::ARRAY) return put_scalar(out, v.type, v.i, v.f);
  MOE_CHECK(v.elem != ValueType::ARRAY, "gguf writer: metadata '", key, "': nested arrays are not written");
  put<uint32_t>(out, static_cast<uint32_t>(v.elem));
  if (v.elem == ValueType::STRING) {
    put<uint64_t>(out, v.strings.size());
    for (const std::string& s : v.strings) put_str(out, s);
  } else if (v.elem == ValueType::F32 || v.elem == ValueType::F64) {
    put<uint64_t>(out, v.floats.size());
    for (double f : v.floats) put_scalar(out, v.elem, 0, f);
  } else {
    put<uint64_t>(out, v.ints.size());
    for (int64_t i : v.ints) put_scalar(out, v.elem, i, 0);
  }
}

uint64_t padded(uint64_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

}  // namespace

Value str_value(std::string s) {
  Value v;
  v.type = ValueType::STRING;
  v.s = std::move(s);
  return v;
}
Value u32_value(uint32_t x) {
  Value v;
  v.type = ValueType::U32;
  v.i = x;
  return v;
}
Value i32_value(int32_t x) {
  Value v;
  v.type = ValueType::I32;
  v.i = x;
  return v;
}
Value f32_value(float x) {
  Value v;
  v.type = ValueType::F32;
  v.f = x;
  return v;
}
Value bool_value(bool x) {
  Value v;
  v.type = ValueType::BOOL;
  v.i = x ? 1 : 0;
  return v;
}
Value str_array(std::vector<std::string> x) {
  Value v;
  v.type = ValueType::ARRAY;
  v.elem = ValueType::STRING;
  v.count = x.size();
  v.strings = std::move(x);
  return v;
}
Value f32_array(std::vector<double> x) {
  Value v;
  v.type = ValueType::ARRAY;
  v.elem = ValueType::F32;
  v.count = x.size();
  v.floats = std::move(x);
  return v;
}
Value i32_array(std::vector<int64_t> x) {
  Value v;
  v.type = ValueType::ARRAY;
  v.elem = ValueType::I32;
  v.count = x.size();
  v.ints = std::move(x);
  return v;
}

void write_file(const std::string& path, const WriteFile& f) {
  std::string head;
  put<uint32_t>(head, 0x46554747);  // "GGUF"
  put<uint32_t>(head, 3);
  put<uint64_t>(head, f.tensors.size());
  put<uint64_t>(head, f.metadata.size());
  for (const auto& [key, v] : f.metadata) {
    put_str(head, key);
    put_value(head, key, v);
  }
  uint64_t offset = 0;
  std::vector<uint64_t> bytes;
  for (const WriteTensor& t : f.tensors) {
    MOE_CHECK(t.value.defined() && t.value.dim() >= 1 && t.value.dim() <= 4, "gguf writer '", path,
              "': tensor '", t.name, "' must have 1 to 4 dims");
    const Shape& s = t.value.shape();
    const int64_t row = s.back();
    MOE_CHECK(row % ggml_block_size(t.type) == 0, "gguf writer '", path, "': tensor '", t.name, "' ",
              shape_str(s), ": its last dim is not a multiple of the ",
              ggml_type_name(static_cast<uint32_t>(t.type)), " block size ", ggml_block_size(t.type));
    put_str(head, t.name);
    put<uint32_t>(head, static_cast<uint32_t>(s.size()));
    for (auto it = s.rbegin(); it != s.rend(); ++it) put<uint64_t>(head, static_cast<uint64_t>(*it));
    put<uint32_t>(head, static_cast<uint32_t>(t.type));
    put<uint64_t>(head, offset);
    bytes.push_back(ggml_row_bytes(t.type, row) * static_cast<uint64_t>(t.value.numel() / row));
    offset = padded(offset + bytes.back());
  }
  io::write_file_atomic(path, cat("gguf '", path, "'"), [&](std::ostream& out) {
    out.write(head.data(), static_cast<std::streamsize>(head.size()));
    const std::string zeros(kAlign, '\0');
    out.write(zeros.data(), static_cast<std::streamsize>(padded(head.size()) - head.size()));
    for (size_t i = 0; i < f.tensors.size(); ++i) {
      const Tensor v = f.tensors[i].value.to(DType::F32).contiguous();
      std::string data(static_cast<size_t>(bytes[i]), '\0');
      quantize_row(f.tensors[i].type, v.data<float>(), v.numel(), reinterpret_cast<uint8_t*>(data.data()));
      out.write(data.data(), static_cast<std::streamsize>(data.size()));
      out.write(zeros.data(), static_cast<std::streamsize>(padded(bytes[i]) - bytes[i]));
    }
  });
}

}  // namespace moe::gguf
