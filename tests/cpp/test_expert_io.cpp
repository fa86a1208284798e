// Reading an expert's spans: with O_DIRECT, nearby spans are read together, far ones apart, across
// files, up to an unaligned end of file; the bytes equal the memory-mapped ones; a span past the end
// is refused naming the file.
#include <gtest/gtest.h>

#include <fstream>

#include "infer/expert_io.h"
#include "moe/core/error.h"
#include "train_testutil.h"

namespace moe::infer::detail {
namespace {

class ExpertIoTest : public train::testing::TempDirTest {};

std::string pattern(size_t n, uint32_t seed) {
  std::string s(n, '\0');
  uint32_t x = seed;
  for (size_t i = 0; i < n; ++i) x = x * 1664525u + 1013904223u, s[i] = static_cast<char>(x >> 24);
  return s;
}

TEST_F(ExpertIoTest, CoalescedDirectReadsGiveTheMappedBytes) {
  const std::string a = pattern(3 * 1024 * 1024 + 123, 1), b = pattern(70000, 2);  // unaligned ends
  std::ofstream(file("a.bin"), std::ios::binary) << a;
  std::ofstream(file("b.bin"), std::ios::binary) << b;
  const std::vector<std::string> paths = {file("a.bin"), file("b.bin")};
  auto span = [](int f, uint64_t off, uint64_t n) {
    Span s;
    s.file = f;
    s.offset = off;
    s.bytes = n;
    return s;
  };
  const uint64_t end_a = a.size();
  const std::vector<Span> spans = {
      span(0, 1000, 5000),                                      // with the next: a gap of 1 KB, one read
      span(0, 7000, 300000),   span(0, 2 * 1024 * 1024, 4096),  // far away: a read of its own
      span(1, 10, 60000),                                       // another file
      span(0, end_a - 77, 77),                                  // the file's unaligned end
      span(0, 1500, 100),                                       // overlapping an earlier span
  };
  const SourceFiles mapped(paths, false), direct(paths, true);
  Buffer bm, bd;
  std::vector<const uint8_t*> pm, pd;
  mapped.fetch_many(spans, bm, pm);
  direct.fetch_many(spans, bd, pd);
  ASSERT_EQ(pm.size(), spans.size());
  ASSERT_EQ(pd.size(), spans.size());
  for (size_t i = 0; i < spans.size(); ++i) {
    const std::string& src = spans[i].file == 0 ? a : b;
    const std::string want = src.substr(spans[i].offset, spans[i].bytes);
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(pm[i]), spans[i].bytes), want) << "mapped span " << i;
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(pd[i]), spans[i].bytes), want) << "direct span " << i;
  }
  // the unaligned end alone
  direct.fetch_many({spans[4]}, bd, pd);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(pd[0]), 77), a.substr(end_a - 77));
  // past the end of the file
  try {
    direct.fetch_many({span(1, 69000, 2000)}, bd, pd);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("b.bin"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace moe::infer::detail
