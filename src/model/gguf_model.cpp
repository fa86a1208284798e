// Loading a model from a GGUF file: the config from llama.cpp's metadata keys, the tensors under the
// engine's names (gguf_names.h), dequantized to f32.
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <set>

#include "model/gguf_names.h"
#include "moe/core/error.h"
#include "moe/model/gguf_model.h"

namespace moe::model {

namespace {

using gguf_names::Kind;

// The engine's architecture of a file's general.architecture.
Arch arch_of(const gguf::Reader& r) {
  const std::string a = r.get_string("general.architecture");
  if (a == "llama") return Arch::Mixtral;
  if (a == "qwen2moe") return Arch::Qwen2Moe;
  if (a == "qwen3moe") return Arch::Qwen3Moe;
  if (a == "olmoe") return Arch::Olmoe;
  if (a == "deepseek2") return Arch::DeepseekV3;
  throw Error(cat("gguf '", r.path(), "': architecture '", a,
                  "' is not supported (llama with experts, qwen2moe, qwen3moe, olmoe and deepseek2 are)"));
}

// The tensor's dims innermost first, or an error naming the expected ones.
const gguf::TensorInfo& need(const gguf::Reader& r, const std::string& name) {
  const gguf::TensorInfo* t = r.find_tensor(name);
  MOE_CHECK(t, "gguf '", r.path(), "': missing tensor '", name, "'");
  return *t;
}

int64_t positive(const gguf::Reader& r, const std::string& key, int64_t fallback = -1) {
  const gguf::Value* v = r.find(key);
  MOE_CHECK(v || fallback >= 0, "gguf '", r.path(), "': missing metadata '", key, "'");
  if (!v) return fallback;
  MOE_CHECK(!v->is_array(), "gguf '", r.path(), "': metadata '", key,
            "' is an array (per-layer values are not supported)");
  const int64_t x = r.get_int(key);
  MOE_CHECK(x > 0 && x <= (int64_t{1} << 31), "gguf '", r.path(), "': metadata '", key, "' = ", x,
            " is out of range");
  return x;
}

// deepseek2 (DeepSeek-V3 layout): latent attention, sigmoid group-limited router with a selection
// bias, ungated shared experts, leading dense layers, YaRN. `c` holds the keys common to all.
void deepseek2_config(const gguf::Reader& r, ModelConfig& c) {
  const std::string a = "deepseek2.";
  const std::string& p = r.path();
  // Absent (the converter writes it only from config.json's scoring_func): sigmoid when the file
  // has the selection bias of DeepSeek-V3's router, else llama.cpp's default, softmax.
  const int64_t gating =
      r.get_int(a + "expert_gating_func",
                r.find_tensor(cat("blk.", c.num_hidden_layers - 1, ".exp_probs_b.bias")) ? 2 : 1);
  MOE_CHECK(gating == 2, "gguf '", p, "': deepseek2 with expert_gating_func ", gating,
            " (softmax, DeepSeek-V2): only the sigmoid router of DeepSeek-V3 (2) is supported");
  c.num_key_value_heads = c.num_attention_heads;  // the converter writes 1 (MQA view of MLA)
  c.q_lora_rank = r.get_int(a + "attention.q_lora_rank", 0);
  c.kv_lora_rank = positive(r, a + "attention.kv_lora_rank");
  c.qk_rope_head_dim = positive(r, a + "rope.dimension_count");
  c.head_dim = c.qk_rope_head_dim;
  // key/value_length_mla: the per-head dims (newer files; older ones have them as key/value_length).
  const bool mla_keys = r.has(a + "attention.key_length_mla");
  const int64_t k = positive(r, a + (mla_keys ? "attention.key_length_mla" : "attention.key_length"));
  c.v_head_dim = positive(r, a + (mla_keys ? "attention.value_length_mla" : "attention.value_length"));
  MOE_CHECK(k > c.qk_rope_head_dim, "gguf '", p, "': key length ", k, " is not above the rope dims ",
            c.qk_rope_head_dim);
  c.qk_nope_head_dim = k - c.qk_rope_head_dim;
  c.rope_interleave = true;  // llama.cpp's deepseek2 rope rotates adjacent pairs
  c.first_k_dense_replace = r.get_int(a + "leading_dense_block_count", 0);
  c.n_shared_experts = r.get_int(a + "expert_shared_count", 0);
  c.n_group = r.get_int(a + "expert_group_count", 1);
  c.topk_group = r.get_int(a + "expert_group_used_count", 1);
  c.routed_scaling_factor = r.get_float(a + "expert_weights_scale", 1.0);
  c.norm_topk_prob = r.get_int(a + "expert_weights_norm", 0) != 0;
  const std::string scaling = r.get_string(a + "rope.scaling.type", "none");
  MOE_CHECK(scaling == "none" || scaling == "yarn", "gguf '", p, "': rope scaling '", scaling,
            "' is not supported (yarn is)");
  if (scaling == "yarn") {
    RopeScaling& y = c.rope_scaling;
    y.type = "yarn";
    y.factor = r.get_float(a + "rope.scaling.factor");
    y.original_max_position_embeddings = positive(r, a + "rope.scaling.original_context_length");
    // GGUF keeps 0.1 · mscale_all_dim only; llama.cpp takes mscale equal to it.
    char buf[32];  // 0.1 · 0.8 read back as 0.8, not 0.7999999999999999
    std::snprintf(buf, sizeof buf, "%.7g", r.get_float(a + "rope.scaling.yarn_log_multiplier", 0) / 0.1);
    y.mscale_all_dim = std::strtod(buf, nullptr);
    y.mscale = y.mscale_all_dim;
    y.beta_fast = r.get_float(a + "rope.scaling.yarn_beta_fast", 32);
    y.beta_slow = r.get_float(a + "rope.scaling.yarn_beta_slow", 1);
  }
  c.mla_bias = r.find_tensor("blk.0.attn_kv_a_mqa.bias") != nullptr;
  c.moe_intermediate_size = positive(r, a + "expert_feed_forward_length");
  c.intermediate_size = positive(r, a + "feed_forward_length", c.moe_intermediate_size);
}

}  // namespace

bool is_gguf_path(const std::string& path) {
  const std::string ext = ".gguf";
  return path.size() > ext.size() && path.compare(path.size() - ext.size(), ext.size(), ext) == 0 &&
         !std::filesystem::is_directory(path);
}

ModelConfig gguf_model_config(const gguf::Reader& r) {
  ModelConfig c;
  c.arch = arch_of(r);
  const std::string a = r.get_string("general.architecture") + ".";
  const std::string& p = r.path();
  c.num_hidden_layers = positive(r, a + "block_count");
  c.hidden_size = positive(r, a + "embedding_length");
  c.num_attention_heads = positive(r, a + "attention.head_count");
  c.num_key_value_heads = positive(r, a + "attention.head_count_kv", c.num_attention_heads);
  c.max_position_embeddings = positive(r, a + "context_length", 4096);
  c.rms_norm_eps = r.get_float(a + "attention.layer_norm_rms_epsilon", 1e-5);
  c.rope_theta = r.get_float(a + "rope.freq_base", 10000.0);
  c.num_experts = positive(r, a + "expert_count", 0);
  MOE_CHECK(c.num_experts > 0, "gguf '", p, "': ", a,
            "expert_count is missing: a dense model (this engine runs ", "mixture-of-experts models)");
  c.num_experts_per_tok = positive(r, a + "expert_used_count");
  if (c.arch == Arch::DeepseekV3) {
    deepseek2_config(r, c);
    const gguf::TensorInfo& embd = need(r, "token_embd.weight");
    MOE_CHECK(embd.ne.size() == 2 && embd.ne[0] == c.hidden_size, "gguf '", p,
              "': tensor 'token_embd.weight' has ne ", shape_str(Shape(embd.ne.begin(), embd.ne.end())),
              ", expected {", c.hidden_size, ", vocab}");
    c.vocab_size = embd.ne[1];
    c.tie_word_embeddings = r.find_tensor("output.weight") == nullptr;
    c.bos_token_id = r.get_int("tokenizer.ggml.bos_token_id", -1);
    c.eos_token_id = r.get_int("tokenizer.ggml.eos_token_id", -1);
    try {
      c.validate();
    } catch (const Error& e) {
      throw Error(cat("gguf '", p, "': ", e.what()));
    }
    return c;
  }
  const int64_t hd = positive(r, a + "attention.key_length", c.hidden_size / c.num_attention_heads);
  if (hd != c.hidden_size / c.num_attention_heads || c.arch == Arch::Qwen3Moe) c.head_dim = hd;
  const int64_t vd = positive(r, a + "attention.value_length", hd);
  MOE_CHECK(vd == hd, "gguf '", p, "': value length ", vd, " differs from key length ", hd,
            " (not supported)");
  if (const gguf::Value* rd = r.find(a + "rope.dimension_count"))
    MOE_CHECK(rd->is_int() && rd->i == hd, "gguf '", p, "': ", a, "rope.dimension_count = ", rd->i,
              " (partial rotary embeddings are not supported; head dim ", hd, ")");
  const gguf::Value* st = r.find(a + "rope.scaling.type");
  MOE_CHECK(!st || st->s == "none", "gguf '", p, "': rope scaling '", st ? st->s : "", "' is not supported");

  // Shapes from the tensors (ne innermost first).
  const gguf::TensorInfo& embd = need(r, "token_embd.weight");
  MOE_CHECK(embd.ne.size() == 2 && embd.ne[0] == c.hidden_size, "gguf '", p,
            "': tensor 'token_embd.weight' has ne ", shape_str(Shape(embd.ne.begin(), embd.ne.end())),
            ", expected {", c.hidden_size, ", vocab}");
  c.vocab_size = embd.ne[1];
  c.tie_word_embeddings = r.find_tensor("output.weight") == nullptr;
  c.norm_topk_prob = c.arch == Arch::Mixtral || c.arch == Arch::Qwen3Moe;  // as llama.cpp computes them
  if (const gguf::Value* n = r.find(a + "expert_weights_norm")) c.norm_topk_prob = n->is_int() && n->i != 0;

  int64_t expert_width = 0, dense_width = 0, shared_width = 0;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string blk = cat("blk.", l, ".");
    need(r, blk + "attn_norm.weight");
    if (r.find_tensor(blk + "ffn_gate_inp.weight")) {
      // Stacked experts, or (files from before llama.cpp stacked them) one tensor per expert.
      const gguf::TensorInfo* split =
          r.find_tensor(blk + "ffn_gate_exps.weight") ? nullptr : r.find_tensor(blk + "ffn_gate.0.weight");
      const gguf::TensorInfo& g = split ? *split : need(r, blk + "ffn_gate_exps.weight");
      const size_t dims = split ? 2 : 3;
      MOE_CHECK(g.ne.size() == dims && g.ne[0] == c.hidden_size && (split || g.ne[2] == c.num_experts),
                "gguf '", p, "': tensor '", g.name, "' has ne ", shape_str(Shape(g.ne.begin(), g.ne.end())),
                ", expected {", c.hidden_size, ", F", split ? "" : cat(", ", c.num_experts), "}");
      MOE_CHECK(expert_width == 0 || expert_width == g.ne[1], "gguf '", p,
                "': expert width differs between layers");
      expert_width = g.ne[1];
      if (const gguf::TensorInfo* s = r.find_tensor(blk + "ffn_gate_shexp.weight")) {
        MOE_CHECK(s->ne.size() == 2, "gguf '", p, "': tensor '", s->name, "' is not a matrix");
        shared_width = s->ne[1];
      }
    } else {
      const gguf::TensorInfo& g = need(r, blk + "ffn_gate.weight");
      MOE_CHECK(g.ne.size() == 2, "gguf '", p, "': tensor '", g.name, "' is not a matrix");
      dense_width = g.ne[1];
      c.mlp_only_layers.push_back(l);
    }
  }
  MOE_CHECK(expert_width > 0, "gguf '", p, "': no layer has experts (blk.N.ffn_gate_inp.weight)");
  MOE_CHECK(c.mlp_only_layers.empty() || c.arch == Arch::Qwen2Moe || c.arch == Arch::Qwen3Moe, "gguf '", p,
            "': layer ", c.mlp_only_layers.empty() ? 0 : c.mlp_only_layers[0],
            " has no experts; dense layers are ", "supported for qwen2moe and qwen3moe only");
  if (c.arch == Arch::Qwen2Moe || c.arch == Arch::Qwen3Moe) {
    c.moe_intermediate_size = expert_width;
    c.intermediate_size =
        dense_width > 0 ? dense_width : positive(r, a + "feed_forward_length", expert_width);
  } else {
    c.intermediate_size = expert_width;
  }
  if (c.arch == Arch::Qwen2Moe) {
    MOE_CHECK(shared_width > 0, "gguf '", p,
              "': qwen2moe without a shared expert (blk.N.ffn_gate_shexp.weight)");
    c.shared_expert_intermediate_size = shared_width;
  }
  c.bos_token_id = r.get_int("tokenizer.ggml.bos_token_id", -1);
  c.eos_token_id = r.get_int("tokenizer.ggml.eos_token_id", -1);
  try {
    c.validate();
  } catch (const Error& e) {
    throw Error(cat("gguf '", p, "': ", e.what()));
  }
  return c;
}

TensorSource gguf_tensor_source(std::shared_ptr<const gguf::Reader> r, const ModelConfig& c) {
  auto by_hf = std::make_shared<std::map<std::string, gguf_names::Entry>>();
  std::set<std::string> known;
  for (gguf_names::Entry e : gguf_names::entries(c)) {
    if (e.kind == Kind::Expert && !r->find_tensor(e.gguf)) {  // "blk.N.ffn_gate.E.weight", one per expert
      const std::string legacy = gguf_names::split_expert_name(e.gguf, e.expert);
      if (r->find_tensor(legacy)) e.gguf = legacy, e.kind = Kind::Plain;
    }
    if (e.kind == Kind::KvB && !r->find_tensor(e.gguf)) {  // files before the k_b/v_b split
      const std::string joined = e.gguf.substr(0, e.gguf.size() - 15) + "attn_kv_b.weight";
      if (r->find_tensor(joined)) e.gguf = joined, e.kind = Kind::Plain;
    }
    (*by_hf)[e.hf] = e;
    known.insert(e.gguf);
    if (e.kind == Kind::KvB) known.insert(e.gguf.substr(0, e.gguf.size() - 15) + "attn_v_b.weight");
  }
  TensorSource src;
  for (const auto& [hf, e] : *by_hf)
    if (r->find_tensor(e.gguf)) src.names.push_back(hf);
  for (const gguf::TensorInfo& t : r->tensors())
    if (!known.count(t.name) && t.name != "rope_freqs.weight") src.names.push_back(t.name);
  const ModelConfig cfg = c;
  src.load = [r, by_hf, cfg](const std::string& name) -> Tensor {
    auto it = by_hf->find(name);
    if (it == by_hf->end()) return r->load_f32(name);  // reported as unexpected by the caller
    const gguf_names::Entry& e = it->second;
    switch (e.kind) {
      case Kind::Plain:
        return r->load_f32(e.gguf).set_name(name);
      case Kind::SharedGate: {
        Tensor t = r->load_f32(e.gguf);
        MOE_CHECK(t.numel() == cfg.hidden_size, "gguf '", r->path(), "': tensor '", e.gguf, "' has ",
                  t.numel(), " values, expected ", cfg.hidden_size);
        return t.reshape({1, cfg.hidden_size}).set_name(name);
      }
      case Kind::RopeQ:
      case Kind::RopeK: {
        const Tensor t = r->load_f32(e.gguf);
        const int64_t heads = e.kind == Kind::RopeQ ? cfg.num_attention_heads : cfg.num_key_value_heads;
        const int64_t hd = cfg.head_dim_or_default();
        MOE_CHECK(t.dim() == 2 && t.size(0) == heads * hd && hd % 2 == 0, "gguf '", r->path(), "': tensor '",
                  e.gguf, "' has shape ", shape_str(t.shape()), ", expected (", heads * hd, ", ",
                  cfg.hidden_size, ")");
        Tensor out = Tensor::empty(t.shape(), DType::F32, name);
        gguf_names::permute_rope_rows(t.data<float>(), out.data<float>(), heads, hd, t.size(1), true);
        return out;
      }
      case Kind::KvB: {
        const std::string vb = e.gguf.substr(0, e.gguf.size() - 15) + "attn_v_b.weight";
        const Tensor k_b = r->load_f32(e.gguf), v_b = r->load_f32(vb);  // (H, r, nope), (H, v, r)
        const int64_t H = cfg.num_attention_heads, R = cfg.kv_lora_rank, nope = cfg.qk_nope_head_dim,
                      v = cfg.v_head_dim;
        MOE_CHECK(k_b.shape() == (Shape{H, R, nope}) && v_b.shape() == (Shape{H, v, R}), "gguf '", r->path(),
                  "': tensors '", e.gguf, "' ", shape_str(k_b.shape()), " and '", vb, "' ",
                  shape_str(v_b.shape()), ": expected (", H, ", ", R, ", ", nope, ") and (", H, ", ", v, ", ",
                  R, ")");
        Tensor out = Tensor::empty({H * (nope + v), R}, DType::F32, name);
        gguf_names::join_kv_b(k_b.data<float>(), v_b.data<float>(), out.data<float>(), H, R, nope, v);
        return out;
      }
      case Kind::Expert: {  // expert e's slice of the stacked (E, rows, cols) tensor, read alone
        const gguf::TensorInfo& t = r->tensor(e.gguf);
        MOE_CHECK(t.ne.size() == 3 && t.ne[2] == cfg.num_experts, "gguf '", r->path(), "': tensor '", e.gguf,
                  "' has ne ", shape_str(Shape(t.ne.begin(), t.ne.end())), ", expected {cols, rows, ",
                  cfg.num_experts, "}");
        return r->load_f32_slice(e.gguf, e.expert).set_name(name);
      }
    }
    throw Error("gguf: unreachable");
  };
  src.file = [r, by_hf](const std::string& name) {
    auto it = by_hf->find(name);
    return cat(r->path(), " (tensor '", it == by_hf->end() ? name : it->second.gguf, "')");
  };
  return src;
}

std::string gguf_type_summary(const gguf::Reader& r) {
  std::map<std::string, int> n;
  for (const gguf::TensorInfo& t : r.tensors()) ++n[gguf::ggml_type_name(static_cast<uint32_t>(t.type))];
  std::string s;
  for (const auto& [type, count] : n) s += cat(s.empty() ? "" : ", ", count, " ", type);
  return s;
}

Transformer load_gguf(const std::string& path, DType dtype) {
  auto r = std::make_shared<const gguf::Reader>(path);
  const ModelConfig cfg = gguf_model_config(*r);
  Transformer m(cfg, dtype);
  try {
    m.load_hf_state_dict(gguf_tensor_source(r, cfg));
  } catch (const Error& e) {
    throw Error(cat(path, ": ", e.what()));
  }
  return m;
}

}  // namespace moe::model
