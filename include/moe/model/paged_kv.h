// Paged KV cache and the batched multi-sequence forward pass.
//
// The cache is a pool of blocks; a block holds the keys and values of kv_block_size consecutive
// positions of one sequence, in every layer. A sequence owns a block table: position p lives in
// block table[p / block_size] at row p % block_size. Sequences of any lengths share the pool, and
// freeing a finished sequence's blocks makes them available to the next one at once.
//
//   k pool of layer l: (n_blocks, block_size, hkv, k_dim)     v pool: (n_blocks, block_size, hkv, v_dim)
//
// forward_batch() runs several sequences together: each brings some new tokens (a prefill chunk
// or one decode token) at its own start position. Every linear layer and every MoE layer runs once
// over all the batch's tokens; attention runs per (sequence, query head) over that sequence's
// cached positions. Each query row's attention is computed on its own, keys in position order, so
// a sequence's results do not depend on the rest of the batch or on how its prompt was chunked
// (given kernels whose rows are independent, which the CPU GEMMs and token-choice dropless MoE
// routing are).
#pragma once

#include <cstdint>
#include <vector>

#include "moe/core/tensor.h"
#include "moe/model/transformer.h"

namespace moe::model {

// Per-head key and value widths of a model's cache (k_dim and v_dim differ for latent attention).
struct KVDims {
  int64_t layers = 0, hkv = 0, k_dim = 0, v_dim = 0;
};
KVDims kv_dims(const ModelConfig& c);

class PagedKVCache {
 public:
  PagedKVCache() = default;
  // Throws moe::Error on block_size < 1 or n_blocks < 1. The pools are allocated but not cleared.
  PagedKVCache(const KVDims& dims, DType dtype, int64_t block_size, int64_t n_blocks);

  const KVDims& dims() const { return dims_; }
  DType dtype() const { return dtype_; }
  int64_t block_size() const { return block_size_; }
  int64_t n_blocks() const { return n_blocks_; }
  int64_t free_blocks() const { return static_cast<int64_t>(free_.size()); }
  int64_t used_blocks() const { return n_blocks_ - free_blocks(); }
  int64_t blocks_for(int64_t positions) const { return (positions + block_size_ - 1) / block_size_; }

  // Takes n blocks (lowest ids first) and appends them to table; throws moe::Error, changing
  // nothing, when fewer than n are free.
  void allocate(std::vector<int32_t>& table, int64_t n);
  // Returns every block of table to the pool and clears it. Throws on an id that is not in use.
  void free(std::vector<int32_t>& table);

  Tensor& k(int64_t layer) { return k_[static_cast<size_t>(layer)]; }  // (n_blocks, bs, hkv, k_dim)
  Tensor& v(int64_t layer) { return v_[static_cast<size_t>(layer)]; }  // (n_blocks, bs, hkv, v_dim)

 private:
  KVDims dims_;
  DType dtype_ = DType::F32;
  int64_t block_size_ = 0, n_blocks_ = 0;
  std::vector<Tensor> k_, v_;
  std::vector<int32_t> free_;    // free block ids, highest first (allocation pops the lowest)
  std::vector<uint8_t> in_use_;  // per block
};

// One sequence of a batch: n new tokens at positions start.. start + n - 1; positions < start are
// already in the cache. block_table must cover start + n positions.
struct BatchSeq {
  const int32_t* tokens = nullptr;
  int64_t n = 0;
  int64_t start = 0;
  const std::vector<int32_t>* block_table = nullptr;
  bool want_logits = false;  // return the logits of this sequence's last new token
};

struct BatchResult {
  Tensor logits;                    // (number of sequences with want_logits, V), in batch order
  std::vector<int64_t> moe_layers;  // layer index of each entry of stats
  std::vector<MoEStats> stats;      // per MoE layer, over all the batch's tokens
};

// Writes the new tokens' keys and values into the cache and returns the requested logits. The
// cache must have the model's kv_dims and dtype. Throws moe::Error on a bad sequence (no tokens,
// a token id outside the vocabulary, a position beyond the context or the block table).
BatchResult forward_batch(const Transformer& m, PagedKVCache& cache, const std::vector<BatchSeq>& seqs);

// Causal attention of one batch over the paged cache of one layer (the cache already holds the new
// rows). q (N, hq·k_dim) rows of all sequences, in batch order; out (N, hq·v_dim). Parallel over
// (sequence, query head); each query row: softmax over keys 0..its position, in order.
// scale 0 means 1/sqrt(k_dim).
template <typename T>
void paged_attention(const std::vector<BatchSeq>& seqs, const T* q, const T* k_pool, const T* v_pool,
                     int64_t block_size, int64_t hq, int64_t hkv, int64_t k_dim, int64_t v_dim, double scale,
                     T* out);

}  // namespace moe::model
