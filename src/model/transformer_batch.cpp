// Paged KV cache and the batched multi-sequence forward pass (include/moe/model/paged_kv.h).
#include <algorithm>
#include <cmath>
#include <cstring>

#include "model/transformer_parts.h"
#include "moe/core/error.h"
#include "moe/core/parallel.h"
#include "moe/model/paged_kv.h"

namespace moe::model {

KVDims kv_dims(const ModelConfig& c) {
  // One key and one value per kv head; latent attention (deepseek_v3) caches the decompressed
  // per-head keys (qk_nope + qk_rope wide) and values (v_head_dim wide).
  KVDims d;
  d.layers = c.num_hidden_layers;
  d.hkv = c.num_key_value_heads;
  d.k_dim = c.qk_head_dim();
  d.v_dim = c.v_head_dim_or_default();
  return d;
}

PagedKVCache::PagedKVCache(const KVDims& dims, DType dtype, int64_t block_size, int64_t n_blocks)
    : dims_(dims), dtype_(dtype), block_size_(block_size), n_blocks_(n_blocks) {
  MOE_CHECK(block_size >= 1, "paged KV cache: block size must be >= 1, got ", block_size);
  MOE_CHECK(n_blocks >= 1 && n_blocks < (int64_t{1} << 31),
            "paged KV cache: the number of blocks must be in [1, 2^31), got ", n_blocks);
  MOE_CHECK(dims.layers >= 1 && dims.hkv >= 1 && dims.k_dim >= 1 && dims.v_dim >= 1,
            "paged KV cache: bad dimensions (layers ", dims.layers, ", hkv ", dims.hkv, ", k_dim ",
            dims.k_dim, ", v_dim ", dims.v_dim, ")");
  MOE_CHECK(dtype == DType::F32 || dtype == DType::F64, "paged KV cache: dtype must be f32 or f64, got ",
            dtype_name(dtype));
  for (int64_t l = 0; l < dims.layers; ++l) {
    k_.push_back(Tensor::empty({n_blocks, block_size, dims.hkv, dims.k_dim}, dtype, cat("kv_cache.k.", l)));
    v_.push_back(Tensor::empty({n_blocks, block_size, dims.hkv, dims.v_dim}, dtype, cat("kv_cache.v.", l)));
  }
  free_.resize(static_cast<size_t>(n_blocks));
  for (int64_t b = 0; b < n_blocks; ++b)
    free_[static_cast<size_t>(b)] = static_cast<int32_t>(n_blocks - 1 - b);
  in_use_.assign(static_cast<size_t>(n_blocks), 0);
}

void PagedKVCache::allocate(std::vector<int32_t>& table, int64_t n) {
  MOE_CHECK(n >= 0, "paged KV cache: cannot allocate ", n, " blocks");
  MOE_CHECK(n <= free_blocks(), "paged KV cache: out of blocks (", n, " wanted, ", free_blocks(), " of ",
            n_blocks_, " free)");
  for (int64_t i = 0; i < n; ++i) {
    const int32_t b = free_.back();
    free_.pop_back();
    in_use_[static_cast<size_t>(b)] = 1;
    table.push_back(b);
  }
}

void PagedKVCache::free(std::vector<int32_t>& table) {
  for (int32_t b : table)
    MOE_CHECK(b >= 0 && b < n_blocks_ && in_use_[static_cast<size_t>(b)], "paged KV cache: block ", b,
              " is not in use");
  for (int32_t b : table) {
    in_use_[static_cast<size_t>(b)] = 0;
    free_.push_back(b);
  }
  // Keep the lowest ids at the back so that allocation order does not depend on the free order.
  std::sort(free_.begin(), free_.end(), [](int32_t a, int32_t b) { return a > b; });
  table.clear();
}

template <typename T>
void paged_attention(const std::vector<BatchSeq>& seqs, const T* q, const T* k_pool, const T* v_pool,
                     int64_t block_size, int64_t hq, int64_t hkv, int64_t k_dim, int64_t v_dim, double scale,
                     T* out) {
  MOE_CHECK(hq >= 1 && hkv >= 1 && hq % hkv == 0, "paged_attention: hq (", hq,
            ") must be a multiple of hkv (", hkv, ")");
  const T sc = static_cast<T>(scale != 0 ? scale : 1.0 / std::sqrt(static_cast<double>(k_dim)));
  std::vector<int64_t> row0(seqs.size() + 1, 0);  // first row of each sequence in q / out
  for (size_t s = 0; s < seqs.size(); ++s) row0[s + 1] = row0[s] + seqs[s].n;
  const int64_t group = hq / hkv;
  const int64_t ldq = hq * k_dim, ldo = hq * v_dim;
  const int64_t kblock = block_size * hkv * k_dim, vblock = block_size * hkv * v_dim;  // elements per block
  parallel_items(static_cast<int64_t>(seqs.size()) * hq, [&](int64_t item) {
    const size_t s = static_cast<size_t>(item / hq);
    const int64_t h = item % hq, kvh = h / group;
    const BatchSeq& sq = seqs[s];
    const std::vector<int32_t>& table = *sq.block_table;
    thread_local std::vector<T> w;  // scores, then weights
    if (w.size() < static_cast<size_t>(sq.start + sq.n)) w.resize(static_cast<size_t>(sq.start + sq.n));
    for (int64_t i = 0; i < sq.n; ++i) {
      const int64_t r = row0[s] + i, nk = sq.start + i + 1;  // keys 0..start+i
      const T* qr = q + r * ldq + h * k_dim;
      T mx = -INFINITY;
      // Keys and values are visited in position order, block by block (no division per position).
      for (int64_t j = 0, b = 0, in = 0; j < nk; ++j, in = in + 1 == block_size ? (++b, 0) : in + 1) {
        const T* kr = k_pool + table[static_cast<size_t>(b)] * kblock + (in * hkv + kvh) * k_dim;
        T dot = 0;
        // (vector partial sums: the order is fixed by the build, the same for every row and batch)
#pragma omp simd reduction(+ : dot)
        for (int64_t c = 0; c < k_dim; ++c) dot += qr[c] * kr[c];
        w[static_cast<size_t>(j)] = dot * sc;
        mx = std::max(mx, w[static_cast<size_t>(j)]);
      }
      T l = 0;
      for (int64_t j = 0; j < nk; ++j)
        l += w[static_cast<size_t>(j)] = std::exp(w[static_cast<size_t>(j)] - mx);
      T* o = out + r * ldo + h * v_dim;
      std::fill(o, o + v_dim, T(0));
      for (int64_t j = 0, b = 0, in = 0; j < nk; ++j, in = in + 1 == block_size ? (++b, 0) : in + 1) {
        const T* vr = v_pool + table[static_cast<size_t>(b)] * vblock + (in * hkv + kvh) * v_dim;
        const T p = w[static_cast<size_t>(j)];
#pragma omp simd
        for (int64_t c = 0; c < v_dim; ++c) o[c] += p * vr[c];
      }
      const T inv = T(1) / l;
      for (int64_t c = 0; c < v_dim; ++c) o[c] *= inv;
    }
  });
}

template void paged_attention<float>(const std::vector<BatchSeq>&, const float*, const float*, const float*,
                                     int64_t, int64_t, int64_t, int64_t, int64_t, double, float*);
template void paged_attention<double>(const std::vector<BatchSeq>&, const double*, const double*,
                                      const double*, int64_t, int64_t, int64_t, int64_t, int64_t, double,
                                      double*);

namespace {

// Copies the new rows of k or v (N, hkv·dim) into the cache blocks of their positions.
template <typename T>
void write_cache(const std::vector<BatchSeq>& seqs, const T* rows, int64_t width, int64_t block_size,
                 T* pool) {
  int64_t r0 = 0;
  for (const BatchSeq& s : seqs) {
    parallel_for(s.n, 64, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t p = s.start + i;
        T* dst =
            pool +
            ((*s.block_table)[static_cast<size_t>(p / block_size)] * block_size + p % block_size) * width;
        std::memcpy(dst, rows + (r0 + i) * width, sizeof(T) * static_cast<size_t>(width));
      }
    });
    r0 += s.n;
  }
}

template <typename T>
void attention_layer(const Transformer& m, PagedKVCache& cache, int64_t l, const std::vector<BatchSeq>& seqs,
                     const parts::Qkv& a, Tensor& attn) {
  const ModelConfig& c = m.config();
  const KVDims& d = cache.dims();
  const int64_t bs = cache.block_size();
  write_cache<T>(seqs, a.k.data<T>(), d.hkv * d.k_dim, bs, cache.k(l).data<T>());
  write_cache<T>(seqs, a.v.data<T>(), d.hkv * d.v_dim, bs, cache.v(l).data<T>());
  paged_attention<T>(seqs, a.q.data<T>(), cache.k(l).data<T>(), cache.v(l).data<T>(), bs,
                     c.num_attention_heads, d.hkv, d.k_dim, d.v_dim, c.mla() ? c.attention_scale() : 0.0,
                     attn.data<T>());
}

}  // namespace

BatchResult forward_batch(const Transformer& m, PagedKVCache& cache, const std::vector<BatchSeq>& seqs) {
  const ModelConfig& c = m.config();
  const KVDims d = kv_dims(c);
  MOE_CHECK(cache.dims().layers == d.layers && cache.dims().hkv == d.hkv && cache.dims().k_dim == d.k_dim &&
                cache.dims().v_dim == d.v_dim && cache.dtype() == m.dtype(),
            "forward_batch: the paged KV cache does not match the model (layers, heads, head dims or dtype)");
  MOE_CHECK(!seqs.empty(), "forward_batch: no sequences");
  int64_t N = 0;
  for (size_t s = 0; s < seqs.size(); ++s) {
    const BatchSeq& q = seqs[s];
    MOE_CHECK(q.n >= 1 && q.tokens, "forward_batch: sequence ", s, " has no tokens");
    MOE_CHECK(q.start >= 0 && q.start + q.n <= c.max_position_embeddings, "forward_batch: sequence ", s,
              " reaches position ", q.start + q.n,
              " beyond max_position_embeddings = ", c.max_position_embeddings);
    MOE_CHECK(
        q.block_table && static_cast<int64_t>(q.block_table->size()) * cache.block_size() >= q.start + q.n,
        "forward_batch: the block table of sequence ", s, " does not cover ", q.start + q.n, " positions");
    for (int32_t b : *q.block_table)
      MOE_CHECK(b >= 0 && b < cache.n_blocks(), "forward_batch: sequence ", s, " names block ", b, " of ",
                cache.n_blocks());
    N += q.n;
  }
  std::vector<int32_t> tokens(static_cast<size_t>(N)), pos(static_cast<size_t>(N));
  std::vector<int64_t> keep;  // rows whose logits are wanted
  {
    int64_t r = 0;
    for (const BatchSeq& q : seqs) {
      for (int64_t i = 0; i < q.n; ++i, ++r) {
        tokens[static_cast<size_t>(r)] = q.tokens[i];
        pos[static_cast<size_t>(r)] = static_cast<int32_t>(q.start + i);
      }
      if (q.want_logits) keep.push_back(r - 1);
    }
  }
  Tensor x = parts::embed(m, tokens.data(), N);  // (N, d)
  Tensor tok = Tensor::empty({N}, DType::I32);
  std::memcpy(tok.data<int32_t>(), tokens.data(), sizeof(int32_t) * static_cast<size_t>(N));
  BatchResult res;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const parts::Qkv a = parts::qkv(m, l, x, pos.data());
    Tensor attn = Tensor::empty({N, c.num_attention_heads * d.v_dim}, m.dtype());  // (N, hq·v_dim)
    if (m.dtype() == DType::F64)
      attention_layer<double>(m, cache, l, seqs, a, attn);
    else
      attention_layer<float>(m, cache, l, seqs, a, attn);
    MoEStats st;
    parts::out_and_ffn(m, l, x, attn, tok, &st);
    if (m.moe_layer(l)) {
      res.moe_layers.push_back(l);
      res.stats.push_back(std::move(st));
    }
  }
  const int64_t dm = c.hidden_size, nk = static_cast<int64_t>(keep.size());
  if (nk == 0) {
    res.logits = Tensor::empty({0, c.vocab_size}, m.dtype(), "logits");
    return res;
  }
  Tensor xs = Tensor::empty({nk, dm}, m.dtype());  // (nk, d) the rows whose logits are wanted
  const size_t es = m.dtype() == DType::F64 ? sizeof(double) : sizeof(float);
  for (int64_t i = 0; i < nk; ++i)
    std::memcpy(static_cast<char*>(xs.raw()) + i * dm * es,
                static_cast<const char*>(x.raw()) + keep[i] * dm * es, es * static_cast<size_t>(dm));
  res.logits = parts::head(m, xs);
  return res;
}

}  // namespace moe::model
