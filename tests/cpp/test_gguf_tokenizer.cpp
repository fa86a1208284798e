// Tokenizers from GGUF metadata (tests/fixtures/gguf/tokenizers, written by the gguf package from
// tests/fixtures/tokenizers/*/tokenizer.json): they encode the fixtures' cases to the ids of the
// Python `tokenizers` library, as the tokenizer.json does; and tokenizer.json -> GGUF metadata (the
// exporter's) -> tokenizer encodes the same.
#include <gtest/gtest.h>

#include <ctime>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "moe/core/error.h"
#include "moe/core/file_io.h"
#include "moe/model/gguf_model.h"
#include "moe/text/tokenizer.h"
#include "temp_path.h"

using namespace moe;

namespace {

const std::string kFixtures = std::string(MOE_TEST_FIXTURES);

text::Tokenizer from_gguf(const std::string& path) {
  const gguf::Reader r(path);
  return text::Tokenizer::from_json(model::gguf_tokenizer_json(r), path);
}

// Every case of the fixture: ids without and with the special tokens, and the decoded text. GGUF
// has no place for an added token's lstrip, rstrip and single_word flags (llama.cpp sets them by
// model name, if at all): the cases whose text holds such a token are skipped (and counted).
void expect_cases(const text::Tokenizer& tok, const std::string& name) {
  const std::string path = kFixtures + "/tokenizers/" + name + "/cases.json";
  const nlohmann::json cases = nlohmann::json::parse(io::read_file(path, path));
  const std::string tj = kFixtures + "/tokenizers/" + name + "/tokenizer.json";
  std::vector<std::string> flagged;
  const nlohmann::json file = nlohmann::json::parse(io::read_file(tj, tj));
  for (const nlohmann::json& a : file["added_tokens"])
    if (a.value("lstrip", false) || a.value("rstrip", false) || a.value("single_word", false))
      flagged.push_back(a["content"].get<std::string>());
  int n = 0, skipped = 0;
  for (const nlohmann::json& c : cases) {
    const std::string text = c["text"].get<std::string>();
    bool skip = false;
    for (const std::string& f : flagged) skip = skip || text.find(f) != std::string::npos;
    if (skip) {
      ++skipped;
      continue;
    }
    const auto ids = c["ids"].get<std::vector<int32_t>>();
    EXPECT_EQ(tok.encode(text), ids) << name << ": " << text;
    EXPECT_EQ(tok.encode(text, {.add_special_tokens = true}), c["ids_special"].get<std::vector<int32_t>>())
        << name << ": " << text;
    EXPECT_EQ(tok.decode(ids), c["decoded"].get<std::string>()) << name << ": " << text;
    ++n;
  }
  EXPECT_GT(n, 0);
  EXPECT_LE(skipped, 3) << "cases skipped for added-token flags";
}

}  // namespace

class GgufTokenizer : public ::testing::TestWithParam<std::string> {};

TEST_P(GgufTokenizer, EncodesLikeTheTokenizerJson) {
  const text::Tokenizer tok = from_gguf(kFixtures + "/gguf/tokenizers/" + GetParam() + ".gguf");
  const text::Tokenizer ref =
      text::Tokenizer::load(kFixtures + "/tokenizers/" + GetParam() + "/tokenizer.json");
  EXPECT_EQ(tok.vocab_size(), ref.vocab_size());
  EXPECT_EQ(tok.eos_id(), ref.eos_id());
  EXPECT_EQ(tok.bos_id(), ref.bos_id());
  expect_cases(tok, GetParam());
}

TEST_P(GgufTokenizer, ExportedMetadataEncodesLikeTheTokenizerJson) {
  const std::string tj = kFixtures + "/tokenizers/" + GetParam() + "/tokenizer.json";
  model::ModelConfig c;
  gguf::WriteFile f;
  f.metadata = model::gguf_tokenizer_metadata(io::read_file(tj, tj), c);
  const std::string out = moe::testutil::unique_temp_path("tok_" + GetParam() + ".gguf");
  gguf::write_file(out, f);
  expect_cases(from_gguf(out), GetParam());
  std::filesystem::remove(out);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, GgufTokenizer,
                         ::testing::Values("qwen2", "olmoe", "deepseek_v3", "mixtral"),
                         [](const ::testing::TestParamInfo<std::string>& p) { return p.param; });

TEST(GgufTokenizer, AFileWithoutATokenizerGivesNone) {
  EXPECT_EQ(model::gguf_tokenizer_json(gguf::Reader(kFixtures + "/gguf/mixtral.f32.gguf")), "");
}

TEST(GgufTokenizer, AnUnsupportedModelIsNamed) {
  gguf::WriteFile f;
  f.metadata = {{"tokenizer.ggml.model", gguf::str_value("bert")}};
  const std::string out = moe::testutil::unique_temp_path("moe_test_tok_bert.gguf");
  gguf::write_file(out, f);
  try {
    model::gguf_tokenizer_json(gguf::Reader(out));
    FAIL() << "accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'bert' is not supported"), std::string::npos) << e.what();
  }
  std::filesystem::remove(out);
}

TEST(GgufTokenizer, ATokenThatIsNotUtf8IsAnErrorNotACrash) {
  // fuzz/regressions/gguf/token_not_utf8: nlohmann's type_error escaped gguf_tokenizer_json.
  gguf::WriteFile f;
  f.metadata = {{"tokenizer.ggml.model", gguf::str_value("gpt2")},
                {"tokenizer.ggml.tokens", gguf::str_array({"a", "b\xff", "ab"})},
                {"tokenizer.ggml.merges", gguf::str_array({"a b"})}};
  const std::string out = moe::testutil::unique_temp_path("moe_test_tok_utf8.gguf");
  gguf::write_file(out, f);
  try {
    model::gguf_tokenizer_json(gguf::Reader(out));
    FAIL() << "accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not valid UTF-8"), std::string::npos) << e.what();
  }
  std::filesystem::remove(out);
}

namespace {
// A gpt2 GGUF tokenizer of n distinct tokens ("t0", "t1", ...) and one merge.
std::string many_tokens_file(size_t n, const std::string& stem) {
  std::vector<std::string> toks;
  for (size_t i = 0; i < n; ++i) {
    std::string t = "t";
    t += std::to_string(i);
    toks.push_back(t);
  }
  gguf::WriteFile f;
  f.metadata = {{"tokenizer.ggml.model", gguf::str_value("gpt2")},
                {"tokenizer.ggml.tokens", gguf::str_array(toks)},
                {"tokenizer.ggml.merges", gguf::str_array({"t 1"})}};
  const std::string out = moe::testutil::unique_temp_path(stem);
  gguf::write_file(out, f);
  return out;
}

// The process's CPU time, not wall time: other processes on a loaded machine (a parallel test run)
// do not count, only this conversion's own work.
double cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

double seconds_to_convert(const std::string& path) {
  const gguf::Reader r(path);
  const double t0 = cpu_seconds();
  const std::string j = model::gguf_tokenizer_json(r);
  EXPECT_FALSE(j.empty());
  return cpu_seconds() - t0;
}
}  // namespace

TEST(GgufTokenizer, ARepeatedTokenKeepsItsLastIdAtItsFirstPlace) {
  gguf::WriteFile f;
  f.metadata = {{"tokenizer.ggml.model", gguf::str_value("gpt2")},
                {"tokenizer.ggml.tokens", gguf::str_array({"a", "b", "a", "ab"})},
                {"tokenizer.ggml.merges", gguf::str_array({"a b"})}};
  const std::string out = moe::testutil::unique_temp_path("tok_repeat.gguf");
  gguf::write_file(out, f);
  const nlohmann::ordered_json j =
      nlohmann::ordered_json::parse(model::gguf_tokenizer_json(gguf::Reader(out)));
  EXPECT_EQ(j["model"]["vocab"].dump(), R"({"a":2,"b":1,"ab":3})");
  std::filesystem::remove(out);
}

// The vocabulary of a 150k-token GGUF converts in time linear in its size (it was quadratic: an
// ordered JSON object looks keys up linearly). 10x the tokens within 30x the time leaves room for
// noise while a quadratic conversion (100x) fails; a ratio, not a time limit.
TEST(GgufTokenizer, ConvertingTheVocabularyIsLinearInItsSize) {
  const std::string small = many_tokens_file(15000, "tok_15k.gguf"),
                    big = many_tokens_file(150000, "tok_150k.gguf");
  double t_small = 1e9, t_big = 1e9;
  for (int rep = 0; rep < 5; ++rep) {  // best of 5 against cache and frequency noise
    t_small = std::min(t_small, seconds_to_convert(small));
    t_big = std::min(t_big, seconds_to_convert(big));
  }
  EXPECT_LT(t_big, 30 * std::max(t_small, 1e-4))
      << "15k tokens " << t_small << " s, 150k tokens " << t_big << " s";
  std::filesystem::remove(small);
  std::filesystem::remove(big);
}
