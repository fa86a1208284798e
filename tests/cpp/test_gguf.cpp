// GGUF reader: dequantization bit-identical to the gguf package's (tests/fixtures/gguf/dequant.gguf),
// metadata of every type, write -> read round trips, and malformed files refused with a clear error.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "moe/core/error.h"
#include "moe/model/gguf.h"
#include "temp_path.h"

using namespace moe;

namespace {

const std::string kFixtures = std::string(MOE_TEST_FIXTURES) + "/gguf";

std::string temp_path(const std::string& name) { return moe::testutil::unique_temp_path(name); }

// Little-endian byte builder for hand-made files.
struct Bytes {
  std::string b;
  template <typename T>
  Bytes& put(T v) {
    char c[sizeof(T)];
    std::memcpy(c, &v, sizeof(T));
    b.append(c, sizeof(T));
    return *this;
  }
  Bytes& str(const std::string& s) {
    put<uint64_t>(s.size());
    b += s;
    return *this;
  }
  Bytes& pad(size_t align) {
    while (b.size() % align) b += '\0';
    return *this;
  }
};

void write(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// A valid file: one u32 key, one f32 tensor "w" with ne {4, 2} (a (2, 4) matrix of 0..7).
struct Spec {
  uint32_t magic = 0x46554747, version = 3;
  uint64_t n_tensors = 1, n_kv = 1;
  uint32_t n_dims = 2;
  uint64_t ne0 = 4, ne1 = 2;
  uint32_t type = 0;
  uint64_t offset = 0;
  size_t data_floats = 8;
};
std::string make(const Spec& s) {
  Bytes x;
  x.put(s.magic).put(s.version).put(s.n_tensors).put(s.n_kv);
  x.str("general.alignment").put<uint32_t>(4).put<uint32_t>(32);
  x.str("w").put(s.n_dims).put(s.ne0);
  if (s.n_dims > 1) x.put(s.ne1);
  for (uint32_t d = 2; d < s.n_dims; ++d) x.put<uint64_t>(1);
  x.put(s.type).put(s.offset);
  x.pad(32);
  for (size_t i = 0; i < s.data_floats; ++i) x.put(static_cast<float>(i));
  return x.b;
}

// The moe::Error message of reading `bytes` as a GGUF file ("" if it was accepted).
std::string error_of(const std::string& bytes, const std::string& name = "bad.gguf") {
  const std::string p = temp_path(name);
  write(p, bytes);
  try {
    gguf::Reader r(p);
    for (const gguf::TensorInfo& t : r.tensors()) r.load_f32(t.name);
  } catch (const Error& e) {
    std::filesystem::remove(p);
    return e.what();
  }
  std::filesystem::remove(p);
  return "";
}

}  // namespace

TEST(Gguf, DequantizationMatchesTheGgufPackageBitForBit) {
  const gguf::Reader r(kFixtures + "/dequant.gguf");
  for (const char* type : {"f16", "bf16", "q8_0", "q4_0", "q4_K", "q6_K"}) {
    SCOPED_TRACE(type);
    const gguf::TensorInfo& t = r.tensor(std::string(type) + ".data");
    EXPECT_EQ(t.type, gguf::ggml_type_from_name(type));
    const Tensor got = r.load_f32(t.name), want = r.load_f32(std::string(type) + ".expected");
    ASSERT_EQ(got.shape(), want.shape());
    ASSERT_EQ(got.shape(), (Shape{4, 512}));
    const float* g = got.data<float>();
    const float* w = want.data<float>();
    int64_t diff = 0;
    for (int64_t i = 0; i < got.numel(); ++i) diff += std::memcmp(&g[i], &w[i], 4) != 0;
    EXPECT_EQ(diff, 0) << "values differing from gguf.quants.dequantize";
  }
}

TEST(Gguf, QuantizeThenDequantizeStaysWithinTheFormatsStep) {
  std::vector<float> x(64);
  for (size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.37f * static_cast<float>(i)) * 3.0f;
  for (gguf::GgmlType t :
       {gguf::GgmlType::F16, gguf::GgmlType::BF16, gguf::GgmlType::Q8_0, gguf::GgmlType::Q4_0}) {
    std::vector<uint8_t> q(gguf::ggml_row_bytes(t, 64));
    std::vector<float> y(64);
    gguf::quantize_row(t, x.data(), 64, q.data());
    gguf::dequantize_row(t, q.data(), 64, y.data());
    // Floats: half an ulp at 3. q8_0: half a step d = amax/127, plus 127 times the f16 rounding of d
    // (2^-12 relative). q4_0: d = amax/8 covers [-8d, 7d], so a value of the opposite sign to the
    // largest one may be clipped by up to a whole step, plus 8 times the f16 rounding of d.
    const double d8 = 3.0 / 127, d4 = 3.0 / 8;
    const double step = t == gguf::GgmlType::F16    ? 3 * 0x1p-11
                        : t == gguf::GgmlType::BF16 ? 3 * 0x1p-8
                        : t == gguf::GgmlType::Q8_0 ? d8 * (0.5 + 127 * 0x1p-12)
                                                    : d4 * (1 + 8 * 0x1p-12);
    for (size_t i = 0; i < x.size(); ++i)
      EXPECT_LE(std::abs(x[i] - y[i]), step) << gguf::ggml_type_name(static_cast<uint32_t>(t)) << " " << i;
  }
}

TEST(Gguf, WriteThenReadKeepsMetadataAndTensors) {
  gguf::WriteFile f;
  f.metadata = {{"general.architecture", gguf::str_value("llama")},
                {"a.u32", gguf::u32_value(7)},
                {"a.i32", gguf::i32_value(-3)},
                {"a.f32", gguf::f32_value(0.5f)},
                {"a.bool", gguf::bool_value(true)},
                {"a.strs", gguf::str_array({"x", "", "y z"})},
                {"a.floats", gguf::f32_array({1.5, -2})},
                {"a.ints", gguf::i32_array({1, -2, 3})}};
  Tensor w = Tensor::from({0, 1, 2, 3, 4, 5}, {2, 3});
  f.tensors.push_back({"w", w, gguf::GgmlType::F32});
  f.tensors.push_back({"v", Tensor::from({1, 2}, {2}), gguf::GgmlType::F16});
  const std::string p = temp_path("roundtrip.gguf");
  gguf::write_file(p, f);
  const gguf::Reader r(p);
  EXPECT_EQ(r.version(), 3u);
  EXPECT_EQ(r.get_string("general.architecture"), "llama");
  EXPECT_EQ(r.get_int("a.u32"), 7);
  EXPECT_EQ(r.get_int("a.i32"), -3);
  EXPECT_EQ(r.get_float("a.f32"), 0.5);
  EXPECT_EQ(r.get_int("a.bool"), 1);
  EXPECT_EQ(r.find("a.strs")->strings, (std::vector<std::string>{"x", "", "y z"}));
  EXPECT_EQ(r.find("a.floats")->floats, (std::vector<double>{1.5, -2}));
  EXPECT_EQ(r.find("a.ints")->ints, (std::vector<int64_t>{1, -2, 3}));
  EXPECT_EQ(r.tensor("w").ne, (std::vector<int64_t>{3, 2}));  // innermost first
  EXPECT_EQ(r.load_f32("w").to_vector(), w.to_vector());
  EXPECT_EQ(r.load_f32("v").to_vector(), (std::vector<double>{1, 2}));
  EXPECT_EQ(r.tensor("v").offset % 32, 0u);
  std::filesystem::remove(p);
}

TEST(Gguf, AValidHandMadeFileLoads) {
  EXPECT_EQ(error_of(make({})), "");
  Spec v2;
  v2.version = 2;
  EXPECT_EQ(error_of(make(v2)), "");
}

TEST(Gguf, MalformedFilesAreRefusedWithAClearError) {
  auto expect = [](const Spec& s, const std::string& part) {
    const std::string e = error_of(make(s));
    EXPECT_NE(e.find(part), std::string::npos) << "got: " << e;
    EXPECT_NE(e.find("bad.gguf"), std::string::npos) << "the message names the file: " << e;
  };
  Spec s;
  s.magic = 0x12345678;
  expect(s, "bad magic");
  s = {};
  s.version = 1;
  expect(s, "unsupported GGUF version 1");
  s = {};
  s.type = 7;  // q5_1
  expect(s, "ggml type 7 (q5_1)");
  s = {};
  s.type = 1000;
  expect(s, "ggml type 1000");
  s = {};
  s.data_floats = 7;  // one float short
  expect(s, "tensor 'w'");
  s = {};
  s.ne1 = 3;  // dims claim more data than there is
  expect(s, "past the end of the file");
  s = {};
  s.offset = 4;  // not aligned
  expect(s, "not a multiple of the alignment");
  s = {};
  s.n_dims = 5;
  expect(s, "5 dims");
  s = {};
  s.ne0 = uint64_t{1} << 40, s.ne1 = uint64_t{1} << 40;  // product overflows int64
  expect(s, "overflows");
  s = {};
  s.ne0 = 0;
  expect(s, "out of range");
  s = {};
  s.type = 8, s.ne0 = 4;  // q8_0 rows must be whole blocks of 32
  expect(s, "not a multiple of the q8_0 block size 32");
  s = {};
  s.n_kv = uint64_t{1} << 60;  // huge counts: refused before allocating
  expect(s, "metadata pairs");
  s = {};
  s.n_tensors = uint64_t{1} << 60;
  expect(s, "tensors but the file has only");
}

TEST(Gguf, HugeStringAndArrayLengthsAreRefusedBeforeAllocating) {
  Bytes x;
  x.put<uint32_t>(0x46554747).put<uint32_t>(3).put<uint64_t>(0).put<uint64_t>(1);
  x.put<uint64_t>(uint64_t{1} << 62);  // key length
  x.b += std::string(64, 'k');
  EXPECT_NE(error_of(x.b).find("has length"), std::string::npos) << error_of(x.b);
  Bytes y;
  y.put<uint32_t>(0x46554747).put<uint32_t>(3).put<uint64_t>(0).put<uint64_t>(1);
  y.str("tokens").put<uint32_t>(9).put<uint32_t>(8).put<uint64_t>(uint64_t{1}
                                                                  << 61);  // array of 2^61 strings
  EXPECT_NE(error_of(y.b).find("claims"), std::string::npos) << error_of(y.b);
  Bytes z;
  z.put<uint32_t>(0x46554747).put<uint32_t>(3).put<uint64_t>(0).put<uint64_t>(1);
  z.str("k").put<uint32_t>(42);  // unknown value type
  EXPECT_NE(error_of(z.b).find("unknown value type 42"), std::string::npos) << error_of(z.b);
}

TEST(Gguf, EveryTruncationOfAValidFileIsAnError) {
  const std::string full = make({});
  for (size_t n = 0; n < full.size(); ++n) {
    const std::string e = error_of(full.substr(0, n));
    EXPECT_FALSE(e.empty()) << "prefix of " << n << " bytes was accepted";
  }
}

TEST(Gguf, DuplicateTensorNamesAreRefused) {
  Bytes x;
  x.put<uint32_t>(0x46554747).put<uint32_t>(3).put<uint64_t>(2).put<uint64_t>(0);
  for (int i = 0; i < 2; ++i)
    x.str("w").put<uint32_t>(1).put<uint64_t>(1).put<uint32_t>(0).put<uint64_t>(i * 32);
  x.pad(32);
  x.b += std::string(64, '\0');
  EXPECT_NE(error_of(x.b).find("appears twice"), std::string::npos) << error_of(x.b);
}

TEST(Gguf, ASliceOfTheOutermostDimReadsAloneTheSameValues) {
  const gguf::Reader r(kFixtures + "/mixtral.q8_0.gguf");
  const Tensor all = r.load_f32("blk.1.ffn_gate_exps.weight");  // (E, F, d), q8_0
  ASSERT_EQ(all.dim(), 3);
  for (int64_t e = 0; e < all.size(0); ++e)
    EXPECT_EQ(r.load_f32_slice("blk.1.ffn_gate_exps.weight", e).to_vector(),
              all.slice(0, e, e + 1).contiguous().to_vector())
        << e;
  EXPECT_THROW(r.load_f32_slice("blk.1.ffn_gate_exps.weight", all.size(0)), Error);
}
