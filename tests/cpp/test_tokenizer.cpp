// Byte-level BPE tokenizer: GPT-2 pre-tokenisation cases, hand-computed training runs, round trips
// of random bytes and UTF-8, special tokens, the long-word merge path against a naive reference,
// tokenizer.json save/load (hand-written files and every kind of bad file).
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "moe/core/rng.h"
#include "moe/text/tokenizer.h"
#include "text/pretokenize.h"
#include "train_testutil.h"

namespace moe::text {
namespace {

using detail::pretokenize;
using train::testing::expect_error;

std::vector<std::string> split(std::string_view s) {
  std::vector<std::string> out;
  for (std::string_view p : pretokenize(s)) out.emplace_back(p);
  return out;
}

// Some English with repetition, enough to learn a few hundred merges.
std::string sample_text() {
  const char* lines[] = {
      "The quick brown fox jumps over the lazy dog.",
      "I'm sure they'll say it's the best thing we've done, isn't it?",
      "Numbers: 12, 345 and 6789 -- plus 3.14159!",
      "  Indented line with  two spaces\tand a tab.",
      "Caf\xC3\xA9 cr\xC3\xA8me br\xC3\xBBl\xC3\xA9"
      "e, na\xC3\xAFve r\xC3\xA9sum\xC3\xA9.",
      "\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E \xE3\x83\x86\xE3\x82\xAD\xE3\x82\xB9\xE3\x83\x88 and emoji "
      "\xF0\x9F\x98\x80!",
  };
  std::string text;
  for (int rep = 0; rep < 40; ++rep)
    for (const char* l : lines) {
      text += l;
      text += rep % 3 == 0 ? "\n\n" : "\n";
    }
  return text;
}

const Tokenizer& sample_tokenizer() {
  static const Tokenizer tok = Tokenizer::train_bpe(sample_text(), 400);
  return tok;
}

// ---------------------------------------------------------------------------------------------
// Pre-tokenisation

TEST(TokenizerPretok, SplitsLikeGpt2) {
  using V = std::vector<std::string>;
  EXPECT_EQ(split("Hello world"), (V{"Hello", " world"}));
  EXPECT_EQ(split("I'm fine, isn't it?"), (V{"I", "'m", " fine", ",", " isn", "'t", " it", "?"}));
  EXPECT_EQ(split("we'll they're you've I'd"), (V{"we", "'ll", " they", "'re", " you", "'ve", " I", "'d"}));
  EXPECT_EQ(split("'S"), (V{"'", "S"}));  // contractions are case-sensitive
  EXPECT_EQ(split("  two spaces"), (V{" ", " two", " spaces"}));
  EXPECT_EQ(split("a\n\nb"), (V{"a", "\n", "\n", "b"}));  // \s+(?!\S) keeps the last one back
  EXPECT_EQ(split("x   \n"), (V{"x", "   \n"}));          // trailing whitespace stays whole
  EXPECT_EQ(split("a \tb"), (V{"a", " ", "\t", "b"}));
  EXPECT_EQ(split("123abc 456"), (V{"123", "abc", " 456"}));
  EXPECT_EQ(split("$$$ !!"), (V{"$$$", " !!"}));
  EXPECT_EQ(split("x!'s"), (V{"x", "!'", "s"}));  // a punctuation run swallows the apostrophe
  EXPECT_EQ(split(" 's"), (V{" '", "s"}));
  EXPECT_EQ(split(""), V{});
  EXPECT_EQ(split(" "), (V{" "}));
}

TEST(TokenizerPretok, NonAsciiLettersSpacesAndSymbols) {
  using V = std::vector<std::string>;
  EXPECT_EQ(split("h\xC3\xA9llo w\xC3\xB6rld"), (V{"h\xC3\xA9llo", " w\xC3\xB6rld"}));
  // CJK and katakana are letters.
  EXPECT_EQ(split("\xE6\x97\xA5\xE6\x9C\xAC \xE3\x83\x86\xE3\x82\xAD"),
            (V{"\xE6\x97\xA5\xE6\x9C\xAC", " \xE3\x83\x86\xE3\x82\xAD"}));
  // U+2615 (hot beverage) is a symbol; U+00A0 (no-break space) is whitespace; U+00B2 is a number.
  EXPECT_EQ(split("caf\xC3\xA9\xE2\x98\x95ok"), (V{"caf\xC3\xA9", "\xE2\x98\x95", "ok"}));
  EXPECT_EQ(split("a\xC2\xA0"
                  "b"),
            (V{"a", "\xC2\xA0", "b"}));
  EXPECT_EQ(split("x\xC2\xB2"), (V{"x", "\xC2\xB2"}));
  EXPECT_EQ(split("\xE2\x80\x9Cquoted\xE2\x80\x9D"), (V{"\xE2\x80\x9C", "quoted", "\xE2\x80\x9D"}));
  // Devanagari vowel signs and the virama are marks, not letters (as in GPT-2); Arabic-Indic digits
  // are numbers; U+2102 (double-struck C) is a letter.
  EXPECT_EQ(split("\xE0\xA4\xA8\xE0\xA4\xAE\xE0\xA4\xB8\xE0\xA5\x8D\xE0\xA4\xA4\xE0\xA5\x87"),
            (V{"\xE0\xA4\xA8\xE0\xA4\xAE\xE0\xA4\xB8", "\xE0\xA5\x8D", "\xE0\xA4\xA4", "\xE0\xA5\x87"}));
  EXPECT_EQ(split("x\xD9\xA3\xD9\xA4 \xE2\x84\x82x"), (V{"x", "\xD9\xA3\xD9\xA4", " \xE2\x84\x82x"}));
  // Invalid UTF-8: each byte is an "other" character; a truncated sequence too.
  EXPECT_EQ(split("ab\xFF\xFE"
                  "cd"),
            (V{"ab", "\xFF\xFE", "cd"}));
  EXPECT_EQ(split("ok\xE6\x97"), (V{"ok", "\xE6\x97"}));
  EXPECT_EQ(split("\xC0\xAF"), (V{"\xC0\xAF"}));  // overlong encoding of '/'
}

TEST(TokenizerPretok, PiecesCoverRandomBytes) {
  const Rng rng(7);
  uint64_t draw = 0;
  for (int trial = 0; trial < 200; ++trial) {
    std::string s(rng.below(draw++, 300), '\0');
    for (char& c : s) c = static_cast<char>(rng.below(draw++, 256));
    std::string joined;
    for (std::string_view p : pretokenize(s)) {
      ASSERT_FALSE(p.empty());
      joined += p;
    }
    EXPECT_EQ(joined, s);
  }
}

TEST(TokenizerPretok, ByteAlphabet) {
  EXPECT_EQ(detail::bytes_to_unicode_str(" the"), "\xC4\xA0the");  // "Ġthe"
  EXPECT_EQ(detail::bytes_to_unicode_str("\n"), "\xC4\x8A");       // "Ċ"
  std::string all, back;
  for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
  ASSERT_TRUE(detail::unicode_str_to_bytes(detail::bytes_to_unicode_str(all), back));
  EXPECT_EQ(back, all);
  EXPECT_FALSE(detail::unicode_str_to_bytes("\xE6\x97\xA5", back));  // U+65E5 stands for no byte
  const auto& order = detail::bytes_in_unicode_order();
  ASSERT_EQ(order.size(), 256u);
  EXPECT_EQ(order[0], '!');
  EXPECT_EQ(order[93], '~');
  EXPECT_EQ(order[188], 0);  // the first non-printable byte follows the 188 printable ones
  EXPECT_EQ(order[188 + 32], ' ');
}

// ---------------------------------------------------------------------------------------------
// Training

// Byte token ids without special tokens: '!'..'~' are 0..93, ' ' is 220.
int32_t byte_id(char c) { return c == ' ' ? 220 : c - '!'; }

TEST(TokenizerTrain, HandComputedMerges) {
  // Words: "abc", " abc", " abd". Pair counts (a,b)=3, (b,c)=2, (' ',a)=2, (b,d)=1.
  //   merge 0: (a, b) -> "ab" (256)          counts now (ab,c)=2, (' ',ab)=2, (ab,d)=1
  //   merge 1: (' ', ab) -> " ab" (257)      tie at 2: smaller left id (220 < 256) wins
  //   merge 2: (ab, c) -> "abc" (258)        tie at 1 between (256,66), (257,66), (257,67)
  BpeTrainOptions opts;
  opts.special_tokens = {};
  opts.eos_token = "";
  opts.min_frequency = 1;
  const Tokenizer tok = Tokenizer::train_bpe("abc abc abd", 259, opts);
  ASSERT_EQ(tok.vocab_size(), 259);
  ASSERT_EQ(tok.num_merges(), 3);
  EXPECT_EQ(tok.merge(0), (std::pair<std::string, std::string>{"a", "b"}));
  EXPECT_EQ(tok.merge(1), (std::pair<std::string, std::string>{" ", "ab"}));
  EXPECT_EQ(tok.merge(2), (std::pair<std::string, std::string>{"ab", "c"}));
  EXPECT_EQ(tok.token_bytes(256), "ab");
  EXPECT_EQ(tok.token_bytes(257), " ab");
  EXPECT_EQ(tok.token_bytes(258), "abc");
  EXPECT_EQ(tok.eos_id(), -1);
  EXPECT_EQ(tok.token_id("a"), byte_id('a'));
  EXPECT_EQ(tok.token_id(" "), byte_id(' '));
  // " abd": ' ' a b d -> ' ' ab d (rank 0) -> " ab" d (rank 1).
  EXPECT_EQ(tok.encode("abc abd"), (std::vector<int32_t>{258, 257, byte_id('d')}));
  EXPECT_EQ(tok.encode("cab"), (std::vector<int32_t>{byte_id('c'), 256}));
}

TEST(TokenizerTrain, OverlappingPairsAndMinFrequency) {
  // "aaa" holds the pair (a, a) twice but merges left to right once: "aa" + "a". Words "aaa" x2:
  // (a,a) = 4 -> merge 0 "aa"; then (aa, a) = 2 -> merge 1 "aaa"; nothing is left.
  BpeTrainOptions opts;
  opts.special_tokens = {};
  opts.eos_token = "";
  const Tokenizer tok = Tokenizer::train_bpe("aaa\naaa", 1000, opts);
  ASSERT_EQ(tok.num_merges(), 2);
  EXPECT_EQ(tok.merge(0), (std::pair<std::string, std::string>{"a", "a"}));
  EXPECT_EQ(tok.merge(1), (std::pair<std::string, std::string>{"aa", "a"}));
  EXPECT_EQ(tok.vocab_size(), 258);
  // aaaaa -> aa a a a -> aa aa a (rank 0, leftmost first) -> aa aaa (rank 1).
  EXPECT_EQ(tok.encode("aaaaa"), (std::vector<int32_t>{256, 257}));
  // A pair seen once is not merged with the default min_frequency of 2.
  EXPECT_EQ(Tokenizer::train_bpe("xy", 1000, opts).num_merges(), 0);
  opts.min_frequency = 1;
  EXPECT_EQ(Tokenizer::train_bpe("xy", 1000, opts).num_merges(), 1);
}

TEST(TokenizerTrain, SpecialTokensComeFirstAndAreNotLearned) {
  const std::string text = "<|endoftext|>hello<|endoftext|>hello<|endoftext|>";
  const Tokenizer tok = Tokenizer::train_bpe(text, 1000);
  EXPECT_EQ(tok.eos_id(), 0);
  EXPECT_EQ(tok.token_bytes(0), "<|endoftext|>");
  EXPECT_EQ(tok.token_id("<|endoftext|>"), 0);
  EXPECT_EQ(tok.token_bytes(1), "!");
  ASSERT_EQ(tok.added_tokens().size(), 1u);
  EXPECT_TRUE(tok.added_tokens()[0].special);
  // Only "hello" (x2) is learned from: 4 merges, none with '<' or '|'.
  EXPECT_EQ(tok.num_merges(), 4);
  EXPECT_EQ(tok.token_bytes(tok.vocab_size() - 1), "hello");
  EXPECT_EQ(tok.encode(text), (std::vector<int32_t>{0, tok.vocab_size() - 1, 0, tok.vocab_size() - 1, 0}));
}

TEST(TokenizerTrain, IsDeterministicAndReachesTheVocabSize) {
  const Tokenizer a = Tokenizer::train_bpe(sample_text(), 400);
  const Tokenizer b = Tokenizer::train_bpe(sample_text(), 400);
  ASSERT_EQ(a.vocab_size(), 400);
  // Asked for more than the text supports, training stops when no pair occurs twice.
  const Tokenizer c = Tokenizer::train_bpe(sample_text(), 5000);
  EXPECT_GT(c.vocab_size(), 400);
  EXPECT_LT(c.vocab_size(), 5000);
  ASSERT_EQ(a.num_merges(), b.num_merges());
  for (int32_t r = 0; r < a.num_merges(); ++r) ASSERT_EQ(a.merge(r), b.merge(r)) << "merge " << r;
  for (int32_t id = 0; id < a.vocab_size(); ++id) ASSERT_EQ(a.token_bytes(id), b.token_bytes(id));
}

TEST(TokenizerTrain, BadOptionsAreErrors) {
  expect_error([] { Tokenizer::train_bpe("abc", 200); }, {"vocab_size 200", "257"});
  BpeTrainOptions opts;
  opts.eos_token = "</s>";
  expect_error([&] { Tokenizer::train_bpe("abc", 300, opts); }, {"eos_token '</s>'"});
  opts = {};
  opts.special_tokens = {"<a>", "<a>"};
  opts.eos_token = "";
  expect_error([&] { Tokenizer::train_bpe("abc", 300, opts); }, {"'<a>'", "twice"});
  opts.special_tokens = {""};
  expect_error([&] { Tokenizer::train_bpe("abc", 300, opts); }, {"at least two bytes"});
  opts.special_tokens = {"\n"};
  expect_error([&] { Tokenizer::train_bpe("abc", 300, opts); }, {"special token 0", "at least two bytes"});
}

// ---------------------------------------------------------------------------------------------
// Encoding

TEST(TokenizerEncode, RoundTripsRandomBytes) {
  const Tokenizer& tok = sample_tokenizer();
  const Rng rng(11);
  uint64_t draw = 0;
  for (int trial = 0; trial < 300; ++trial) {
    std::string s(rng.below(draw++, 400), '\0');
    for (char& c : s) c = static_cast<char>(rng.below(draw++, 256));
    const std::vector<int32_t> ids = tok.encode(s);
    ASSERT_EQ(tok.decode(ids), s) << "trial " << trial;
  }
}

TEST(TokenizerEncode, RoundTripsRandomUtf8AndText) {
  const Tokenizer& tok = sample_tokenizer();
  const char* pieces[] = {"the",
                          " ",
                          "  ",
                          "\n",
                          "\t",
                          "'s",
                          "'ll",
                          "fox",
                          "\xC3\xA9",
                          "\xE6\x97\xA5",
                          "\xF0\x9F\x98\x80",
                          "\xC2\xA0",
                          "123",
                          "!?",
                          "<|endoftext|>",
                          "<|endof",
                          "\xE2\x80\x9C"};
  const Rng rng(12);
  uint64_t draw = 0;
  for (int trial = 0; trial < 300; ++trial) {
    std::string s;
    const uint64_t n = rng.below(draw++, 60);
    for (uint64_t k = 0; k < n; ++k) s += pieces[rng.below(draw++, std::size(pieces))];
    ASSERT_EQ(tok.decode(tok.encode(s)), s) << "trial " << trial;
  }
  const std::string text = sample_text();
  const std::vector<int32_t> ids = tok.encode(text);
  EXPECT_EQ(tok.decode(ids), text);
  EXPECT_LT(ids.size() * 2, text.size());  // the merges compress the text they were learned on
}

TEST(TokenizerEncode, SpecialTokensInTheText) {
  BpeTrainOptions opts;
  opts.special_tokens = {"<|end|>", "<|end|>!", "<pad>"};
  opts.eos_token = "<|end|>";
  const Tokenizer tok = Tokenizer::train_bpe(sample_text(), 400, opts);
  EXPECT_EQ(tok.eos_id(), 0);
  const int32_t q = tok.token_id("q");
  // The longest added token wins; partial ones are plain text.
  EXPECT_EQ(tok.encode("q<|end|>!q<|end|>q<pad>"), (std::vector<int32_t>{q, 1, q, 0, q, 2}));
  const std::vector<int32_t> partial = tok.encode("<|end|");
  for (int32_t id : partial) EXPECT_GE(id, 3);
  EXPECT_EQ(tok.decode(tok.encode("a<pad><pad>b<|end|>")), "a<pad><pad>b<|end|>");
}

// Naive BPE on raw-byte symbols: repeatedly merge the lowest-ranked adjacent pair, leftmost first.
using MergeRanks = std::map<std::pair<std::string, std::string>, int32_t>;

MergeRanks merge_ranks(const Tokenizer& tok) {
  MergeRanks rank;
  for (int32_t r = 0; r < tok.num_merges(); ++r) rank.emplace(tok.merge(r), r);
  return rank;
}

std::vector<int32_t> reference_bpe(const Tokenizer& tok, const MergeRanks& rank, const std::string& word) {
  std::vector<std::string> sym;
  for (char c : word) sym.emplace_back(1, c);
  for (;;) {
    int32_t best = -1, best_rank = INT32_MAX;
    for (size_t i = 0; i + 1 < sym.size(); ++i) {
      auto it = rank.find({sym[i], sym[i + 1]});
      if (it != rank.end() && it->second < best_rank) best = static_cast<int32_t>(i), best_rank = it->second;
    }
    if (best < 0) break;
    sym[best] += sym[best + 1];
    sym.erase(sym.begin() + best + 1);
  }
  std::vector<int32_t> ids;
  for (const auto& s : sym) ids.push_back(tok.token_id(s));
  return ids;
}

TEST(TokenizerEncode, ShortAndLongWordsMatchANaiveReference) {
  BpeTrainOptions opts;
  opts.min_frequency = 1;
  std::string corpus;
  const Rng rng(13);
  uint64_t draw = 0;
  for (int w = 0; w < 400; ++w) {
    corpus += ' ';
    for (uint64_t k = rng.below(draw++, 12) + 1; k > 0; --k)
      corpus += static_cast<char>('a' + rng.below(draw++, 3));
  }
  const Tokenizer tok = Tokenizer::train_bpe(corpus, 400, opts);
  ASSERT_GT(tok.num_merges(), 50);
  const MergeRanks ranks = merge_ranks(tok);
  for (int trial = 0; trial < 60; ++trial) {
    // Lengths up to 700 exercise both the in-array path (<= 256 bytes) and the heap path.
    std::string word;
    for (uint64_t k = rng.below(draw++, 700) + 1; k > 0; --k)
      word += static_cast<char>('a' + rng.below(draw++, 3));
    ASSERT_EQ(tok.encode(word), reference_bpe(tok, ranks, word)) << "length " << word.size();
  }
}

TEST(TokenizerEncode, BadIdsAndEmptyTokenizer) {
  const Tokenizer& tok = sample_tokenizer();
  expect_error([&] { tok.decode({1, tok.vocab_size()}); }, {cat("id ", tok.vocab_size()), "position 1"});
  expect_error([&] { tok.decode({-1}); }, {"id -1"});
  expect_error([&] { tok.token_bytes(9999); }, {"9999"});
  EXPECT_EQ(tok.token_id("no such token here"), -1);
  const Tokenizer empty;
  EXPECT_EQ(empty.vocab_size(), 0);
  EXPECT_TRUE(empty.encode("").empty());
  expect_error([&] { empty.encode("a"); }, {"byte 0x61", "no token"});
}

// ---------------------------------------------------------------------------------------------
// tokenizer.json

using TokenizerFileTest = train::testing::TempDirTest;

TEST_F(TokenizerFileTest, SaveThenLoadEncodesTheSame) {
  const Tokenizer& tok = sample_tokenizer();
  const std::string path = file("tokenizer.json");
  tok.save(path);
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
  const Tokenizer back = Tokenizer::load(path);
  ASSERT_EQ(back.vocab_size(), tok.vocab_size());
  EXPECT_EQ(back.eos_id(), tok.eos_id());
  ASSERT_EQ(back.num_merges(), tok.num_merges());
  for (int32_t id = 0; id < tok.vocab_size(); ++id) ASSERT_EQ(back.token_bytes(id), tok.token_bytes(id));
  const std::string text = sample_text() + "<|endoftext|> tail \xFF\xFE";
  EXPECT_EQ(back.encode(text), tok.encode(text));
  // Saving again writes the same file.
  back.save(file("again.json"));
  std::ifstream a(path), b(file("again.json"));
  const std::string sa((std::istreambuf_iterator<char>(a)), {}), sb((std::istreambuf_iterator<char>(b)), {});
  EXPECT_EQ(sa, sb);
  EXPECT_NE(sa.find("\"\xC4\xA0t\""), std::string::npos) << "vocab keys are in GPT-2's printable form";
}

// A hand-written file: vocab {a, b, Ġ, ab, Ġab, c, <|endoftext|>}, merges "a b", "Ġ ab".
std::string minimal_json(const std::string& merges, const std::string& extra_model = "") {
  return std::string(
             R"({"version": "1.0", "added_tokens": [{"id": 6, "content": "<|endoftext|>", "special": true}],
  "normalizer": null,
  "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
  "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
  "model": {"type": "BPE", )") +
         extra_model +
         R"("vocab": {"a": 0, "b": 1, "\u0120": 2, "ab": 3, "\u0120ab": 4, "c": 5, "<|endoftext|>": 6},
  "merges": )" +
         merges + "}}";
}

TEST_F(TokenizerFileTest, LoadsAHandWrittenFile) {
  for (const std::string merges : {R"(["a b", "Ġ ab"])", R"([["a", "b"], ["Ġ", "ab"]])"}) {
    const Tokenizer tok = Tokenizer::load(write_text("t.json", minimal_json(merges)));
    ASSERT_EQ(tok.vocab_size(), 7);
    EXPECT_EQ(tok.eos_id(), 6);
    EXPECT_EQ(tok.token_bytes(2), " ");
    EXPECT_EQ(tok.token_bytes(4), " ab");
    EXPECT_EQ(tok.encode("ab ab"), (std::vector<int32_t>{3, 4}));
    EXPECT_EQ(tok.encode("ab c<|endoftext|>"), (std::vector<int32_t>{3, 2, 5, 6}));
    EXPECT_EQ(tok.encode("ba"), (std::vector<int32_t>{1, 0}));
    // 'x' has no token: this vocabulary is not byte-complete.
    expect_error([&] { tok.encode("abx"); }, {"byte 0x78"});
  }
  // ByteLevel add_prefix_space: each piece of text between added tokens gets a leading space.
  std::string prefixed = minimal_json(R"(["a b", "Ġ ab"])");
  prefixed.replace(prefixed.find("\"add_prefix_space\": false"), 25, "\"add_prefix_space\": true");
  const Tokenizer tok = Tokenizer::load(write_text("p.json", prefixed));
  EXPECT_EQ(tok.encode("ab<|endoftext|>ab"), (std::vector<int32_t>{4, 6, 4}));
  EXPECT_EQ(tok.encode(" ab"), (std::vector<int32_t>{4}));
  tok.save(file("p2.json"));
  EXPECT_EQ(Tokenizer::load(file("p2.json")).encode("ab"), (std::vector<int32_t>{4}));
}

TEST_F(TokenizerFileTest, BadFilesAreErrors) {
  const std::string missing = file("missing.json");
  expect_error([&] { Tokenizer::load(missing); }, {missing, "no such file"});
  const std::string notjson = write_text("bad.json", "{ not json");
  expect_error([&] { Tokenizer::load(notjson); }, {notjson, "not valid JSON"});
  const std::string nomodel = write_text("nomodel.json", R"({"version": "1.0", "added_tokens": []})");
  expect_error([&] { Tokenizer::load(nomodel); }, {nomodel, "no 'model'"});

  struct Case {
    std::string json;
    std::vector<std::string> parts;
  };
  std::string wordpiece = minimal_json(R"(["a b"])");
  wordpiece.replace(wordpiece.find("\"BPE\""), 5, "\"WordPiece\"");
  std::string nfc = minimal_json(R"(["a b"])");
  nfc.replace(nfc.find("\"normalizer\": null"), 18, R"("normalizer": {"type": "NFKC"})");
  std::string whitespace = minimal_json(R"(["a b"])");
  whitespace.replace(whitespace.find("\"ByteLevel\""), 11, "\"Whitespace\"");
  std::string hole = minimal_json(R"(["a b"])");
  hole.replace(hole.find("\"c\": 5"), 6, "\"c\": 9");
  const std::vector<Case> cases = {
      {wordpiece, {"model.type 'WordPiece'", "only 'BPE'"}},
      {nfc, {"normalizer: type 'NFKC'"}},
      {whitespace, {"pre_tokenizer: type 'Whitespace'"}},
      {hole, {"no token has id 5"}},
      {minimal_json(R"(["ab"])"), {"model.merges[0] 'ab'", "one space"}},
      {minimal_json(R"(["a b c"])"), {"model.merges[0] 'a b c'"}},
      {minimal_json(R"(["a b", ["a"]])"), {"model.merges[1]"}},
      {minimal_json(R"([[1, 2]])"), {"model.merges[0]"}},
      {minimal_json(R"(["a z"])"), {"model.merges[0]", "token 'z' is not in model.vocab"}},
      {minimal_json(R"(["b c"])"), {"merged token 'bc'"}},
      {minimal_json(R"("a b")"), {"model.merges is not an array"}},
      {minimal_json(R"(["a b"])", R"("dropout": 0.1, )"), {"model.dropout"}},
      {minimal_json(R"(["a b"])", R"("continuing_subword_prefix": "##", )"), {"continuing_subword_prefix"}},
      {minimal_json(R"(["a b"])", R"("byte_fallback": true, )"), {"byte_fallback"}},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE("case " + std::to_string(i));
    const std::string p = write_text("case" + std::to_string(i) + ".json", cases[i].json);
    std::vector<std::string> parts = cases[i].parts;
    parts.push_back(p);
    expect_error([&] { Tokenizer::load(p); }, parts);
  }
}

// Optional: the Python `tokenizers` library loads the saved file and encodes alike. Runs when
// /usr/bin/python3 (or the interpreter named by MOE_TEST_PYTHON) can import it.
TEST_F(TokenizerFileTest, PythonTokenizersAgreesWhenInstalled) {
  const char* env = std::getenv("MOE_TEST_PYTHON");
  const std::string python = env && *env ? env : "/usr/bin/python3";
  if (std::system((python + " -c 'import tokenizers' >/dev/null 2>&1").c_str()) != 0)
    GTEST_SKIP() << "the Python `tokenizers` package is not importable by " << python;
  const Tokenizer& tok = sample_tokenizer();
  const std::string path = file("tokenizer.json");
  tok.save(path);
  const std::string text =
      sample_text() + "The fox, isn't it? 12345  spaces\n\nnew para\xC3\xA9<|endoftext|>end ";
  const std::string input = write_text("input.txt", text);
  const std::string script = write_text("check.py",
                                        "import sys, tokenizers\n"
                                        "t = tokenizers.Tokenizer.from_file(sys.argv[1])\n"
                                        "s = open(sys.argv[2], encoding='utf-8').read()\n"
                                        "print(' '.join(map(str, t.encode(s).ids)))\n");
  const std::string out = file("ids.txt");
  ASSERT_EQ(std::system((python + " " + script + " " + path + " " + input + " > " + out).c_str()), 0);
  std::ifstream in(out);
  std::vector<int32_t> ids;
  for (int32_t v; in >> v;) ids.push_back(v);
  EXPECT_EQ(ids, tok.encode(text));
}

}  // namespace
}  // namespace moe::text
