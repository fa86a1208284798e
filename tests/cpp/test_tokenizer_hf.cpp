// tokenizer.json files of the real checkpoints' pipelines (Qwen2, OLMoE, DeepSeek-V3, Mixtral, newer
// Mistral), made by Hugging Face `tokenizers` (tests/fixtures/tokenizers/make_tokenizer_fixtures.py) with the
// ids and decodes it produced: the engine must give exactly the same. Also NFC against Python's unicodedata
// cases, the hand-written pattern matchers on chosen strings, and the errors for what is not supported.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "moe/text/tokenizer.h"
#include "text/normalize.h"
#include "text/pretok_patterns.h"
#include "train_testutil.h"

namespace moe::text {
namespace {

using train::testing::expect_error;

std::string fixture(const std::string& family) {
  return std::string(MOE_TEST_FIXTURES) + "/tokenizers/" + family;
}

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << path;
  return nlohmann::json::parse(in);
}

struct Family {
  const char* name;
  int32_t bos, eos;
};
const Family kFamilies[] = {{"qwen2", -1, 0},
                            {"olmoe", -1, 2},
                            {"deepseek_v3", 0, 1},
                            {"mixtral", 1, 2},
                            {"mistral_metaspace", 1, 2}};

void check_cases(const Tokenizer& tok, const std::string& family, const nlohmann::json& cases) {
  ASSERT_GT(cases.size(), 10u);
  for (const auto& c : cases) {
    const std::string text = c["text"].get<std::string>();
    SCOPED_TRACE(family + ": '" + text + "'");
    const std::vector<int32_t> ids = tok.encode(text);
    EXPECT_EQ(ids, c["ids"].get<std::vector<int32_t>>());
    EXPECT_EQ(tok.encode(text, {.add_special_tokens = true}), c["ids_special"].get<std::vector<int32_t>>());
    EXPECT_EQ(tok.decode(c["ids"].get<std::vector<int32_t>>()), c["decoded"].get<std::string>());
  }
}

TEST(TokenizerHf, EncodesAndDecodesLikeHuggingFace) {
  for (const Family& f : kFamilies) {
    const Tokenizer tok = Tokenizer::load(fixture(f.name) + "/tokenizer.json");
    EXPECT_EQ(tok.bos_id(), f.bos) << f.name;
    EXPECT_EQ(tok.eos_id(), f.eos) << f.name;
    check_cases(tok, f.name, read_json(fixture(f.name) + "/cases.json"));
  }
}

using TokenizerHfFile = train::testing::TempDirTest;

TEST_F(TokenizerHfFile, SaveThenLoadKeepsThePipeline) {
  for (const Family& f : kFamilies) {
    const Tokenizer tok = Tokenizer::load(fixture(f.name) + "/tokenizer.json");
    const std::string path = file(std::string(f.name) + ".json");
    tok.save(path);
    const Tokenizer back = Tokenizer::load(path);
    EXPECT_EQ(back.bos_id(), f.bos);
    check_cases(back, f.name, read_json(fixture(f.name) + "/cases.json"));
  }
}

// Optional: random texts (tests/fixtures/tokenizers/random_cases.py) encoded and decoded by the Python
// `tokenizers` library. Runs when the interpreter named by MOE_TEST_PYTHON (or /usr/bin/python3)
// can import it.
TEST_F(TokenizerHfFile, PythonTokenizersAgreeOnRandomTextWhenInstalled) {
  const char* env = std::getenv("MOE_TEST_PYTHON");
  const std::string python = env && *env ? env : "/usr/bin/python3";
  if (std::system((python + " -c 'import tokenizers' >/dev/null 2>&1").c_str()) != 0)
    GTEST_SKIP() << "the Python `tokenizers` package is not importable by " << python;
  const std::string out = file("random.json");
  const std::string cmd =
      python + " " + std::string(MOE_TEST_FIXTURES) + "/tokenizers/random_cases.py " + out;
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  const nlohmann::json all = read_json(out);
  for (const Family& f : kFamilies) {
    ASSERT_TRUE(all.contains(f.name)) << f.name;
    check_cases(Tokenizer::load(fixture(f.name) + "/tokenizer.json"), f.name, all[f.name]);
  }
}

TEST(TokenizerHf, StreamingBytesOfLlamaStyleTokens) {
  const Tokenizer tok = Tokenizer::load(fixture("mixtral") + "/tokenizer.json");
  EXPECT_EQ(tok.token_bytes(tok.token_id("<0x0A>")), "\n");
  EXPECT_EQ(tok.token_bytes(tok.token_id("\xE2\x96\x81the")), " the");  // "▁the"
  EXPECT_EQ(tok.token_bytes(1), "<s>");
  std::string streamed;
  for (int32_t id : tok.encode("Hi\n\xE6\x97\xA5 there")) streamed += tok.token_bytes(id);
  EXPECT_EQ(streamed, " Hi\n\xE6\x97\xA5 there");
}

TEST(TokenizerHf, NfcMatchesUnicodedata) {
  using detail::nfc;
  EXPECT_EQ(nfc("cafe\xCC\x81"), "caf\xC3\xA9");                           // e + U+0301 -> é
  EXPECT_EQ(nfc("\xE1\x84\x80\xE1\x85\xA1\xE1\x86\xA8"), "\xEA\xB0\x81");  // Hangul L V T -> 각
  EXPECT_EQ(nfc("a\xCC\xA3\xCC\x87"), "\xE1\xBA\xA1\xCC\x87");             // a + dot below + dot above: ạ̇
  EXPECT_EQ(nfc("a\xCC\x87\xCC\xA3"), "\xE1\xBA\xA1\xCC\x87");             // reordered first
  EXPECT_EQ(nfc("\xE2\x84\xAB"), "\xC3\x85");                              // Angstrom sign -> Å (singleton)
  EXPECT_EQ(nfc("\xE0\xA5\x98"), "\xE0\xA4\x95\xE0\xA4\xBC");              // U+0958: composition exclusion
  EXPECT_EQ(nfc("plain ascii"), "plain ascii");
  EXPECT_EQ(nfc("bad \xFF\xCC\x81 byte"), "bad \xFF\xCC\x81 byte");  // invalid byte blocks composition
}

// Every code point with a decomposition or a combining class, alone and decomposed, and random
// mark sequences, against Python's unicodedata (tests/fixtures/tokenizers/nfc_cases.py).
TEST_F(TokenizerHfFile, NfcMatchesPythonUnicodedata) {
  const std::string python = "/usr/bin/python3";
  if (std::system((python + " -c 'import unicodedata' >/dev/null 2>&1").c_str()) != 0)
    GTEST_SKIP() << python << " is not there";
  const std::string out = file("nfc.json");
  const std::string cmd = python + " " + std::string(MOE_TEST_FIXTURES) + "/tokenizers/nfc_cases.py " + out;
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  const nlohmann::json cases = read_json(out);
  ASSERT_GT(cases.size(), 20000u);
  size_t bad = 0;
  for (const auto& c : cases) {
    const std::string text = c[0].get<std::string>();
    if (detail::nfc(text) != c[1].get<std::string>() && ++bad <= 5)
      ADD_FAILURE() << "NFC of '" << text << "'";
  }
  EXPECT_EQ(bad, 0u);
}

TEST(TokenizerHf, PatternMatchers) {
  using detail::SplitPattern;
  auto split = [](SplitPattern p, std::string_view s) {
    std::vector<std::string_view> out;
    detail::split_isolated(p, "", s, out);
    return std::vector<std::string>(out.begin(), out.end());
  };
  using V = std::vector<std::string>;
  EXPECT_EQ(split(SplitPattern::Qwen2, "I'M 123 ab\r\n\r\n  x  "),
            (V{"I", "'M", " ", "1", "2", "3", " ab", "\r\n\r\n", " ", " x", "  "}));
  EXPECT_EQ(split(SplitPattern::Llama3, "12345 ...\n"), (V{"123", "45", " ...\n"}));
  EXPECT_EQ(split(SplitPattern::DeepSeekDigits, "a12345b"), (V{"a", "123", "45", "b"}));
  EXPECT_EQ(split(SplitPattern::DeepSeekCjk,
                  "ab\xE6\x97\xA5\xE6\x9C\xAC"
                  "cd"),
            (V{"ab", "\xE6\x97\xA5\xE6\x9C\xAC", "cd"}));
  EXPECT_EQ(split(SplitPattern::DeepSeekWords, "(foo) bar's"), (V{"(foo", ")", " bar", "'s"}));
  detail::SplitPattern p;
  EXPECT_TRUE(detail::find_split_pattern("\\p{N}{1,3}", p));
  EXPECT_EQ(p, SplitPattern::DeepSeekDigits);
  EXPECT_FALSE(detail::find_split_pattern("\\p{N}{1,4}", p));
}

TEST_F(TokenizerHfFile, UnsupportedFieldsAreErrors) {
  const nlohmann::json base = read_json(fixture("qwen2") + "/tokenizer.json");
  struct Case {
    const char* what;
    std::function<void(nlohmann::json&)> edit;
    std::vector<std::string> parts;
  };
  const std::vector<Case> cases = {
      {"model type", [](auto& j) { j["model"]["type"] = "Unigram"; }, {"model.type 'Unigram'"}},
      {"regex",
       [](auto& j) { j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "\\w+"; },
       {"pre_tokenizer.pretokenizers[0]", "Regex pattern '\\w+' is not supported", "(?i:'s"}},
      {"behavior",
       [](auto& j) { j["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Removed"; },
       {"pre_tokenizer.pretokenizers[0]", "behavior 'Removed'"}},
      {"normalizer",
       [](auto& j) {
         j["normalizer"] = {{"type", "NFKC"}};
       },
       {"normalizer", "type 'NFKC'"}},
      {"regex replace",
       [](auto& j) {
         j["normalizer"] = {{"type", "Replace"}, {"pattern", {{"Regex", " +"}}}, {"content", " "}};
       },
       {"normalizer", "pattern"}},
      {"pre_tokenizer",
       [](auto& j) {
         j["pre_tokenizer"] = {{"type", "Whitespace"}};
       },
       {"pre_tokenizer", "type 'Whitespace'"}},
      {"decoder",
       [](auto& j) {
         j["decoder"] = {{"type", "WordPiece"}};
       },
       {"decoder", "type 'WordPiece'"}},
      {"post_processor",
       [](auto& j) {
         j["post_processor"] = {{"type", "Custom"}};
       },
       {"post_processor", "type 'Custom'"}},
      {"roberta",
       [](auto& j) {
         j["post_processor"] = {{"type", "RobertaProcessing"}, {"cls", {"<s>"}}};
       },
       {"post_processor", "'cls' is not a [token, id] pair"}},
      {"template",
       [](auto& j) {
         j["post_processor"] = {
             {"type", "TemplateProcessing"},
             {"single", {{{"SpecialToken", {{"id", "<s>"}}}}, {{"Sequence", {{"id", "A"}}}}}},
             {"special_tokens", nlohmann::json::object()}};
       },
       {"post_processor", "no ids for '<s>'"}},
      // Refused before a table of 10^8 tokens is allocated.
      {"huge id",
       [](auto& j) { j["model"]["vocab"]["zzzz"] = 100000000; },
       {"no token has id", "ids must cover 0..100000000"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    nlohmann::json j = base;
    c.edit(j);
    const std::string p = write_text(std::string(c.what) + ".json", j.dump());
    std::vector<std::string> parts = c.parts;
    parts.push_back(p);
    expect_error([&] { Tokenizer::load(p); }, parts);
  }
}

// Encoding is linear in the input: 1 MB of text that repeats (the worst case for a per-word cache),
// one unbroken word, runs of spaces and digits, and random bytes take at most a fixed multiple of
// 10x the time of 100 KB of the same (quadratic work would take about 100x). Summed over every
// pipeline and input, best of a few runs, so the timer's noise is small against the totals.
TEST(TokenizerHf, EncodingIsLinearInTheInput) {
  std::vector<std::string> units = {"hello world ", "a", " \n\t1234 Ünïcödé 漢字 "};
  std::string noise;
  uint64_t z = 7;
  for (int i = 0; i < 4096; ++i)
    noise.push_back(static_cast<char>((z = z * 6364136223846793005ULL + 1) >> 56));
  units.push_back(noise);
  auto text_of = [](const std::string& unit, size_t bytes) {
    std::string s;
    s.reserve(bytes + unit.size());
    while (s.size() < bytes) s += unit;
    return s;
  };
  auto best_seconds = [](const Tokenizer& tok, const std::string& s, int runs) {
    double best = 1e30;
    for (int r = 0; r < runs; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      const std::vector<int32_t> ids = tok.encode(s);
      const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      EXPECT_FALSE(ids.empty());
      best = std::min(best, dt);
    }
    return best;
  };
  double small = 0, large = 0;
  for (const Family& f : kFamilies) {
    const Tokenizer tok = Tokenizer::load(fixture(f.name) + "/tokenizer.json");
    for (const std::string& unit : units) {
      small += best_seconds(tok, text_of(unit, 100000), 3);
      large += best_seconds(tok, text_of(unit, 1000000), 1);
    }
  }
  EXPECT_LT(large, 30 * small) << "100 KB: " << small << " s, 1 MB: " << large << " s";
}

}  // namespace
}  // namespace moe::text
