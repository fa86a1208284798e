// Pieces of the transformer's forward pass, for forward variants that live in other files (the
// batched paged-KV forward in transformer_batch.cpp). Defined at the end of transformer.cpp, thin
// wrappers over Transformer::Impl, so every variant computes exactly the same layer.
// Internal to src/model.
#pragma once

#include <cstdint>

#include "moe/core/tensor.h"
#include "moe/model/transformer.h"

namespace moe::model::parts {

// Embedding rows of tokens (n) -> x (n, d); throws on an id outside the vocabulary.
Tensor embed(const Transformer& m, const int32_t* tokens, int64_t n);

// Layer l's attention inputs for the rows of x (n, d) at absolute positions pos (n):
// q (n, hq·k_dim), k (n, hkv·k_dim), v (n, hkv·v_dim), rotary embedding and q/k norm applied.
struct Qkv {
  Tensor q, k, v;
};
Qkv qkv(const Transformer& m, int64_t l, const Tensor& x, const int32_t* pos);

// x += o_proj(attn); x += ffn(rmsnorm(x)) for layer l, over all n rows at once (one MoE layer
// forward for an MoE layer, no jitter). attn (n, hq·v_dim); tokens (n) i32 (hash routing).
// stats (may be null) receives the MoE layer's stats; untouched for a dense layer.
void out_and_ffn(const Transformer& m, int64_t l, Tensor& x, const Tensor& attn, const Tensor& tokens,
                 MoEStats* stats);

// Final norm and LM head of the rows of x (n, d): logits (n, V).
Tensor head(const Transformer& m, const Tensor& x);

}  // namespace moe::model::parts
