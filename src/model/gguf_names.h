// The correspondence between the engine's (Hugging Face) tensor names and llama.cpp's GGUF names,
// per architecture: one definition for the GGUF loader and the exporter.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/hf_names.h"
#include "moe/core/error.h"
#include "moe/model/model_config.h"

namespace moe::model::gguf_names {

// How a GGUF tensor becomes the engine's tensor.
enum class Kind {
  Plain,       // same values, same shape (PyTorch order = GGUF ne reversed)
  RopeQ,       // attn_q of `llama`: rows permuted for interleaved rope (num_attention_heads)
  RopeK,       // attn_k of `llama` (num_key_value_heads)
  Expert,      // slice `expert` of a stacked (E, ...) tensor
  SharedGate,  // qwen2moe's shared-expert gate: (1, d) in the engine, ne {d} or {d, 1} in GGUF
  KvB,         // deepseek2's kv_b_proj, stored split as attn_k_b (H, r, nope) and attn_v_b (H, v, r)
};

struct Entry {
  std::string hf;    // engine name
  std::string gguf;  // GGUF name
  Kind kind = Kind::Plain;
  int64_t expert = 0;
};

inline const char* llama_cpp_arch(Arch a) {
  switch (a) {
    case Arch::Mixtral:
      return "llama";
    case Arch::Qwen2Moe:
      return "qwen2moe";
    case Arch::Qwen3Moe:
      return "qwen3moe";
    case Arch::Olmoe:
      return "olmoe";
    case Arch::DeepseekV3:
      return "deepseek2";
  }
  throw Error("GGUF: unknown architecture");
}

// deepseek2's latent attention of one layer (pre = "model.layers.l.", blk = "blk.l.").
inline void mla_entries(const ModelConfig& c, const std::string& pre, const std::string& blk,
                        std::vector<Entry>& out) {
  const std::string a = pre + "self_attn.";
  if (c.q_lora_rank > 0) {
    out.push_back({a + "q_a_proj.weight", blk + "attn_q_a.weight"});
    if (c.mla_bias) out.push_back({a + "q_a_proj.bias", blk + "attn_q_a.bias"});
    out.push_back({a + "q_a_layernorm.weight", blk + "attn_q_a_norm.weight"});
    out.push_back({a + "q_b_proj.weight", blk + "attn_q_b.weight"});
  } else {
    out.push_back({a + "q_proj.weight", blk + "attn_q.weight"});
  }
  out.push_back({a + "kv_a_proj_with_mqa.weight", blk + "attn_kv_a_mqa.weight"});
  if (c.mla_bias) out.push_back({a + "kv_a_proj_with_mqa.bias", blk + "attn_kv_a_mqa.bias"});
  out.push_back({a + "kv_a_layernorm.weight", blk + "attn_kv_a_norm.weight"});
  out.push_back({a + "kv_b_proj.weight", blk + "attn_k_b.weight", Kind::KvB});
  out.push_back({a + "o_proj.weight", blk + "attn_output.weight"});
  if (c.mla_bias) out.push_back({a + "o_proj.bias", blk + "attn_output.bias"});
}

// The attention of one layer of the other architectures.
inline void attention_entries(const ModelConfig& c, const std::string& pre, const std::string& blk,
                              std::vector<Entry>& out) {
  const bool llama = c.arch == Arch::Mixtral;
  out.push_back({pre + "self_attn.q_proj.weight", blk + "attn_q.weight", llama ? Kind::RopeQ : Kind::Plain});
  out.push_back({pre + "self_attn.k_proj.weight", blk + "attn_k.weight", llama ? Kind::RopeK : Kind::Plain});
  out.push_back({pre + "self_attn.v_proj.weight", blk + "attn_v.weight"});
  out.push_back({pre + "self_attn.o_proj.weight", blk + "attn_output.weight"});
  if (c.attention_bias())
    for (const char* p : {"q", "k", "v"})
      out.push_back({pre + "self_attn." + p + "_proj.bias", blk + "attn_" + p + ".bias"});
  if (c.qk_norm() != QkNorm::None) {
    out.push_back({pre + "self_attn.q_norm.weight", blk + "attn_q_norm.weight"});
    out.push_back({pre + "self_attn.k_norm.weight", blk + "attn_k_norm.weight"});
  }
}

// Every tensor of a model of config c, with its GGUF name. Stacked expert tensors appear once per
// expert (Kind::Expert) under the same GGUF name.
inline std::vector<Entry> entries(const ModelConfig& c) {
  std::vector<Entry> out;
  out.push_back({"model.embed_tokens.weight", "token_embd.weight"});
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string pre = hf_names::layer_prefix(l), blk = cat("blk.", l, ".");
    out.push_back({pre + "input_layernorm.weight", blk + "attn_norm.weight"});
    if (c.mla())
      mla_entries(c, pre, blk, out);
    else
      attention_entries(c, pre, blk, out);
    out.push_back({pre + "post_attention_layernorm.weight", blk + "ffn_norm.weight"});
    if (!c.is_moe_layer(l)) {
      out.push_back({pre + "mlp.gate_proj.weight", blk + "ffn_gate.weight"});
      out.push_back({pre + "mlp.up_proj.weight", blk + "ffn_up.weight"});
      out.push_back({pre + "mlp.down_proj.weight", blk + "ffn_down.weight"});
      continue;
    }
    const std::string moe = hf_names::moe_prefix(c, l);
    out.push_back({moe + ".gate.weight", blk + "ffn_gate_inp.weight"});
    std::string names[3];
    const char* stacked[3] = {"ffn_gate_exps.weight", "ffn_up_exps.weight", "ffn_down_exps.weight"};
    for (int64_t e = 0; e < c.num_experts; ++e) {
      hf_names::expert_names(c, l, e, names);
      for (int i = 0; i < 3; ++i) out.push_back({names[i], blk + stacked[i], Kind::Expert, e});
    }
    if (c.mla()) {  // the selection bias and the ungated shared experts
      out.push_back({moe + ".gate.e_score_correction_bias", blk + "exp_probs_b.bias"});
      if (c.n_shared_experts > 0) {
        out.push_back({moe + ".shared_experts.gate_proj.weight", blk + "ffn_gate_shexp.weight"});
        out.push_back({moe + ".shared_experts.up_proj.weight", blk + "ffn_up_shexp.weight"});
        out.push_back({moe + ".shared_experts.down_proj.weight", blk + "ffn_down_shexp.weight"});
      }
    }
    if (c.shared_expert_intermediate_size > 0) {
      out.push_back({moe + ".shared_expert.gate_proj.weight", blk + "ffn_gate_shexp.weight"});
      out.push_back({moe + ".shared_expert.up_proj.weight", blk + "ffn_up_shexp.weight"});
      out.push_back({moe + ".shared_expert.down_proj.weight", blk + "ffn_down_shexp.weight"});
      out.push_back(
          {moe + ".shared_expert_gate.weight", blk + "ffn_gate_inp_shexp.weight", Kind::SharedGate});
    }
  }
  out.push_back({"model.norm.weight", "output_norm.weight"});
  if (!c.tie_word_embeddings) out.push_back({"lm_head.weight", "output.weight"});
  return out;
}

// kv_b_proj (H·(nope + v), r) from attn_k_b (H, r, nope) and attn_v_b (H, v, r), and back: per head,
// the nope rows are k_b's transpose and the v rows are v_b's (the converter's split for MLA).
inline void join_kv_b(const float* k_b, const float* v_b, float* kv_b, int64_t H, int64_t r, int64_t nope,
                      int64_t v) {
  for (int64_t h = 0; h < H; ++h) {
    float* head = kv_b + h * (nope + v) * r;
    for (int64_t i = 0; i < nope; ++i)
      for (int64_t k = 0; k < r; ++k) head[i * r + k] = k_b[(h * r + k) * nope + i];
    for (int64_t j = 0; j < v * r; ++j) head[nope * r + j] = v_b[h * v * r + j];
  }
}
inline void split_kv_b(const float* kv_b, float* k_b, float* v_b, int64_t H, int64_t r, int64_t nope,
                       int64_t v) {
  for (int64_t h = 0; h < H; ++h) {
    const float* head = kv_b + h * (nope + v) * r;
    for (int64_t i = 0; i < nope; ++i)
      for (int64_t k = 0; k < r; ++k) k_b[(h * r + k) * nope + i] = head[i * r + k];
    for (int64_t j = 0; j < v * r; ++j) v_b[h * v * r + j] = head[nope * r + j];
  }
}

// The name of expert e's own tensor in files written before llama.cpp stacked the experts:
// "blk.N.ffn_gate_exps.weight" -> "blk.N.ffn_gate.E.weight" (llama.cpp still reads them).
inline std::string split_expert_name(const std::string& stacked, int64_t e) {
  const std::string suffix = "_exps.weight";
  return stacked.substr(0, stacked.size() - suffix.size()) + cat(".", e, ".weight");
}

// llama.cpp's LlamaModel.permute on the rows of a (heads · hd, cols) matrix: within each head, row
// half·hd/2 + i (Hugging Face's half-split layout) goes to row 2i + half (interleaved pairs).
// inverse = true maps back.
inline void permute_rope_rows(const float* src, float* dst, int64_t heads, int64_t hd, int64_t cols,
                              bool inverse) {
  const int64_t half = hd / 2;
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t s = 0; s < 2; ++s)
      for (int64_t i = 0; i < half; ++i) {
        const int64_t hf_row = h * hd + s * half + i, gg_row = h * hd + 2 * i + s;
        const float* from = src + (inverse ? gg_row : hf_row) * cols;
        float* to = dst + (inverse ? hf_row : gg_row) * cols;
        for (int64_t k = 0; k < cols; ++k) to[k] = from[k];
      }
}

}  // namespace moe::model::gguf_names
