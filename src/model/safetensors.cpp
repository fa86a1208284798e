#include "moe/model/safetensors.h"

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <system_error>
#include <utility>

#include <nlohmann/json.hpp>

#include "moe/core/mapped_file.h"

namespace moe {

// Tensor bytes are copied to and from memory as they are: the format is little-endian.
static_assert(std::endian::native == std::endian::little, "safetensors I/O assumes a little-endian host");

namespace {

using json = nlohmann::json;

// Header lengths above this are rejected before allocating (the Hugging Face reader uses 100 MB).
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

std::string where(const std::string& path) { return cat("safetensors file '", path, "'"); }

DType dtype_from_safetensors(const std::string& s, const std::string& path, const std::string& name) {
  if (s == "F64") return DType::F64;
  if (s == "F32") return DType::F32;
  if (s == "BF16") return DType::BF16;
  if (s == "F16") return DType::F16;
  if (s == "I64") return DType::I64;
  if (s == "I32") return DType::I32;
  if (s == "I8") return DType::I8;
  if (s == "U8" || s == "BOOL") return DType::U8;
  throw Error(cat(where(path), ": tensor '", name, "': unsupported dtype '", s,
                  "' (supported: F64, F32, BF16, F16, I64, I32, I8, U8, BOOL)"));
}

uint64_t element_bytes(DType t) { return static_cast<uint64_t>(dtype_bits(t) / 8); }

// Parses one tensor entry of the header, checking types, sizes and the buffer bounds.
SafetensorsEntry parse_entry(const std::string& path, const std::string& name, const json& v,
                             uint64_t data_size) {
  const std::string what = cat(where(path), ": tensor '", name, "'");
  MOE_CHECK(v.is_object(), what, ": header entry is not a JSON object");
  for (const char* key : {"dtype", "shape", "data_offsets"})
    MOE_CHECK(v.contains(key), what, ": header entry has no '", key, "'");
  MOE_CHECK(v["dtype"].is_string(), what, ": 'dtype' is not a string");
  MOE_CHECK(v["shape"].is_array(), what, ": 'shape' is not an array");
  const json& offs = v["data_offsets"];
  MOE_CHECK(
      offs.is_array() && offs.size() == 2 && offs[0].is_number_unsigned() && offs[1].is_number_unsigned(),
      what, ": 'data_offsets' is not a pair of non-negative integers: ", offs.dump());

  SafetensorsEntry e;
  e.dtype = dtype_from_safetensors(v["dtype"].get<std::string>(), path, name);
  // numel with an overflow guard: no valid tensor has more bytes than the buffer.
  uint64_t numel = 1;
  bool too_big = false;
  // The product of the non-zero sizes must fit int64 even for an empty tensor ([2^40, 2^40, 0]):
  // the tensor's shape arithmetic (element count, strides) multiplies them.
  uint64_t nonzero_numel = 1;
  for (const json& d : v["shape"]) {
    MOE_CHECK(d.is_number_unsigned(), what, ": shape ", v["shape"].dump(),
              " has an entry that is not a non-negative integer");
    const uint64_t n = d.get<uint64_t>();
    MOE_CHECK(n == 0 || nonzero_numel <= static_cast<uint64_t>(INT64_MAX) / n, what, ": shape ",
              v["shape"].dump(), " is too large");
    if (n != 0) nonzero_numel *= n;
    e.shape.push_back(static_cast<int64_t>(n));
    if (n != 0 && numel > data_size / n) too_big = true;
    numel *= n;
  }
  const bool empty_tensor = std::find(e.shape.begin(), e.shape.end(), 0) != e.shape.end();
  if (empty_tensor) numel = 0, too_big = false;
  e.begin = offs[0].get<uint64_t>();
  e.end = offs[1].get<uint64_t>();
  MOE_CHECK(e.begin <= e.end && e.end <= data_size, what, ": data_offsets [", e.begin, ", ", e.end,
            ") out of range for a data buffer of ", data_size, " bytes");
  MOE_CHECK(!too_big && numel * element_bytes(e.dtype) == e.end - e.begin, what, ": data_offsets [", e.begin,
            ", ", e.end, ") hold ", e.end - e.begin, " bytes but shape ", shape_str(e.shape), " of ",
            v["dtype"].get<std::string>(), " needs ",
            too_big ? std::string("more than the buffer") : std::to_string(numel * element_bytes(e.dtype)));
  return e;
}

void read_exact(std::ifstream& in, uint64_t offset, char* dst, uint64_t n, const std::string& what) {
  in.clear();
  in.seekg(static_cast<std::streamoff>(offset));
  in.read(dst, static_cast<std::streamsize>(n));
  MOE_CHECK(in.good() || (n == 0 && !in.bad()), what, ": read of ", n, " bytes at offset ", offset,
            " failed (truncated file?)");
}

std::ifstream open_in(const std::string& path) {
  std::error_code ec;
  MOE_CHECK(std::filesystem::is_regular_file(path, ec), where(path),
            ": cannot open: ", std::filesystem::exists(path, ec) ? "not a regular file" : "no such file");
  std::ifstream in(path, std::ios::binary);
  MOE_CHECK(in.is_open(), where(path), ": cannot open: ", std::strerror(errno));
  return in;
}

}  // namespace

const char* safetensors_dtype_name(DType t) {
  switch (t) {
    case DType::F64:
      return "F64";
    case DType::F32:
      return "F32";
    case DType::BF16:
      return "BF16";
    case DType::F16:
      return "F16";
    case DType::I64:
      return "I64";
    case DType::I32:
      return "I32";
    case DType::I8:
      return "I8";
    case DType::U8:
      return "U8";
    case DType::I4:
      break;
  }
  throw Error(cat("safetensors has no dtype for ", dtype_name(t)));
}

SafetensorsReader::SafetensorsReader(std::string path) : path_(std::move(path)) {
  std::ifstream in = open_in(path_);
  in.seekg(0, std::ios::end);
  const auto end_pos = in.tellg();
  MOE_CHECK(end_pos >= 0, where(path_), ": cannot determine the file size");
  const auto file_size = static_cast<uint64_t>(end_pos);
  MOE_CHECK(file_size >= 8, where(path_), ": truncated: ", file_size,
            " bytes, less than the 8-byte header length");

  unsigned char len_bytes[8];
  read_exact(in, 0, reinterpret_cast<char*>(len_bytes), 8, where(path_));
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | len_bytes[i];
  MOE_CHECK(header_len <= file_size - 8, where(path_), ": header length ", header_len,
            " is larger than the rest of the file (", file_size - 8, " bytes): truncated or not safetensors");
  MOE_CHECK(header_len <= kMaxHeaderBytes, where(path_), ": header length ", header_len,
            " exceeds the limit of ", kMaxHeaderBytes, " bytes");
  MOE_CHECK(header_len >= 2, where(path_), ": header length ", header_len, " is too small for a JSON object");
  data_start_ = 8 + header_len;
  data_size_ = file_size - data_start_;

  std::string text(header_len, '\0');
  read_exact(in, 8, text.data(), header_len, where(path_));
  json header;
  try {
    header = json::parse(text);
  } catch (const json::exception& ex) {
    throw Error(cat(where(path_), ": header is not valid JSON: ", ex.what()));
  }
  MOE_CHECK(header.is_object(), where(path_), ": header is not a JSON object");

  for (const auto& [name, v] : header.items()) {
    if (name == "__metadata__") {
      MOE_CHECK(v.is_object(), where(path_), ": __metadata__ is not a JSON object");
      for (const auto& [mk, mv] : v.items()) {
        MOE_CHECK(mv.is_string(), where(path_), ": __metadata__ value of '", mk, "' is not a string");
        metadata_[mk] = mv.get<std::string>();
      }
      continue;
    }
    entries_[name] = parse_entry(path_, name, v, data_size_);
  }

  // Overlapping byte ranges are rejected (gaps are accepted): sort by begin and compare neighbours.
  std::vector<std::pair<const std::string*, const SafetensorsEntry*>> order;
  for (const auto& [name, e] : entries_)
    if (e.end > e.begin) order.emplace_back(&name, &e);
  std::sort(order.begin(), order.end(),
            [](const auto& a, const auto& b) { return a.second->begin < b.second->begin; });
  for (size_t i = 1; i < order.size(); ++i)
    MOE_CHECK(order[i].second->begin >= order[i - 1].second->end, where(path_), ": tensor '", *order[i].first,
              "' data_offsets [", order[i].second->begin, ", ", order[i].second->end, ") overlap tensor '",
              *order[i - 1].first, "' [", order[i - 1].second->begin, ", ", order[i - 1].second->end, ")");
}

std::vector<std::string> SafetensorsReader::names() const {
  std::vector<std::string> out;
  for (const auto& kv : entries_) out.push_back(kv.first);
  return out;
}

const SafetensorsEntry& SafetensorsReader::entry(const std::string& name) const {
  auto it = entries_.find(name);
  MOE_CHECK(it != entries_.end(), where(path_), ": no tensor named '", name, "'");
  return it->second;
}

Tensor SafetensorsReader::load(const std::string& name) const {
  const SafetensorsEntry& e = entry(name);
  std::ifstream in = open_in(path_);
  Tensor t = Tensor::empty(e.shape, e.dtype, name);
  read_exact(in, data_start_ + e.begin, static_cast<char*>(t.raw()), e.end - e.begin,
             cat(where(path_), ": tensor '", name, "'"));
  return t;
}

Tensor SafetensorsReader::map(const std::string& name) const {
  const SafetensorsEntry& e = entry(name);
  const uint64_t offset = data_start_ + e.begin;
  const int bits = dtype_bits(e.dtype);
  if (bits < 8 || offset % static_cast<uint64_t>(bits / 8) != 0)
    return Tensor();  // not aligned to its elements
  return map_file_tensor(path_, offset, e.shape, e.dtype, name);
}

std::map<std::string, Tensor> SafetensorsReader::load_all() const {
  std::map<std::string, Tensor> out;
  std::ifstream in = open_in(path_);
  for (const auto& [name, e] : entries_) {
    Tensor t = Tensor::empty(e.shape, e.dtype, name);
    read_exact(in, data_start_ + e.begin, static_cast<char*>(t.raw()), e.end - e.begin,
               cat(where(path_), ": tensor '", name, "'"));
    out.emplace(name, std::move(t));
  }
  return out;
}

std::map<std::string, Tensor> load_safetensors(const std::string& path) {
  return SafetensorsReader(path).load_all();
}

void save_safetensors(const std::string& path, const std::map<std::string, Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  // Layout: largest element size first, then name (map order), back to back.
  std::vector<std::pair<const std::string*, Tensor>> order;
  for (const auto& [name, t] : tensors) {
    MOE_CHECK(name != "__metadata__", where(path), ": '__metadata__' cannot be a tensor name");
    MOE_CHECK(t.defined(), where(path), ": tensor '", name, "' is undefined");
    MOE_CHECK(t.dtype() != DType::I4, where(path), ": tensor '", name,
              "': int4 has no safetensors dtype (unpack it to i8 first)");
    order.emplace_back(&name, t.contiguous());
  }
  std::stable_sort(order.begin(), order.end(), [](const auto& a, const auto& b) {
    return element_bytes(a.second.dtype()) > element_bytes(b.second.dtype());
  });

  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& [name, t] : order) {
    const uint64_t n = t.nbytes();
    header[*name] = {{"dtype", safetensors_dtype_name(t.dtype())},
                     {"shape", t.shape()},
                     {"data_offsets", {offset, offset + n}}};
    offset += n;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');

  const std::string tmp = path + ".tmp";
  try {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    MOE_CHECK(out.is_open(), where(path), ": cannot create '", tmp, "': ", std::strerror(errno));
    char len_bytes[8];
    uint64_t len = text.size();
    for (int i = 0; i < 8; ++i, len >>= 8) len_bytes[i] = static_cast<char>(len & 0xff);
    out.write(len_bytes, 8);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    for (const auto& [name, t] : order)
      out.write(static_cast<const char*>(t.raw()), static_cast<std::streamsize>(t.nbytes()));
    out.close();
    MOE_CHECK(!out.fail(), where(path), ": writing '", tmp, "' failed: ", std::strerror(errno));
    std::error_code ec;
    std::filesystem::rename(tmp, path, ec);
    MOE_CHECK(!ec, where(path), ": cannot rename '", tmp, "' to it: ", ec.message());
  } catch (...) {
    std::error_code ignored;
    std::filesystem::remove(tmp, ignored);
    throw;
  }
}

}  // namespace moe
