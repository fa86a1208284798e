// safetensors read/write: round trips of every dtype, scalars and metadata, and one test per kind of
// malformed file, each asserting a moe::Error whose message names the file (and the tensor).
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <unistd.h>

#include "moe/model/safetensors.h"

namespace fs = std::filesystem;

namespace {

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() / ("moe_st_" + std::to_string(::getpid()) + "_" + info->name());
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string file(const std::string& name) const { return (dir_ / name).string(); }

  // A file made of an 8-byte length (or `len_override`), the header text and `data` bytes.
  std::string write_raw(const std::string& name, const std::string& header, const std::string& data,
                        int64_t len_override = -1) const {
    const std::string p = file(name);
    std::ofstream out(p, std::ios::binary);
    uint64_t len = len_override >= 0 ? static_cast<uint64_t>(len_override) : header.size();
    for (int i = 0; i < 8; ++i, len >>= 8) out.put(static_cast<char>(len & 0xff));
    out << header << data;
    return p;
  }

  fs::path dir_;
};

// Expects moe::Error mentioning the file path and every string in `parts`.
template <typename F>
void expect_error(F&& fn, const std::string& path, const std::vector<std::string>& parts = {}) {
  try {
    fn();
    ADD_FAILURE() << "expected moe::Error for " << path;
  } catch (const moe::Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(path), std::string::npos) << "message does not name the file: " << msg;
    for (const auto& p : parts)
      EXPECT_NE(msg.find(p), std::string::npos) << "message lacks '" << p << "': " << msg;
  }
}

void expect_same(const moe::Tensor& a, const moe::Tensor& b) {
  ASSERT_EQ(a.dtype(), b.dtype());
  ASSERT_EQ(a.shape(), b.shape());
  ASSERT_EQ(a.nbytes(), b.nbytes());
  const moe::Tensor ac = a.contiguous(), bc = b.contiguous();
  EXPECT_EQ(std::memcmp(ac.raw(), bc.raw(), ac.nbytes()), 0);
}

}  // namespace

TEST_F(SafetensorsTest, RoundTripEveryDtype) {
  using moe::DType;
  std::map<std::string, moe::Tensor> in;
  const std::vector<double> vals = {1.5, -2.25, 0.0, 3.0, -7.0, 100.0};
  for (DType dt : {DType::F64, DType::F32, DType::BF16, DType::F16}) {
    in[std::string("t_") + moe::dtype_name(dt)] = moe::Tensor::from(vals, {2, 3}, dt);
  }
  in["t_i64"] = moe::Tensor::from({-1, 2, 1e15, 4}, {4}, DType::I64);
  in["t_i32"] = moe::Tensor::from({-1, 2, 2147483647, -2147483648.0}, {2, 2}, DType::I32);
  in["t_i8"] = moe::Tensor::from({-128, 0, 127}, {3}, DType::I8);
  in["t_u8"] = moe::Tensor::from({0, 1, 255}, {1, 3}, DType::U8);
  in["t_f64_3d"] = moe::Tensor::from({1, 2, 3, 4, 5, 6, 7, 8}, {2, 2, 2}, DType::F64);
  in["t_empty"] = moe::Tensor::zeros({0, 4}, DType::F32);
  const std::string p = file("all.safetensors");
  moe::save_safetensors(p, in);
  EXPECT_FALSE(fs::exists(p + ".tmp"));
  auto out = moe::load_safetensors(p);
  ASSERT_EQ(out.size(), in.size());
  for (const auto& [name, t] : in) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(out.count(name));
    expect_same(out.at(name), t);
    EXPECT_EQ(out.at(name).name(), name);
  }
  // The header is padded to 8 bytes and every tensor offset is aligned to its element size.
  moe::SafetensorsReader r(p);
  for (const auto& name : r.names()) {
    const auto& e = r.entry(name);
    EXPECT_EQ(e.begin % static_cast<uint64_t>(moe::dtype_bits(e.dtype) / 8), 0u) << name;
  }
  std::ifstream f(p, std::ios::binary);
  unsigned char len[8];
  f.read(reinterpret_cast<char*>(len), 8);
  EXPECT_EQ(len[0] % 8, 0) << "header length not a multiple of 8";
}

TEST_F(SafetensorsTest, ScalarsAndMetadata) {
  std::map<std::string, moe::Tensor> in;
  in["loss"] = moe::Tensor::from({0.125}, {}, moe::DType::F64);
  in["step"] = moe::Tensor::from({42}, {}, moe::DType::I64);
  const std::map<std::string, std::string> meta = {{"format", "pt"}, {"note", "a \"quoted\" value"}};
  const std::string p = file("scalars.safetensors");
  moe::save_safetensors(p, in, meta);
  moe::SafetensorsReader r(p);
  EXPECT_EQ(r.metadata(), meta);
  EXPECT_EQ(r.names(), (std::vector<std::string>{"loss", "step"}));
  const moe::Tensor loss = r.load("loss");
  EXPECT_EQ(loss.dim(), 0);
  EXPECT_EQ(loss.numel(), 1);
  EXPECT_EQ(loss.get(0), 0.125);
  EXPECT_EQ(r.load("step").get(0), 42.0);
  expect_error([&] { (void)r.load("nope"); }, p, {"nope"});
}

TEST_F(SafetensorsTest, NonContiguousAndOverwrite) {
  moe::Tensor a = moe::Tensor::from({1, 2, 3, 4, 5, 6}, {2, 3}, moe::DType::F32);
  const std::string p = file("t.safetensors");
  moe::save_safetensors(p, {{"a", moe::Tensor::zeros({1}, moe::DType::F32)}});
  moe::save_safetensors(p, {{"at", a.transpose(0, 1)}});  // replaces the file
  auto out = moe::load_safetensors(p);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out.at("at").shape(), (moe::Shape{3, 2}));
  EXPECT_EQ(out.at("at").to_vector(), (std::vector<double>{1, 4, 2, 5, 3, 6}));
}

TEST_F(SafetensorsTest, ReadsHandWrittenFile) {
  // As written by another implementation: spaces after the JSON, BOOL, a gap before the data.
  const std::string header =
      R"({"b":{"dtype":"BOOL","shape":[2],"data_offsets":[4,6]},"x":{"dtype":"F32","shape":[],)"
      R"("data_offsets":[0,4]},"__metadata__":{"format":"pt"}}   )";
  float one = 1.0f;
  std::string data(reinterpret_cast<const char*>(&one), 4);
  data += std::string("\x01\x00", 2);
  const std::string p = write_raw("hand.safetensors", header, data);
  auto out = moe::load_safetensors(p);
  EXPECT_EQ(out.at("x").get(0), 1.0);
  EXPECT_EQ(out.at("b").dtype(), moe::DType::U8);
  EXPECT_EQ(out.at("b").to_vector(), (std::vector<double>{1, 0}));
}

TEST_F(SafetensorsTest, WriterRejectsBadTensors) {
  const std::string p = file("bad.safetensors");
  expect_error([&] { moe::save_safetensors(p, {{"u", moe::Tensor()}}); }, p, {"'u'"});
  expect_error(
      [&] {
        moe::save_safetensors(p, {{"q", moe::Tensor::zeros({4}, moe::DType::I4)}});
      },
      p, {"'q'"});
  expect_error([&] { moe::save_safetensors(p, {{"__metadata__", moe::Tensor::zeros({1})}}); }, p);
  EXPECT_FALSE(fs::exists(p));
  EXPECT_FALSE(fs::exists(p + ".tmp"));
  const std::string nodir = file("no_such_dir/x.safetensors");
  expect_error([&] { moe::save_safetensors(nodir, {{"a", moe::Tensor::zeros({1})}}); }, nodir);
}

TEST_F(SafetensorsTest, MissingFile) {
  const std::string p = file("missing.safetensors");
  expect_error([&] { (void)moe::load_safetensors(p); }, p, {"no such file"});
  expect_error([&] { (void)moe::load_safetensors(dir_.string()); }, dir_.string(), {"not a regular file"});
}

TEST_F(SafetensorsTest, TruncatedBeforeHeaderLength) {
  const std::string p = file("short.safetensors");
  std::ofstream(p, std::ios::binary) << "abc";
  expect_error([&] { (void)moe::load_safetensors(p); }, p, {"truncated"});
}

TEST_F(SafetensorsTest, HeaderLengthLargerThanFile) {
  const std::string p = write_raw("len.safetensors", "{}", "", 1000);
  expect_error([&] { (void)moe::load_safetensors(p); }, p, {"header length 1000"});
  const std::string huge = write_raw("huge.safetensors", "{}", "", INT64_MAX);
  expect_error([&] { (void)moe::load_safetensors(huge); }, huge, {"header length"});
}

TEST_F(SafetensorsTest, TruncatedData) {
  // A valid file cut short: the header promises more bytes than the buffer holds.
  const std::string full = file("full.safetensors");
  moe::save_safetensors(full, {{"w", moe::Tensor::zeros({16}, moe::DType::F64)}});
  const std::string p = file("cut.safetensors");
  fs::copy_file(full, p);
  fs::resize_file(p, fs::file_size(p) - 8);
  expect_error([&] { (void)moe::load_safetensors(p); }, p, {"'w'", "out of range"});
}

TEST_F(SafetensorsTest, InvalidJson) {
  const std::string p = write_raw("json.safetensors", R"({"a": {"dtype": "F32",)", "");
  expect_error([&] { (void)moe::load_safetensors(p); }, p, {"not valid JSON"});
  const std::string arr = write_raw("arr.safetensors", "[1, 2]   ", "");
  expect_error([&] { (void)moe::load_safetensors(arr); }, arr, {"not a JSON object"});
  const std::string meta = write_raw("meta.safetensors", R"({"__metadata__": {"a": 1}})", "");
  expect_error([&] { (void)moe::load_safetensors(meta); }, meta, {"__metadata__"});
}

TEST_F(SafetensorsTest, UnknownDtype) {
  const std::string p = write_raw(
      "dt.safetensors", R"({"w": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}})", "xx");
  expect_error([&] { (void)moe::load_safetensors(p); }, p, {"'w'", "F8_E4M3"});
  const std::string q =
      write_raw("dt2.safetensors", R"({"w": {"dtype": 7, "shape": [2], "data_offsets": [0, 2]}})", "xx");
  expect_error([&] { (void)moe::load_safetensors(q); }, q, {"'w'", "dtype"});
}

TEST_F(SafetensorsTest, MalformedEntry) {
  const std::string p = write_raw("e1.safetensors", R"({"w": {"dtype": "F32", "shape": [1]}})", "abcd");
  expect_error([&] { (void)moe::load_safetensors(p); }, p, {"'w'", "data_offsets"});
  const std::string q = write_raw(
      "e2.safetensors", R"({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})", "abcd");
  expect_error([&] { (void)moe::load_safetensors(q); }, q, {"'w'", "shape"});
  const std::string r = write_raw(
      "e3.safetensors", R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, -4]}})", "abcd");
  expect_error([&] { (void)moe::load_safetensors(r); }, r, {"'w'", "data_offsets"});
}

TEST_F(SafetensorsTest, OffsetsOutOfRange) {
  const std::string p = write_raw(
      "oor.safetensors", R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})", "abcdefgh");
  expect_error([&] { (void)moe::load_safetensors(p); }, p, {"'w'", "out of range"});
  const std::string q = write_raw("rev.safetensors",
                                  R"({"w": {"dtype": "F32", "shape": [0], "data_offsets": [4, 0]}})", "abcd");
  expect_error([&] { (void)moe::load_safetensors(q); }, q, {"'w'", "out of range"});
}

TEST_F(SafetensorsTest, OffsetsNotMatchingShape) {
  const std::string p = write_raw(
      "size.safetensors", R"({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})", "abcdefgh");
  expect_error([&] { (void)moe::load_safetensors(p); }, p, {"'w'", "(3,)", "needs 12"});
  // A shape whose element count overflows 64 bits.
  const std::string q =
      write_raw("ovf.safetensors",
                R"({"w": {"dtype": "F64", "shape": [4294967296, 4294967296, 16], "data_offsets": [0, 8]}})",
                "abcdefgh");
  expect_error([&] { (void)moe::load_safetensors(q); }, q, {"'w'"});
  // An empty tensor whose other sizes multiply past int64 (fuzz/regressions/safetensors): refused
  // before the tensor's shape arithmetic overflows.
  const std::string r = write_raw(
      "empty_ovf.safetensors",
      R"({"w": {"dtype": "F32", "shape": [1099511627776, 1099511627776, 0], "data_offsets": [0, 0]}})", "");
  expect_error([&] { (void)moe::load_safetensors(r); }, r, {"'w'", "too large"});
  // An empty tensor with sizes that fit is still read.
  const std::string ok =
      write_raw("empty_ok.safetensors",
                R"({"w": {"dtype": "F32", "shape": [1099511627776, 0], "data_offsets": [0, 0]}})", "");
  EXPECT_EQ(moe::load_safetensors(ok).at("w").numel(), 0);
}

TEST_F(SafetensorsTest, OverlappingOffsets) {
  const std::string p = write_raw("ovl.safetensors",
                                  R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},)"
                                  R"( "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
                                  std::string(12, 'z'));
  expect_error([&] { (void)moe::load_safetensors(p); }, p, {"'a'", "'b'", "overlap"});
  // Unsorted but disjoint offsets are fine.
  const std::string q = write_raw("uns.safetensors",
                                  R"({"a": {"dtype": "U8", "shape": [2], "data_offsets": [2, 4]},)"
                                  R"( "b": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}})",
                                  "\x01\x02\x03\x04");
  auto out = moe::load_safetensors(q);
  EXPECT_EQ(out.at("a").to_vector(), (std::vector<double>{3, 4}));
  EXPECT_EQ(out.at("b").to_vector(), (std::vector<double>{1, 2}));
}
