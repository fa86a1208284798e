// Token shards, the batch sampler, corpora and unigram baselines: round trips in both dtypes, every
// kind of bad shard, sampler determinism, coverage, epoch wrap and exact resume.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "moe/text/tokenizer.h"
#include "moe/train/data.h"
#include "train_testutil.h"

namespace moe::train {
namespace {

namespace fs = std::filesystem;
using testing::expect_error;

using DataShardTest = testing::TempDirTest;

std::vector<int32_t> iota_tokens(int32_t n) {
  std::vector<int32_t> v(static_cast<size_t>(n));
  for (int32_t i = 0; i < n; ++i) v[i] = i;
  return v;
}

TEST_F(DataShardTest, WritesAndReadsBothDtypes) {
  const std::vector<int32_t> small = {0, 1, 65535, 7, 42};
  write_shard(file("u16.bin"), small, 65536);
  EXPECT_FALSE(fs::exists(file("u16.bin.tmp")));
  EXPECT_EQ(fs::file_size(file("u16.bin")), kShardHeaderBytes + 2 * small.size());
  const TokenShard a(file("u16.bin"));
  EXPECT_EQ(a.dtype_bytes(), 2);
  EXPECT_EQ(a.size(), 5);
  EXPECT_EQ(a.vocab_size(), 65536);
  EXPECT_EQ(a.to_vector(), small);
  EXPECT_EQ(a[2], 65535);

  const std::vector<int32_t> big = {0, 65536, 69999, 3};
  write_shard(file("u32.bin"), big, 70000);
  TokenShard b(file("u32.bin"));
  EXPECT_EQ(b.dtype_bytes(), 4);
  EXPECT_EQ(b.to_vector(), big);
  std::vector<int32_t> part(2);
  b.read(1, 2, part.data());
  EXPECT_EQ(part, (std::vector<int32_t>{65536, 69999}));
  expect_error([&] { b.at(4); }, {file("u32.bin"), "index 4"});
  expect_error([&] { b.read(3, 2, part.data()); }, {"[3, 5)"});

  // Moves hand the mapping over.
  TokenShard moved = std::move(b);
  EXPECT_EQ(moved.at(1), 65536);
  EXPECT_EQ(b.size(), 0);  // NOLINT(bugprone-use-after-move): a moved-from shard is empty

  write_shard(file("empty.bin"), {}, 10);
  EXPECT_EQ(TokenShard(file("empty.bin")).size(), 0);
}

TEST_F(DataShardTest, BadTokensAreNotWritten) {
  expect_error([&] { write_shard(file("x.bin"), {1, 10}, 10); }, {file("x.bin"), "token 10 at position 1"});
  expect_error([&] { write_shard(file("x.bin"), {-1}, 10); }, {"token -1"});
  expect_error([&] { write_shard(file("x.bin"), {0}, 0); }, {"vocab_size 0"});
  EXPECT_FALSE(fs::exists(file("x.bin")));
}

TEST_F(DataShardTest, TruncatedOrForeignFilesAreErrors) {
  const std::string p = file("t.bin");
  write_shard(p, iota_tokens(100), 1000);
  fs::resize_file(p, kShardHeaderBytes + 150);  // 100 u16 tokens need 200 bytes
  expect_error([&] { TokenShard s(p); }, {p, "truncated", "expected 232 bytes", "got 182"});

  write_shard(p, iota_tokens(100), 1000);
  fs::resize_file(p, kShardHeaderBytes + 202);
  expect_error([&] { TokenShard s(p); }, {p, "expected 232", "got 234"});

  fs::resize_file(p, 10);
  expect_error([&] { TokenShard s(p); }, {p, "truncated", "32-byte header", "got 10"});

  write_shard(p, iota_tokens(10), 1000);
  {
    std::fstream f(p, std::ios::in | std::ios::out | std::ios::binary);
    f.write("NOTATOK1", 8);
  }
  expect_error([&] { TokenShard s(p); }, {p, "bad magic"});

  write_shard(p, iota_tokens(10), 1000);
  {
    std::fstream f(p, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(12);
    const uint32_t dtype = 3;
    f.write(reinterpret_cast<const char*>(&dtype), 4);
  }
  expect_error([&] { TokenShard s(p); }, {p, "dtype 3"});

  expect_error([&] { TokenShard s(file("none.bin")); }, {file("none.bin"), "cannot open"});
}

// ---------------------------------------------------------------------------------------------
// BatchSampler. Shards hold 0, 1, 2, ... so a token's value is its position.

using DataSamplerTest = testing::TempDirTest;

void expect_windows_valid(const std::vector<int32_t>& in, const std::vector<int32_t>& tg, int64_t B,
                          int64_t S, int64_t N) {
  ASSERT_EQ(in.size(), static_cast<size_t>(B * S));
  for (int64_t b = 0; b < B; ++b) {
    const int32_t start = in[b * S];
    EXPECT_GE(start, 0);
    EXPECT_LE(start + S, N - 1) << "window " << b << " runs past the shard";
    for (int64_t j = 0; j < S; ++j) {
      ASSERT_EQ(in[b * S + j], start + j);
      ASSERT_EQ(tg[b * S + j], start + j + 1);
    }
  }
}

TEST_F(DataSamplerTest, WindowsLieInsideTheShardAndCoverAnEpoch) {
  const int32_t N = 1000;
  write_shard(file("s.bin"), iota_tokens(N), N);
  const TokenShard shard(file("s.bin"));
  SamplerOptions o;
  o.batch_size = 3;
  o.seq_len = 16;
  o.seed = 5;
  BatchSampler sampler(shard, o);
  const int64_t W = sampler.windows_per_epoch();
  EXPECT_EQ(W, (N - 1 - 16 - 15) / 16 + 1);
  for (uint64_t epoch = 0; epoch < 3; ++epoch) {
    std::set<int64_t> starts;
    for (int64_t k = 0; k < W; ++k) starts.insert(sampler.window_start(epoch, k));
    ASSERT_EQ(static_cast<int64_t>(starts.size()), W);
    const int64_t offset = *starts.begin();
    EXPECT_LT(offset, 16);
    for (int64_t s : starts) EXPECT_EQ((s - offset) % 16, 0);
    EXPECT_LE(*starts.rbegin() + 16, N - 1);
  }
  std::vector<int32_t> in, tg;
  for (int step = 0; step < 3 * W; ++step) {
    sampler.next(in, tg);
    expect_windows_valid(in, tg, 3, 16, N);
  }
  EXPECT_EQ(sampler.position().epoch, 9u);  // 3 W batches of 3 windows = 9 epochs
  EXPECT_EQ(sampler.position().index, 0u);
}

TEST_F(DataSamplerTest, DeterministicPerSeedAndShuffledPerEpoch) {
  write_shard(file("s.bin"), iota_tokens(5000), 5000);
  const TokenShard shard(file("s.bin"));
  SamplerOptions o;
  o.batch_size = 4;
  o.seq_len = 32;
  o.seed = 1;
  BatchSampler a(shard, o), b(shard, o);
  o.seed = 2;
  BatchSampler c(shard, o);
  std::vector<int32_t> ia, ta, ib, tb, ic, tc;
  bool differs = false;
  for (int step = 0; step < 20; ++step) {
    a.next(ia, ta);
    b.next(ib, tb);
    c.next(ic, tc);
    ASSERT_EQ(ia, ib);
    ASSERT_EQ(ta, tb);
    differs |= ia != ic;
  }
  EXPECT_TRUE(differs) << "another seed gives other batches";
  std::vector<int64_t> e0, e1;
  for (int64_t k = 0; k < a.windows_per_epoch(); ++k)
    e0.push_back(a.window_start(0, k)), e1.push_back(a.window_start(1, k));
  EXPECT_NE(e0, e1) << "each epoch has its own order";
}

TEST_F(DataSamplerTest, ResumesExactlyFromASavedPosition) {
  write_shard(file("s.bin"), iota_tokens(3000), 3000);
  const TokenShard shard(file("s.bin"));
  SamplerOptions o;
  o.batch_size = 5;
  o.seq_len = 24;
  o.seed = 99;
  BatchSampler run(shard, o);
  std::vector<int32_t> in, tg;
  // Stop at positions inside epoch 0, at an epoch boundary crossing, and several epochs in.
  for (int stop : {7, 30, 71}) {
    BatchSampler first(shard, o);
    for (int s = 0; s < stop; ++s) first.next(in, tg);
    const SamplerPosition saved = first.position();
    std::vector<std::vector<int32_t>> expected;
    for (int s = 0; s < 12; ++s) {
      first.next(in, tg);
      expected.push_back(in);
      expected.push_back(tg);
    }
    BatchSampler resumed(shard, o);
    resumed.set_position(saved);
    EXPECT_EQ(resumed.position(), saved);
    for (int s = 0; s < 12; ++s) {
      resumed.next(in, tg);
      ASSERT_EQ(in, expected[2 * s]) << "stop " << stop << " step " << s;
      ASSERT_EQ(tg, expected[2 * s + 1]);
    }
  }
}

TEST_F(DataSamplerTest, BatchesWrapAcrossEpochs) {
  write_shard(file("s.bin"), iota_tokens(41), 41);  // no shuffle: windows 0, 8, 16, 24, 32 (5 per epoch)
  const TokenShard shard(file("s.bin"));
  SamplerOptions o;
  o.batch_size = 3;
  o.seq_len = 8;
  o.shuffle = false;
  BatchSampler s(shard, o);
  ASSERT_EQ(s.windows_per_epoch(), 5);
  std::vector<int32_t> in, tg;
  s.next(in, tg);
  EXPECT_EQ(in[0], 0);
  EXPECT_EQ(in[8], 8);
  EXPECT_EQ(in[16], 16);
  s.next(in, tg);  // windows 3, 4 of epoch 0, then window 0 of epoch 1
  EXPECT_EQ(in[0], 24);
  EXPECT_EQ(in[8], 32);
  EXPECT_EQ(tg[15], 40);  // the last target is the shard's last token
  EXPECT_EQ(in[16], 0);
  EXPECT_EQ(s.position(), (SamplerPosition{1, 1}));
  expect_windows_valid(in, tg, 3, 8, 41);
}

TEST_F(DataSamplerTest, TooShortShardsAndBadOptionsAreErrors) {
  write_shard(file("s.bin"), iota_tokens(16), 16);
  const TokenShard shard(file("s.bin"));
  SamplerOptions o;
  o.batch_size = 2;
  o.seq_len = 16;
  expect_error([&] { BatchSampler s(shard, o); }, {file("s.bin"), "16 tokens", "seq_len + 1 = 17"});
  o.seq_len = 15;  // exactly one window: 16 tokens
  BatchSampler one(shard, o);
  EXPECT_EQ(one.windows_per_epoch(), 1);
  std::vector<int32_t> in, tg;
  one.next(in, tg);
  expect_windows_valid(in, tg, 2, 15, 16);
  expect_error([&] { one.set_position({0, 1}); }, {"index 1"});
  o.batch_size = 0;
  expect_error([&] { BatchSampler s(shard, o); }, {"batch_size"});
  o.batch_size = 1;
  o.seq_len = 0;
  expect_error([&] { BatchSampler s(shard, o); }, {"seq_len"});
}

// ---------------------------------------------------------------------------------------------
// Unigram baselines, corpora and preparation

using DataCorpusTest = testing::TempDirTest;

TEST_F(DataCorpusTest, UnigramEntropyAndCrossEntropy) {
  write_shard(file("half.bin"), {0, 0, 1, 1}, 4);
  write_shard(file("uniform.bin"), {0, 1, 2, 3, 3, 2, 1, 0}, 4);
  write_shard(file("one.bin"), {2, 2, 2}, 4);
  const TokenShard half(file("half.bin")), uniform(file("uniform.bin")), one(file("one.bin"));
  EXPECT_NEAR(unigram_entropy(half), std::log(2.0), 1e-12);
  EXPECT_NEAR(unigram_entropy(uniform), std::log(4.0), 1e-12);
  EXPECT_EQ(unigram_entropy(one), 0.0);
  // Fit on {0,0,1,1} with alpha 1 over 4 tokens: p = (3/8, 3/8, 1/8, 1/8).
  const double expected =
      -(2 * std::log(3.0 / 8) + 2 * std::log(3.0 / 8) + 2 * std::log(1.0 / 8) + 2 * std::log(1.0 / 8)) / 8;
  EXPECT_NEAR(unigram_cross_entropy(half, uniform, 4), expected, 1e-12);
  write_shard(file("empty.bin"), {}, 4);
  expect_error([&] { unigram_entropy(TokenShard(file("empty.bin"))); }, {"empty"});
  expect_error([&] { unigram_cross_entropy(half, uniform, 3); }, {">= vocab_size 3"});
}

TEST_F(DataCorpusTest, ValidationSplitsAtAParagraph) {
  const std::string text = "first doc\n\nsecond doc\nstill second\n\nthird\n";
  // Half of 42 bytes: byte 21 lies in the second document; the next paragraph is "third".
  EXPECT_EQ(text.substr(validation_split(text, 0.5)), "third\n");
  EXPECT_EQ(validation_split(text, 0.0), text.size());
  EXPECT_EQ(text.substr(validation_split(text, 0.9)), "second doc\nstill second\n\nthird\n");
  // Without blank lines: the start of the next line. 30% of 8 bytes keeps 3: byte 5 -> "d\n".
  EXPECT_EQ(std::string("a\nb\nc\nd\n").substr(validation_split("a\nb\nc\nd\n", 0.3)), "d\n");
  expect_error([&] { validation_split(text, 1.0); }, {"val_fraction"});
}

TEST_F(DataCorpusTest, PrepareWritesTrainAndValidationShards) {
  std::string text;
  for (int i = 0; i < 200; ++i) text += "Fortune number " + std::to_string(i) + " says hello.\n\n";
  const text::Tokenizer tok = text::Tokenizer::train_bpe(text, 300);
  const PrepareResult r = prepare_shards(text, tok, file("train.bin"), file("val.bin"));
  const TokenShard train(file("train.bin")), val(file("val.bin"));
  EXPECT_EQ(r.train_tokens, train.size());
  EXPECT_EQ(r.val_tokens, val.size());
  EXPECT_EQ(r.train_bytes + r.val_bytes, static_cast<int64_t>(text.size()));
  EXPECT_NEAR(static_cast<double>(r.val_bytes) / static_cast<double>(text.size()), 0.02, 0.01);
  EXPECT_EQ(tok.decode(train.to_vector()) + tok.decode(val.to_vector()), text);
  EXPECT_EQ(tok.decode(val.to_vector()).substr(0, 15), "Fortune number ");
  EXPECT_EQ(train.vocab_size(), tok.vocab_size());
}

TEST_F(DataCorpusTest, PrepareEveryNthDocumentForValidation) {
  std::string text;
  for (int i = 0; i < 10; ++i) text += "doc " + std::to_string(i) + "\nline\n\n";
  const text::Tokenizer tok = text::Tokenizer::train_bpe(text, 300);
  PrepareOptions po;
  po.val_every = 4;
  prepare_shards(text, tok, file("train.bin"), file("val.bin"), po);
  EXPECT_EQ(tok.decode(TokenShard(file("val.bin")).to_vector()), "doc 3\nline\n\ndoc 7\nline\n\n");
  EXPECT_EQ(tok.decode(TokenShard(file("train.bin")).to_vector()).size() + 24, text.size());
  // One document only: the fraction split is used instead (2% of the text, at a line start).
  std::string lines;
  for (int i = 0; i < 100; ++i) lines += "line " + std::to_string(i) + "\n";
  prepare_shards(lines, tok, file("train.bin"), file("val.bin"), po);
  EXPECT_EQ(tok.decode(TokenShard(file("val.bin")).to_vector()), lines.substr(validation_split(lines, 0.02)));
}

TEST_F(DataCorpusTest, FortunesCorpusFromADirectory) {
  const std::string dir = file("fortunes");
  fs::create_directories(dir + "/off");
  for (int i = 0; i < 10; ++i) {
    const std::string name = cat("f", 9 - i);  // written out of order
    std::ofstream(dir + "/" + name) << name << " one\n%\n" << name << " two\nline 2\n%\n";
    std::ofstream(dir + "/" + name + ".dat") << "index";
    std::ofstream(dir + "/" + name + ".u8") << "index";
  }
  std::ofstream(dir + "/art") << "ascii art\n%\n";
  std::ofstream(dir + "/ascii-art") << "more art\n%\n";
  std::ofstream(dir + "/off/rude") << "not included\n%\n";
  std::ofstream(dir + "/zz") << "no trailing newline";
  const std::string text = fortunes_corpus(dir);
  std::string expected;
  for (int i = 0; i < 10; ++i) {
    const std::string name = cat("f", i);
    expected += name + " one\n\n" + name + " two\nline 2\n\n";
  }
  expected += "no trailing newline\n";
  EXPECT_EQ(text, expected);

  expect_error([&] { fortunes_corpus(file("nowhere")); }, {file("nowhere"), "`fortunes` package"});
  fs::create_directories(file("min"));
  std::ofstream(file("min") + "/fortunes") << "one\n%\n";
  expect_error([&] { fortunes_corpus(file("min")); }, {"only 1 fortune files", "`fortunes` package"});
}

TEST_F(DataCorpusTest, TextCorpusFromAFileOrADirectory) {
  write_text("b.txt", "second");
  write_text("a.txt", "first\n");
  EXPECT_EQ(read_text_corpus(file("a.txt")), "first\n");
  EXPECT_EQ(read_text_corpus(dir_.string()), "first\nsecond\n");
  expect_error([&] { read_text_corpus(file("none.txt")); }, {file("none.txt"), "no such file"});
}

TEST(DataCorpus, DebianFortunesWhenInstalled) {
  if (!fs::is_directory(kFortunesDir)) GTEST_SKIP() << "Debian's fortunes package is not installed";
  const std::string text = fortunes_corpus();
  EXPECT_GT(text.size(), 1'000'000u);
  EXPECT_EQ(text.find("\n%\n"), std::string::npos);
}

}  // namespace
}  // namespace moe::train
