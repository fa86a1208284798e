// Loading a model from a GGUF file: the config from llama.cpp's metadata keys, the tensors under the
// engine's names (gguf_names.h), dequantized to f32.
#include <filesystem>
#include <map>
#include <mutex>
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
  throw Error(cat("gguf '", r.path(), "': architecture '", a,
                  "' is not supported (llama with experts, qwen2moe, qwen3moe and olmoe are)"));
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
    (*by_hf)[e.hf] = e;
    known.insert(e.gguf);
  }
  TensorSource src;
  for (const auto& [hf, e] : *by_hf)
    if (r->find_tensor(e.gguf)) src.names.push_back(hf);
  for (const gguf::TensorInfo& t : r->tensors())
    if (!known.count(t.name) && t.name != "rope_freqs.weight") src.names.push_back(t.name);
  // The stacked expert tensors of the layer read last (gate, up, down), for the next experts' slices.
  struct Cache {
    std::mutex mu;
    std::map<std::string, Tensor> stacked;
  };
  auto cache = std::make_shared<Cache>();
  const ModelConfig cfg = c;
  src.load = [r, by_hf, cache, cfg](const std::string& name) -> Tensor {
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
      case Kind::Expert: {
        std::lock_guard<std::mutex> lock(cache->mu);
        auto hit = cache->stacked.find(e.gguf);
        if (hit == cache->stacked.end()) {
          if (cache->stacked.size() >= 3) cache->stacked.clear();  // another layer's: release them first
          hit = cache->stacked.emplace(e.gguf, r->load_f32(e.gguf)).first;
        }
        const Tensor& s = hit->second;  // (E, rows, cols)
        MOE_CHECK(s.dim() == 3 && s.size(0) == cfg.num_experts, "gguf '", r->path(), "': tensor '", e.gguf,
                  "' has shape ", shape_str(s.shape()), ", expected (", cfg.num_experts, ", rows, cols)");
        return s.slice(0, e.expert, e.expert + 1).reshape({s.size(1), s.size(2)}).clone().set_name(name);
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
