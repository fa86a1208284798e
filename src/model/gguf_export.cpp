// Export of a model as GGUF, with the metadata keys and tensor names llama.cpp reads for the
// architecture (llama.cpp's convert_hf_to_gguf.py writes the same for a Hugging Face checkpoint).
#include <map>

#include "model/gguf_names.h"
#include "moe/core/error.h"
#include "moe/model/gguf_model.h"

namespace moe::model {

namespace {

using gguf::GgmlType;
using gguf_names::Kind;

// llama.cpp's llama_ftype of a file whose matrices are of type t.
uint32_t file_type(GgmlType t) {
  switch (t) {
    case GgmlType::F32:
      return 0;
    case GgmlType::F16:
      return 1;
    case GgmlType::Q4_0:
      return 2;
    case GgmlType::Q8_0:
      return 7;
    case GgmlType::BF16:
      return 32;
    default:
      throw Error(cat("export: GGUF type ", gguf::ggml_type_name(static_cast<uint32_t>(t)),
                      " is not written (f32, f16, bf16, q8_0 and q4_0 are)"));
  }
}

// deepseek2's keys as the converter writes them: MLA seen as MQA with kv_lora_rank + rope dims per
// key, the per-head dims under *_mla, the router, YaRN (GGUF keeps 0.1 · mscale_all_dim only).
void deepseek2_metadata(const ModelConfig& c, std::vector<std::pair<std::string, gguf::Value>>& kv) {
  const std::string a = "deepseek2.";
  auto u32 = [](int64_t v) { return gguf::u32_value(static_cast<uint32_t>(v)); };
  auto set = [&](const std::string& key, gguf::Value v) {
    for (auto& [k, old] : kv)
      if (k == key) return void(old = std::move(v));
    kv.emplace_back(key, std::move(v));
  };
  set(a + "attention.head_count_kv", u32(1));
  set(a + "rope.dimension_count", u32(c.qk_rope_head_dim));
  set(a + "attention.key_length", u32(c.kv_lora_rank + c.qk_rope_head_dim));
  set(a + "attention.value_length", u32(c.kv_lora_rank));
  set(a + "attention.key_length_mla", u32(c.qk_nope_head_dim + c.qk_rope_head_dim));
  set(a + "attention.value_length_mla", u32(c.v_head_dim));
  if (c.q_lora_rank > 0) set(a + "attention.q_lora_rank", u32(c.q_lora_rank));
  set(a + "attention.kv_lora_rank", u32(c.kv_lora_rank));
  set(a + "leading_dense_block_count", u32(c.first_k_dense_replace));
  set(a + "expert_shared_count", u32(c.n_shared_experts));
  set(a + "expert_weights_scale", gguf::f32_value(static_cast<float>(c.routed_scaling_factor)));
  set(a + "expert_weights_norm", gguf::bool_value(c.norm_topk_prob));
  set(a + "expert_gating_func", u32(2));  // sigmoid
  set(a + "expert_group_count", u32(c.n_group));
  set(a + "expert_group_used_count", u32(c.topk_group));
  if (c.rope_scaling.yarn()) {
    const RopeScaling& y = c.rope_scaling;
    set(a + "rope.scaling.type", gguf::str_value("yarn"));
    set(a + "rope.scaling.factor", gguf::f32_value(static_cast<float>(y.factor)));
    set(a + "rope.scaling.original_context_length",
        u32(y.original_max_position_embeddings > 0 ? y.original_max_position_embeddings
                                                   : c.max_position_embeddings));
    set(a + "rope.scaling.yarn_log_multiplier", gguf::f32_value(static_cast<float>(0.1 * y.mscale_all_dim)));
    set(a + "rope.scaling.yarn_beta_fast", gguf::f32_value(static_cast<float>(y.beta_fast)));
    set(a + "rope.scaling.yarn_beta_slow", gguf::f32_value(static_cast<float>(y.beta_slow)));
  }
}

std::vector<std::pair<std::string, gguf::Value>> model_metadata(const ModelConfig& c, const std::string& name,
                                                                GgmlType type) {
  const std::string arch = gguf_names::llama_cpp_arch(c.arch), a = arch + ".";
  auto u32 = [](int64_t v) { return gguf::u32_value(static_cast<uint32_t>(v)); };
  std::vector<std::pair<std::string, gguf::Value>> kv = {
      {"general.architecture", gguf::str_value(arch)},
      {"general.name", gguf::str_value(name.empty() ? std::string(arch_name(c.arch)) : name)},
      {"general.file_type", u32(file_type(type))},
      {a + "vocab_size", u32(c.vocab_size)},
      {a + "block_count", u32(c.num_hidden_layers)},
      {a + "context_length", u32(c.max_position_embeddings)},
      {a + "embedding_length", u32(c.hidden_size)},
      {a + "feed_forward_length", u32(c.intermediate_size)},
      {a + "attention.head_count", u32(c.num_attention_heads)},
      {a + "attention.head_count_kv", u32(c.num_key_value_heads)},
      {a + "rope.freq_base", gguf::f32_value(static_cast<float>(c.rope_theta))},
      {a + "rope.dimension_count", u32(c.head_dim_or_default())},
      {a + "attention.layer_norm_rms_epsilon", gguf::f32_value(static_cast<float>(c.rms_norm_eps))},
      {a + "attention.key_length", u32(c.head_dim_or_default())},
      {a + "attention.value_length", u32(c.head_dim_or_default())},
      {a + "expert_count", u32(c.num_experts)},
      {a + "expert_used_count", u32(c.num_experts_per_tok)},
      {a + "expert_weights_norm", gguf::bool_value(c.norm_topk_prob || c.arch == Arch::Mixtral)},
  };
  if (c.arch == Arch::Qwen2Moe || c.arch == Arch::Qwen3Moe || c.mla())
    kv.emplace_back(a + "expert_feed_forward_length", u32(c.moe_intermediate_size));
  if (c.mla()) deepseek2_metadata(c, kv);
  if (c.arch == Arch::Qwen2Moe)
    kv.emplace_back(a + "expert_shared_feed_forward_length", u32(c.shared_expert_intermediate_size));
  return kv;
}

// What of this model llama.cpp computes differently (it has no switch for these): said when exporting.
std::vector<std::string> llama_cpp_differences(const ModelConfig& c) {
  std::vector<std::string> d;
  const bool llama_norm =
      c.arch == Arch::Mixtral || c.arch == Arch::Qwen3Moe;  // llama.cpp renormalises top-k
  if (c.arch != Arch::Mixtral && !c.mla() && c.norm_topk_prob != llama_norm)
    d.push_back(cat("llama.cpp's ", gguf_names::llama_cpp_arch(c.arch),
                    llama_norm ? " renormalises" : " does not renormalise",
                    " the top-k routing weights and this model ", c.norm_topk_prob ? "does" : "does not",
                    " (norm_topk_prob): its outputs will differ"));
  if (c.mla() && !c.rope_interleave)
    d.push_back(
        "llama.cpp's deepseek2 rotates interleaved pairs and this model half-split ones (rope_interleave "
        "false): its outputs will differ, and this engine reads the file back as interleaved");
  if (c.mla() && c.rope_scaling.yarn() && c.rope_scaling.mscale != c.rope_scaling.mscale_all_dim)
    d.push_back(
        "GGUF keeps YaRN's mscale_all_dim only (llama.cpp takes mscale equal to it) and this model's "
        "mscale differs: outputs will differ");
  if (c.mla() && c.mla_bias)
    d.push_back("llama.cpp's deepseek2 has no attention biases: it will not load there");
  bool dense = false;
  for (int64_t l = 0; l < c.num_hidden_layers && !c.mla(); ++l) dense = dense || !c.is_moe_layer(l);
  if (dense)
    d.push_back(
        "llama.cpp needs experts in every layer and this model has dense layers: it will not load there");
  if (c.arch == Arch::Olmoe && c.num_key_value_heads != c.num_attention_heads)
    d.push_back("llama.cpp's olmoe expects as many key/value heads as heads: it will not load there");
  return d;
}

}  // namespace

std::string export_gguf(const Transformer& m, const std::string& path, const GgufExportOptions& opt) {
  const ModelConfig& c = m.config();
  MOE_CHECK(!m.external_experts(),
            "export: the model's experts are held outside it; load it with float experts");
  gguf::WriteFile f;
  f.metadata = model_metadata(c, opt.name, opt.type);
  if (!opt.tokenizer_json.empty()) {
    for (auto& kv : gguf_tokenizer_metadata(opt.tokenizer_json, c)) f.metadata.push_back(std::move(kv));
  } else {
    f.metadata.emplace_back("tokenizer.ggml.model", gguf::str_value("none"));
  }
  const std::map<std::string, Tensor> sd = m.hf_state_dict();
  // The stacked expert tensors of a layer, gathered from the per-expert ones.
  std::map<std::string, std::vector<Tensor>> stacked;
  std::vector<std::string> order;  // GGUF names in the order of gguf_names::entries
  std::map<std::string, Tensor> plain;
  std::map<std::string, Kind> kind;
  for (const gguf_names::Entry& e : gguf_names::entries(c)) {
    const auto it = sd.find(e.hf);
    MOE_CHECK(it != sd.end(), "export: the model has no tensor '", e.hf, "'");
    const Tensor t = it->second.contiguous();
    if (!kind.count(e.gguf)) order.push_back(e.gguf);
    kind[e.gguf] = e.kind;
    if (e.kind == Kind::Expert) {
      stacked[e.gguf].push_back(t);
    } else if (e.kind == Kind::RopeQ || e.kind == Kind::RopeK) {
      const int64_t heads = e.kind == Kind::RopeQ ? c.num_attention_heads : c.num_key_value_heads;
      Tensor out = Tensor::empty(t.shape(), DType::F32);
      gguf_names::permute_rope_rows(t.data<float>(), out.data<float>(), heads, c.head_dim_or_default(),
                                    t.size(1), false);
      plain[e.gguf] = out;
    } else if (e.kind == Kind::KvB) {  // split into attn_k_b (H, r, nope) and attn_v_b (H, v, r)
      const int64_t H = c.num_attention_heads, R = c.kv_lora_rank, nope = c.qk_nope_head_dim,
                    v = c.v_head_dim;
      Tensor k_b = Tensor::empty({H, R, nope}, DType::F32), v_b = Tensor::empty({H, v, R}, DType::F32);
      gguf_names::split_kv_b(t.data<float>(), k_b.data<float>(), v_b.data<float>(), H, R, nope, v);
      const std::string vb = e.gguf.substr(0, e.gguf.size() - 15) + "attn_v_b.weight";
      plain[e.gguf] = k_b;
      plain[vb] = v_b;
      order.push_back(vb);
      kind[vb] = Kind::Plain;
    } else {  // the shared-expert gate stays (1, d): ne {d, 1}, as the converter writes it
      plain[e.gguf] = t;
    }
  }
  int64_t fallback = 0;
  for (const std::string& name : order) {
    Tensor v;
    if (kind[name] == Kind::Expert) {
      const std::vector<Tensor>& parts = stacked[name];
      const int64_t E = static_cast<int64_t>(parts.size()), R = parts[0].size(0), K = parts[0].size(1);
      v = Tensor::empty({E, R, K}, DType::F32);  // (E, rows, cols)
      for (int64_t e = 0; e < E; ++e) v.slice(0, e, e + 1).reshape({R, K}).copy_from(parts[e]);
    } else {
      v = plain[name];
    }
    // Matrices in the requested type; vectors (norms, biases) and routers f32, as llama.cpp's
    // converter writes them.
    const bool router = name.find("ffn_gate_inp") != std::string::npos;
    GgmlType type = v.dim() >= 2 && !router ? opt.type : GgmlType::F32;
    if (v.shape().back() % gguf::ggml_block_size(type) != 0) {
      type = GgmlType::F16;
      ++fallback;
    }
    f.tensors.push_back({name, v, type});
  }
  gguf::write_file(path, f);
  std::vector<std::string> notes;
  if (fallback > 0)
    notes.push_back(cat(fallback, " matrices have rows that are not whole ",
                        gguf::ggml_type_name(static_cast<uint32_t>(opt.type)), " blocks: written as f16"));
  for (const std::string& n : llama_cpp_differences(c)) notes.push_back(n);
  std::string out;
  for (const std::string& n : notes) out += (out.empty() ? "" : "; ") + n;
  return out;
}

}  // namespace moe::model
