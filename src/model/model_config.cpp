#include "moe/model/model_config.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "moe/core/error.h"

namespace moe::model {

namespace {
const std::pair<const char*, Arch> kArch[] = {
    {"mixtral", Arch::Mixtral}, {"qwen2_moe", Arch::Qwen2Moe}, {"qwen3_moe", Arch::Qwen3Moe}, {"olmoe", Arch::Olmoe}};

const char* hf_class(Arch a) {
  switch (a) {
    case Arch::Mixtral: return "MixtralForCausalLM";
    case Arch::Qwen2Moe: return "Qwen2MoeForCausalLM";
    case Arch::Qwen3Moe: return "Qwen3MoeForCausalLM";
    case Arch::Olmoe: return "OlmoeForCausalLM";
  }
  return "";
}

using json = nlohmann::json;

// Reads j[key] into out when present and not null; a wrong type is an error naming the key.
template <typename V>
bool get(const json& j, const char* key, V& out) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return false;
  try {
    out = it->get<V>();
  } catch (const json::exception&) {
    throw Error(cat("config.json: key '", key, "': wrong type (", it->type_name(), ")"));
  }
  return true;
}
template <typename V>
void require(const json& j, const char* key, V& out) {
  MOE_CHECK(get(j, key, out), "config.json: missing required key '", key, "'");
}
// eos_token_id may be an int or a list (the first one is used for stopping).
int64_t token_id(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return -1;
  if (it->is_array()) return it->empty() ? -1 : token_id(json{{key, (*it)[0]}}, key);
  MOE_CHECK(it->is_number_integer(), "config.json: key '", key, "': expected an integer, got ", it->type_name());
  return it->get<int64_t>();
}
}  // namespace

const char* arch_name(Arch a) {
  for (const auto& [n, v] : kArch)
    if (v == a) return n;
  return "invalid";
}

Arch arch_from_name(const std::string& s) {
  std::string options;
  for (const auto& [n, v] : kArch) {
    if (s == n) return v;
    options += options.empty() ? n : cat(", ", n);
  }
  throw Error(cat("config.json: unsupported model_type '", s, "' (supported: ", options, ")"));
}

int64_t ModelConfig::expert_width() const {
  return (arch == Arch::Mixtral || arch == Arch::Olmoe) ? intermediate_size : moe_intermediate_size;
}

bool ModelConfig::is_moe_layer(int64_t layer) const {
  if (arch == Arch::Mixtral || arch == Arch::Olmoe) return true;
  if (std::find(mlp_only_layers.begin(), mlp_only_layers.end(), layer) != mlp_only_layers.end()) return false;
  return num_experts > 0 && (layer + 1) % decoder_sparse_step == 0;
}

QkNorm ModelConfig::qk_norm() const {
  if (arch == Arch::Qwen3Moe) return QkNorm::PerHead;
  if (arch == Arch::Olmoe) return QkNorm::Full;
  return QkNorm::None;
}

MoEConfig ModelConfig::moe_layer_config() const {
  MoEConfig m;
  m.d_model = hidden_size;
  m.d_ff = expert_width();
  m.n_experts = num_experts;
  m.activation = kernels::Activation::SwiGLU;
  if (arch == Arch::Qwen2Moe && shared_expert_intermediate_size > 0) {
    m.n_shared_experts = 1;
    m.d_ff_shared = shared_expert_intermediate_size;
    m.shared_gate = true;
  }
  m.router = router_extra;
  m.balance = balance_extra;
  m.router.top_k = static_cast<int>(num_experts_per_tok);
  m.router.normalize = arch == Arch::Mixtral ? true : norm_topk_prob;
  m.balance.aux_coef = router_aux_loss_coef;
  m.balance.z_coef = router_z_loss_coef;
  return m;
}

void ModelConfig::validate() const {
  MOE_CHECK(vocab_size > 0, "config.json: vocab_size must be > 0, got ", vocab_size);
  MOE_CHECK(hidden_size > 0, "config.json: hidden_size must be > 0, got ", hidden_size);
  MOE_CHECK(num_hidden_layers > 0, "config.json: num_hidden_layers must be > 0, got ", num_hidden_layers);
  MOE_CHECK(num_attention_heads > 0, "config.json: num_attention_heads must be > 0, got ", num_attention_heads);
  MOE_CHECK(num_key_value_heads > 0 && num_attention_heads % num_key_value_heads == 0,
            "config.json: num_key_value_heads = ", num_key_value_heads,
            " must be > 0 and divide num_attention_heads = ", num_attention_heads);
  MOE_CHECK(head_dim > 0 || hidden_size % num_attention_heads == 0, "config.json: hidden_size = ", hidden_size,
            " is not divisible by num_attention_heads = ", num_attention_heads, " and head_dim is not set");
  MOE_CHECK(head_dim_or_default() % 2 == 0, "config.json: head_dim must be even for rotary embeddings, got ",
            head_dim_or_default());
  MOE_CHECK(arch != Arch::Olmoe || head_dim == 0 || head_dim * num_attention_heads == hidden_size,
            "config.json: olmoe needs head_dim · num_attention_heads == hidden_size");
  MOE_CHECK(num_experts > 0, "config.json: the number of experts must be > 0, got ", num_experts);
  MOE_CHECK(num_experts_per_tok >= 1 && num_experts_per_tok <= num_experts,
            "config.json: num_experts_per_tok must be in [1, ", num_experts, "], got ", num_experts_per_tok);
  MOE_CHECK(expert_width() > 0, "config.json: ",
            (arch == Arch::Mixtral || arch == Arch::Olmoe) ? "intermediate_size" : "moe_intermediate_size",
            " (the expert width) must be > 0, got ", expert_width());
  MOE_CHECK(decoder_sparse_step >= 1, "config.json: decoder_sparse_step must be >= 1, got ", decoder_sparse_step);
  for (int64_t l : mlp_only_layers)
    MOE_CHECK(l >= 0 && l < num_hidden_layers, "config.json: mlp_only_layers entry ", l, " is not a layer index");
  bool any_dense = false;
  for (int64_t l = 0; l < num_hidden_layers; ++l) any_dense = any_dense || !is_moe_layer(l);
  MOE_CHECK(!any_dense || intermediate_size > 0, "config.json: dense layers need intermediate_size > 0");
  MOE_CHECK(std::isfinite(rope_theta) && rope_theta > 0, "config.json: rope_theta must be > 0, got ", rope_theta);
  MOE_CHECK(std::isfinite(rms_norm_eps) && rms_norm_eps > 0, "config.json: rms_norm_eps must be > 0, got ",
            rms_norm_eps);
  MOE_CHECK(max_position_embeddings > 0, "config.json: max_position_embeddings must be > 0");
  MOE_CHECK(initializer_range > 0, "config.json: initializer_range must be > 0");
  // bos/eos ids are metadata (transformers' default configs carry ids of the full-size vocabulary
  // into tiny test models); generation stops on the tokenizer's end-of-text token.
  moe_layer_config().validate();
}

int64_t ModelConfig::n_params() const {
  const int64_t d = hidden_size, hd = head_dim_or_default();
  const int64_t hq = num_attention_heads, hkv = num_key_value_heads;
  int64_t attn = d * hq * hd * 2 + d * hkv * hd * 2;
  if (attention_bias()) attn += hq * hd + 2 * hkv * hd;
  if (qk_norm() == QkNorm::PerHead) attn += 2 * hd;
  if (qk_norm() == QkNorm::Full) attn += hq * hd + hkv * hd;
  const MoEConfig m = moe_layer_config();
  const int64_t moe = m.n_experts * 3 * m.d_ff * d + m.n_experts * d + 3 * m.shared_width() * d + (m.shared_gate ? d : 0);
  const int64_t dense = 3 * intermediate_size * d;
  int64_t total = vocab_size * d * (tie_word_embeddings ? 1 : 2) + d;
  for (int64_t l = 0; l < num_hidden_layers; ++l) total += attn + 2 * d + (is_moe_layer(l) ? moe : dense);
  return total;
}

int64_t ModelConfig::n_active_params() const {
  const MoEConfig m = moe_layer_config();
  int64_t inactive = 0;
  for (int64_t l = 0; l < num_hidden_layers; ++l)
    if (is_moe_layer(l)) inactive += (m.n_experts - m.router.top_k) * 3 * m.d_ff * hidden_size;
  return n_params() - inactive;
}

ModelConfig model_config_from_json(const std::string& text) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::parse_error& e) {
    throw Error(cat("config.json: invalid JSON: ", e.what()));
  }
  MOE_CHECK(j.is_object(), "config.json: expected a JSON object");
  ModelConfig c;
  std::string type;
  require(j, "model_type", type);
  c.arch = arch_from_name(type);
  require(j, "vocab_size", c.vocab_size);
  require(j, "hidden_size", c.hidden_size);
  require(j, "num_hidden_layers", c.num_hidden_layers);
  require(j, "num_attention_heads", c.num_attention_heads);
  c.num_key_value_heads = c.num_attention_heads;
  get(j, "num_key_value_heads", c.num_key_value_heads);
  get(j, "head_dim", c.head_dim);
  get(j, "intermediate_size", c.intermediate_size);
  get(j, "rope_theta", c.rope_theta);
  get(j, "rms_norm_eps", c.rms_norm_eps);
  get(j, "max_position_embeddings", c.max_position_embeddings);
  get(j, "tie_word_embeddings", c.tie_word_embeddings);
  get(j, "router_aux_loss_coef", c.router_aux_loss_coef);
  get(j, "router_z_loss_coef", c.router_z_loss_coef);
  get(j, "initializer_range", c.initializer_range);
  require(j, "num_experts_per_tok", c.num_experts_per_tok);
  c.bos_token_id = token_id(j, "bos_token_id");
  c.eos_token_id = token_id(j, "eos_token_id");
  if (c.arch == Arch::Mixtral) {
    require(j, "num_local_experts", c.num_experts);
    c.norm_topk_prob = true;
  } else {
    require(j, "num_experts", c.num_experts);
    get(j, "norm_topk_prob", c.norm_topk_prob);
  }
  if (c.arch == Arch::Qwen2Moe || c.arch == Arch::Qwen3Moe) {
    require(j, "moe_intermediate_size", c.moe_intermediate_size);
    get(j, "decoder_sparse_step", c.decoder_sparse_step);
    get(j, "mlp_only_layers", c.mlp_only_layers);
  }
  if (c.arch == Arch::Qwen2Moe) get(j, "shared_expert_intermediate_size", c.shared_expert_intermediate_size);
  if (c.arch == Arch::Olmoe) {
    // transformers' OLMoE supports clip_qkv; this engine does not, so refuse rather than differ.
    MOE_CHECK(!j.contains("clip_qkv") || j["clip_qkv"].is_null(), "config.json: olmoe clip_qkv is not supported");
  }
  if (j.contains("moe_cpp")) {
    const json& x = j["moe_cpp"];
    MOE_CHECK(x.is_object(), "config.json: 'moe_cpp' must be an object");
    for (auto it = x.begin(); it != x.end(); ++it)
      MOE_CHECK(it.key() == "router" || it.key() == "balance", "config.json: unknown key 'moe_cpp.", it.key(), "'");
    // Parse with the layer-config reader (same field names as docs/MOE_LAYER.md).
    json layer = {{"d_model", c.hidden_size}, {"d_ff", 1}, {"n_experts", c.num_experts}};
    if (x.contains("router")) layer["router"] = x["router"];
    if (x.contains("balance")) layer["balance"] = x["balance"];
    if (!layer.contains("router") || !layer["router"].contains("top_k")) layer["router"]["top_k"] = c.num_experts_per_tok;
    MoEConfig m = moe_config_from_json(layer.dump());
    c.router_extra = m.router;
    c.balance_extra = m.balance;
    c.has_extra = true;
  }
  c.validate();
  return c;
}

ModelConfig load_model_config(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  MOE_CHECK(f.good(), "cannot open model config '", path, "'");
  std::stringstream ss;
  ss << f.rdbuf();
  try {
    return model_config_from_json(ss.str());
  } catch (const Error& e) {
    // The path replaces the generic "config.json: " that the parser's messages start with.
    std::string msg = e.what();
    const std::string generic = "config.json: ";
    if (msg.rfind(generic, 0) == 0) msg.erase(0, generic.size());
    throw Error(cat(path, ": ", msg));
  }
}

std::string to_json(const ModelConfig& c) {
  json j = {{"model_type", arch_name(c.arch)},
            {"architectures", {hf_class(c.arch)}},
            {"vocab_size", c.vocab_size},
            {"hidden_size", c.hidden_size},
            {"num_hidden_layers", c.num_hidden_layers},
            {"num_attention_heads", c.num_attention_heads},
            {"num_key_value_heads", c.num_key_value_heads},
            {"head_dim", c.head_dim_or_default()},
            {"intermediate_size", c.intermediate_size},
            {"num_experts_per_tok", c.num_experts_per_tok},
            {"rope_theta", c.rope_theta},
            {"rms_norm_eps", c.rms_norm_eps},
            {"max_position_embeddings", c.max_position_embeddings},
            {"tie_word_embeddings", c.tie_word_embeddings},
            {"router_aux_loss_coef", c.router_aux_loss_coef},
            {"initializer_range", c.initializer_range},
            {"hidden_act", "silu"},
            {"attention_dropout", 0.0},
            {"use_cache", true},
            {"torch_dtype", "float32"}};
  if (c.bos_token_id >= 0) j["bos_token_id"] = c.bos_token_id;
  if (c.eos_token_id >= 0) j["eos_token_id"] = c.eos_token_id;
  if (c.router_z_loss_coef > 0) j["router_z_loss_coef"] = c.router_z_loss_coef;
  switch (c.arch) {
    case Arch::Mixtral:
      j["num_local_experts"] = c.num_experts;
      j["sliding_window"] = nullptr;
      j["router_jitter_noise"] = 0.0;
      break;
    case Arch::Qwen2Moe:
    case Arch::Qwen3Moe:
      j["num_experts"] = c.num_experts;
      j["moe_intermediate_size"] = c.moe_intermediate_size;
      j["norm_topk_prob"] = c.norm_topk_prob;
      j["decoder_sparse_step"] = c.decoder_sparse_step;
      j["mlp_only_layers"] = c.mlp_only_layers;
      j["use_sliding_window"] = false;
      j["sliding_window"] = nullptr;
      if (c.arch == Arch::Qwen2Moe) {
        j["shared_expert_intermediate_size"] = c.shared_expert_intermediate_size;
        j["qkv_bias"] = true;
      } else {
        j["attention_bias"] = false;
      }
      break;
    case Arch::Olmoe:
      j["num_experts"] = c.num_experts;
      j["norm_topk_prob"] = c.norm_topk_prob;
      j["clip_qkv"] = nullptr;
      j["attention_bias"] = false;
      break;
  }
  if (c.has_extra) {
    const json layer = json::parse(moe::to_json(c.moe_layer_config()));
    j["moe_cpp"] = {{"router", layer["router"]}, {"balance", layer["balance"]}};
  }
  return j.dump(2);
}

}  // namespace moe::model
