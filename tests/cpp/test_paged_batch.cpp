// The paged KV cache and the batched multi-sequence forward against the plain forward
// (Transformer::logits) and the contiguous KV-cache decoder (Transformer::decode).
#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <cstring>

#include "model_testutil.h"
#include "moe/core/error.h"
#include "moe/core/rng.h"
#include "moe/model/paged_kv.h"
#include "moe/model/transformer.h"

using namespace moe;
using namespace moe::model;

namespace {

using moe::model::testing::random_tokens;
ModelConfig tiny(Arch arch) { return moe::model::testing::tiny_config(arch); }

// Runs the sequences through forward_batch in chunks (sequence s's chunk at step k has
// 1 + (s + k) % 4 tokens; finished sequences drop out), asking for the logits of every chunk's last
// token. Returns, per sequence, the logits rows of those positions (position -> V values).
std::vector<std::vector<std::pair<int64_t, std::vector<double>>>> run_chunked(
    const Transformer& m, const std::vector<std::vector<int32_t>>& seqs, int64_t block_size) {
  const ModelConfig& c = m.config();
  int64_t total = 0;
  for (const auto& s : seqs) total += (static_cast<int64_t>(s.size()) + block_size - 1) / block_size;
  PagedKVCache cache(kv_dims(c), m.dtype(), block_size, total + 3);
  // Block tables interleaved across sequences, so no sequence's blocks are contiguous.
  std::vector<std::vector<int32_t>> tables(seqs.size());
  for (bool more = true; more;) {
    more = false;
    for (size_t s = 0; s < seqs.size(); ++s)
      if (static_cast<int64_t>(tables[s].size()) * block_size < static_cast<int64_t>(seqs[s].size()))
        cache.allocate(tables[s], 1), more = true;
  }
  std::vector<std::vector<std::pair<int64_t, std::vector<double>>>> out(seqs.size());
  std::vector<int64_t> done(seqs.size(), 0);
  for (int64_t step = 0;; ++step) {
    std::vector<BatchSeq> batch;
    std::vector<size_t> who;
    for (size_t s = 0; s < seqs.size(); ++s) {
      const int64_t len = static_cast<int64_t>(seqs[s].size());
      if (done[s] >= len) continue;
      BatchSeq b;
      b.n = std::min<int64_t>(1 + (static_cast<int64_t>(s) + step) % 4, len - done[s]);
      b.start = done[s];
      b.tokens = seqs[s].data() + done[s];
      b.block_table = &tables[s];
      b.want_logits = (s + static_cast<size_t>(step)) % 3 != 1 || b.start + b.n == len;  // skip some rows
      batch.push_back(b), who.push_back(s);
    }
    if (batch.empty()) break;
    const BatchResult r = forward_batch(m, cache, batch);
    int64_t row = 0;
    for (size_t i = 0; i < batch.size(); ++i) {
      const size_t s = who[i];
      done[s] += batch[i].n;
      if (!batch[i].want_logits) continue;
      std::vector<double> v(static_cast<size_t>(c.vocab_size));
      for (int64_t j = 0; j < c.vocab_size; ++j) v[j] = r.logits.get(row * c.vocab_size + j);
      out[s].push_back({done[s] - 1, v});
      ++row;
    }
    EXPECT_EQ(row, r.logits.shape()[0]);
    int64_t n_moe = 0;
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) n_moe += c.is_moe_layer(l);
    EXPECT_EQ(static_cast<int64_t>(r.stats.size()), n_moe);
  }
  return out;
}

// max that keeps a NaN (so that NaN never passes a bound).
double worst(double acc, double d) { return std::isnan(d) || d > acc ? d : acc; }

const std::vector<int64_t> kLengths = {1, 5, 13, 20};

std::vector<std::vector<int32_t>> make_seqs(int64_t V) {
  std::vector<std::vector<int32_t>> seqs;
  for (size_t i = 0; i < kLengths.size(); ++i) seqs.push_back(random_tokens(kLengths[i], V, 100 + i));
  return seqs;
}

}  // namespace

TEST(PagedKV, AllocateFreeAndExhaustion) {
  const ModelConfig c = tiny(Arch::Mixtral);
  PagedKVCache cache(kv_dims(c), DType::F32, 4, 5);
  EXPECT_EQ(cache.blocks_for(9), 3);
  std::vector<int32_t> a, b;
  cache.allocate(a, 3);
  EXPECT_EQ(a, (std::vector<int32_t>{0, 1, 2}));
  EXPECT_EQ(cache.free_blocks(), 2);
  EXPECT_THROW(cache.allocate(b, 3), Error);  // only 2 free: nothing taken
  EXPECT_EQ(cache.free_blocks(), 2);
  EXPECT_TRUE(b.empty());
  cache.allocate(b, 2);
  cache.free(a);
  EXPECT_TRUE(a.empty());
  EXPECT_EQ(cache.used_blocks(), 2);
  std::vector<int32_t> bogus = {0};
  EXPECT_THROW(cache.free(bogus), Error);  // block 0 is free
  EXPECT_THROW(PagedKVCache(kv_dims(c), DType::F32, 0, 5), Error);
  EXPECT_THROW(PagedKVCache(kv_dims(c), DType::F32, 4, 0), Error);
}

// f64: the batched paged forward, in chunks, equals the full forward of each sequence alone.
TEST(PagedBatch, F64MatchesFullForwardEveryArchAndBlockSize) {
  for (Arch a : {Arch::Mixtral, Arch::Qwen2Moe, Arch::Qwen3Moe, Arch::Olmoe, Arch::DeepseekV3}) {
    const ModelConfig cfg = tiny(a);
    Transformer m(cfg, DType::F64);
    m.init_params(11);
    const auto seqs = make_seqs(cfg.vocab_size);
    for (int64_t bs : {1, 3, 16}) {
      const auto got = run_chunked(m, seqs, bs);
      for (size_t s = 0; s < seqs.size(); ++s) {
        const int64_t S = static_cast<int64_t>(seqs[s].size());
        const Tensor full = m.logits(seqs[s].data(), 1, S);  // (S, V)
        ASSERT_FALSE(got[s].empty());
        for (const auto& [p, v] : got[s])
          for (int64_t j = 0; j < cfg.vocab_size; ++j)
            ASSERT_NEAR(v[j], full.get(p * cfg.vocab_size + j), 1e-11 * (1 + std::fabs(v[j])))
                << arch_name(a) << " block " << bs << " seq " << s << " pos " << p;
      }
    }
  }
}

// f64: a decode step of the batched forward equals Transformer::decode on a contiguous cache.
TEST(PagedBatch, F64MatchesContiguousDecode) {
  const ModelConfig cfg = tiny(Arch::Qwen3Moe);
  Transformer m(cfg, DType::F64);
  m.init_params(5);
  const std::vector<int32_t> tok = random_tokens(10, cfg.vocab_size, 9);
  KVCache kc = m.new_cache(16);
  Tensor ref = m.decode(kc, tok.data(), 7);
  PagedKVCache pc(kv_dims(cfg), DType::F64, 3, 4);
  std::vector<int32_t> table;
  pc.allocate(table, 4);
  BatchSeq b{tok.data(), 7, 0, &table, true};
  BatchResult r = forward_batch(m, pc, {b});
  for (int64_t t = 7; t <= 10; ++t) {
    for (int64_t j = 0; j < cfg.vocab_size; ++j) ASSERT_NEAR(r.logits.get(j), ref.get(j), 1e-12) << "t " << t;
    if (t == 10) break;
    ref = m.decode(kc, tok.data() + t, 1);
    r = forward_batch(m, pc, {BatchSeq{tok.data() + t, 1, t, &table, true}});
  }
}

// f32: error against the f64 model with the same weights is at most twice that of the plain f32
// forward, plus a few roundings of the largest logit.
TEST(PagedBatch, F32WithinTwiceThePlainForwardError) {
  const ModelConfig cfg = tiny(Arch::Mixtral);
  Transformer m32(cfg, DType::F32);
  m32.init_params(21);
  Transformer m64(cfg, DType::F64);
  m64.load_hf_state_dict(m32.hf_state_dict());
  const auto seqs = make_seqs(cfg.vocab_size);
  for (int64_t bs : {1, 3, 16}) {
    const auto got = run_chunked(m32, seqs, bs);
    double err_paged = 0, err_plain = 0, scale = 0;
    for (size_t s = 0; s < seqs.size(); ++s) {
      const int64_t S = static_cast<int64_t>(seqs[s].size());
      const Tensor t64 = m64.logits(seqs[s].data(), 1, S), t32 = m32.logits(seqs[s].data(), 1, S);
      for (int64_t i = 0; i < t64.numel(); ++i) {
        err_plain = worst(err_plain, std::fabs(t32.get(i) - t64.get(i)));
        scale = std::max(scale, std::fabs(t64.get(i)));
      }
      for (const auto& [p, v] : got[s])
        for (int64_t j = 0; j < cfg.vocab_size; ++j)
          err_paged = worst(err_paged, std::fabs(v[j] - t64.get(p * cfg.vocab_size + j)));
    }
    ASSERT_TRUE(std::isfinite(err_plain));
    EXPECT_LE(err_paged, 2 * err_plain + 8 * FLT_EPSILON * scale) << "block " << bs;
  }
}

// A sequence's f32 logits are bit-identical whether it runs alone or in a batch with others, and
// however its prompt is chunked (the engine's greedy outputs rely on this).
TEST(PagedBatch, F32RowsDoNotDependOnTheBatch) {
  const ModelConfig cfg = tiny(Arch::Qwen2Moe);
  Transformer m(cfg, DType::F32);
  m.init_params(4);
  const auto seqs = make_seqs(cfg.vocab_size);
  const auto together = run_chunked(m, seqs, 3);
  for (size_t s = 0; s < seqs.size(); ++s) {
    PagedKVCache cache(kv_dims(cfg), DType::F32, 3, 8);
    std::vector<int32_t> table;
    cache.allocate(table, cache.blocks_for(static_cast<int64_t>(seqs[s].size())));
    const int64_t S = static_cast<int64_t>(seqs[s].size());
    const BatchResult alone = forward_batch(m, cache, {BatchSeq{seqs[s].data(), S, 0, &table, true}});
    const auto& [p, v] = together[s].back();
    ASSERT_EQ(p, S - 1);
    for (int64_t j = 0; j < cfg.vocab_size; ++j)
      EXPECT_EQ(static_cast<float>(v[j]), alone.logits.data<float>()[j]) << "seq " << s << " logit " << j;
  }
}

TEST(PagedBatch, BadSequencesAreClearErrors) {
  const ModelConfig cfg = tiny(Arch::Mixtral);
  Transformer m(cfg, DType::F32);
  m.init_params(1);
  PagedKVCache cache(kv_dims(cfg), DType::F32, 4, 4);
  std::vector<int32_t> table;
  cache.allocate(table, 1);
  const std::vector<int32_t> tok = {1, 2, 3, 4, 5};
  EXPECT_THROW(forward_batch(m, cache, {}), Error);
  EXPECT_THROW(forward_batch(m, cache, {BatchSeq{tok.data(), 5, 0, &table, true}}),
               Error);  // table too short
  EXPECT_THROW(forward_batch(m, cache, {BatchSeq{tok.data(), 0, 0, &table, true}}), Error);  // no tokens
  const std::vector<int32_t> bad = {1, 99};
  EXPECT_THROW(forward_batch(m, cache, {BatchSeq{bad.data(), 2, 0, &table, true}}), Error);  // id >= V
  PagedKVCache other(kv_dims(cfg), DType::F64, 4, 4);
  EXPECT_THROW(forward_batch(m, other, {BatchSeq{tok.data(), 2, 0, &table, true}}), Error);  // dtype
  try {
    forward_batch(m, cache, {BatchSeq{tok.data(), 5, 0, &table, true}});
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("block table"), std::string::npos) << e.what();
  }
}
