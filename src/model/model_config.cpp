#include "moe/model/model_config.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>
#include <type_traits>

#include "moe/core/error.h"

namespace moe::model {

namespace {
const std::pair<const char*, Arch> kArch[] = {{"mixtral", Arch::Mixtral},
                                              {"qwen2_moe", Arch::Qwen2Moe},
                                              {"qwen3_moe", Arch::Qwen3Moe},
                                              {"olmoe", Arch::Olmoe},
                                              {"deepseek_v3", Arch::DeepseekV3}};

const char* hf_class(Arch a) {
  switch (a) {
    case Arch::Mixtral:
      return "MixtralForCausalLM";
    case Arch::Qwen2Moe:
      return "Qwen2MoeForCausalLM";
    case Arch::Qwen3Moe:
      return "Qwen3MoeForCausalLM";
    case Arch::Olmoe:
      return "OlmoeForCausalLM";
    case Arch::DeepseekV3:
      return "DeepseekV3ForCausalLM";
  }
  return "";
}

using json = nlohmann::json;

// An integer read from a float (4096.0) or a large unsigned value must be whole and fit V: the
// conversion of 1e30 to int64_t is undefined behaviour, and 2^64 - 1 would wrap to -1.
template <typename V>
void check_integer_range(const json& v, const std::string& what) {
  if constexpr (std::is_integral_v<V> && !std::is_same_v<V, bool>) {
    constexpr bool is_signed = std::numeric_limits<V>::is_signed;
    const double limit = std::ldexp(1.0, std::numeric_limits<V>::digits);  // 2^63 for int64_t
    if (v.is_number_float()) {
      const double x = v.get<double>();
      MOE_CHECK(std::isfinite(x) && x == std::floor(x) && x >= (is_signed ? -limit : 0.0) && x < limit, what,
                ": expected an integer, got ", v.dump());
    } else if (v.is_number_unsigned()) {
      MOE_CHECK(v.get<uint64_t>() <= static_cast<uint64_t>(std::numeric_limits<V>::max()), what, ": ",
                v.dump(), " is out of range");
    }
  }
}

// Reads j[key] into out when present and not null; a wrong type is an error naming the key.
template <typename V>
bool get(const json& j, const char* key, V& out) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return false;
  check_integer_range<V>(*it, cat("config.json: key '", key, "'"));
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
  MOE_CHECK(it->is_number_integer(), "config.json: key '", key, "': expected an integer, got ",
            it->type_name());
  return it->get<int64_t>();
}

// The rope scaling dict of transformers 4 ("rope_scaling", with "rope_theta" beside it) or 5
// ("rope_parameters", rope_theta inside). Keys that would change the math and are not supported are
// an error naming them.
void parse_rope_scaling(const json& j, ModelConfig& c) {
  const char* key =
      j.contains("rope_parameters") && !j["rope_parameters"].is_null() ? "rope_parameters" : "rope_scaling";
  if (!j.contains(key) || j[key].is_null()) return;
  const json& r = j[key];
  MOE_CHECK(r.is_object(), "config.json: key '", key, "' must be an object or null");
  RopeScaling& s = c.rope_scaling;
  for (auto it = r.begin(); it != r.end(); ++it) {
    const std::string k = it.key();
    const std::string full = cat(key, ".", k);
    auto num = [&](double& out) {
      if (it->is_null()) return;
      MOE_CHECK(it->is_number(), "config.json: key '", full, "': expected a number, got ", it->type_name());
      out = it->get<double>();
    };
    if (k == "type" || k == "rope_type") {
      MOE_CHECK(it->is_string(), "config.json: key '", full, "': expected a string");
      s.type = it->get<std::string>();
      MOE_CHECK(s.type == "default" || s.type == "yarn", "config.json: key '", full, "': rope scaling '",
                s.type, "' is not supported for deepseek_v3 (supported: yarn, default)");
    } else if (k == "rope_theta") {
      num(c.rope_theta);
    } else if (k == "factor") {
      num(s.factor);
    } else if (k == "mscale") {
      num(s.mscale);
    } else if (k == "mscale_all_dim") {
      num(s.mscale_all_dim);
    } else if (k == "attention_factor") {
      num(s.attention_factor);
    } else if (k == "beta_fast") {
      num(s.beta_fast);
    } else if (k == "beta_slow") {
      num(s.beta_slow);
    } else if (k == "original_max_position_embeddings") {
      double v = 0;
      num(v);
      s.original_max_position_embeddings = static_cast<int64_t>(v);
    } else if (k == "truncate") {
      MOE_CHECK(it->is_boolean(), "config.json: key '", full, "': expected a boolean");
      s.truncate = it->get<bool>();
    } else if (k == "partial_rotary_factor") {
      double v = 1;
      num(v);
      MOE_CHECK(v == 1.0, "config.json: key '", full, "' = ", v, " is not supported (only 1)");
    } else {
      throw Error(cat("config.json: key '", full, "' is not supported for deepseek_v3"));
    }
  }
}

// Architectures without rope scaling: rope_theta may sit in transformers 5's "rope_parameters";
// any scaling there or in "rope_scaling" would change the math, so it is refused.
void parse_plain_rope(const json& j, ModelConfig& c) {
  for (const char* key : {"rope_parameters", "rope_scaling"}) {
    if (!j.contains(key) || j[key].is_null()) continue;
    const json& r = j[key];
    MOE_CHECK(r.is_object(), "config.json: key '", key, "' must be an object or null");
    for (auto it = r.begin(); it != r.end(); ++it) {
      const std::string k = it.key();
      if (k == "rope_theta") {
        MOE_CHECK(it->is_number(), "config.json: key '", key, ".rope_theta': expected a number");
        c.rope_theta = it->get<double>();
      } else if (k == "rope_type" || k == "type") {
        MOE_CHECK(*it == "default", "config.json: key '", key, ".", k, "': rope scaling ", it->dump(),
                  " is not supported for ", arch_name(c.arch));
      } else {
        throw Error(cat("config.json: key '", key, ".", k, "' (rope scaling) is not supported for ",
                        arch_name(c.arch)));
      }
    }
  }
}

void parse_deepseek_v3(const json& j, ModelConfig& c) {
  require(j, "n_routed_experts", c.num_experts);
  require(j, "moe_intermediate_size", c.moe_intermediate_size);
  require(j, "kv_lora_rank", c.kv_lora_rank);
  require(j, "qk_nope_head_dim", c.qk_nope_head_dim);
  require(j, "qk_rope_head_dim", c.qk_rope_head_dim);
  require(j, "v_head_dim", c.v_head_dim);
  c.norm_topk_prob = true;  // transformers' defaults where a key is absent
  c.n_shared_experts = 1;
  c.first_k_dense_replace = 3;
  c.n_group = 8;
  c.topk_group = 4;
  c.routed_scaling_factor = 2.5;
  c.router_aux_loss_coef = 0.0;  // aux-loss-free; "router_aux_loss_coef" is read below when present
  get(j, "router_aux_loss_coef", c.router_aux_loss_coef);
  get(j, "norm_topk_prob", c.norm_topk_prob);
  get(j, "n_shared_experts", c.n_shared_experts);
  get(j, "first_k_dense_replace", c.first_k_dense_replace);
  get(j, "n_group", c.n_group);
  get(j, "topk_group", c.topk_group);
  get(j, "routed_scaling_factor", c.routed_scaling_factor);
  get(j, "q_lora_rank", c.q_lora_rank);  // null: plain q_proj
  get(j, "rope_interleave", c.rope_interleave);
  get(j, "attention_bias", c.mla_bias);
  c.head_dim = c.qk_rope_head_dim;  // transformers sets head_dim so; a written head_dim is ignored
  parse_rope_scaling(j, c);
  if (j.contains("hidden_act") && !j["hidden_act"].is_null())
    MOE_CHECK(j["hidden_act"] == "silu", "config.json: key 'hidden_act': only silu is supported, got ",
              j["hidden_act"].dump());
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

// YaRN as transformers' _compute_yarn_parameters (modeling_rope_utils.py) and DeepseekV3Attention.
namespace {
double yarn_get_mscale(double scale, double mscale) {
  return scale <= 1 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0;
}
}  // namespace

std::vector<double> ModelConfig::rope_inv_freq() const {
  const int64_t dim = rope_dim(), half = dim / 2;
  std::vector<double> inv(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i)
    inv[i] = 1.0 / std::pow(rope_theta, static_cast<double>(2 * i) / static_cast<double>(dim));
  if (!rope_scaling.yarn()) return inv;
  const RopeScaling& r = rope_scaling;
  const double base = rope_theta, d = static_cast<double>(dim);
  const double omax = static_cast<double>(
      r.original_max_position_embeddings > 0 ? r.original_max_position_embeddings : max_position_embeddings);
  auto correction_dim = [&](double rot) {
    return d * std::log(omax / (rot * 2 * M_PI)) / (2 * std::log(base));
  };
  double low = correction_dim(r.beta_fast), high = correction_dim(r.beta_slow);
  if (r.truncate) low = std::floor(low), high = std::ceil(high);
  low = std::max(low, 0.0), high = std::min(high, d - 1);
  if (low == high) high += 0.001;  // transformers' guard against a zero-width ramp
  for (int64_t i = 0; i < half; ++i) {
    const double ramp = std::clamp((static_cast<double>(i) - low) / (high - low), 0.0, 1.0);
    const double extrapolation = 1.0 - ramp;  // weight of the unscaled frequency
    inv[i] = inv[i] / r.factor * (1.0 - extrapolation) + inv[i] * extrapolation;
  }
  return inv;
}

double ModelConfig::rope_attention_factor() const {
  if (!rope_scaling.yarn()) return 1.0;
  const RopeScaling& r = rope_scaling;
  if (r.attention_factor > 0) return r.attention_factor;
  if (r.mscale != 0 && r.mscale_all_dim != 0)
    return yarn_get_mscale(r.factor, r.mscale) / yarn_get_mscale(r.factor, r.mscale_all_dim);
  return yarn_get_mscale(r.factor, 1.0);
}

double ModelConfig::attention_scale() const {
  double scale = 1.0 / std::sqrt(static_cast<double>(qk_head_dim()));
  if (mla() && rope_scaling.yarn() && rope_scaling.mscale_all_dim != 0) {
    const double m = yarn_get_mscale(rope_scaling.factor, rope_scaling.mscale_all_dim);
    scale *= m * m;
  }
  return scale;
}

bool ModelConfig::is_moe_layer(int64_t layer) const {
  if (arch == Arch::Mixtral || arch == Arch::Olmoe) return true;
  if (arch == Arch::DeepseekV3) return layer >= first_k_dense_replace;
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
  if (arch == Arch::DeepseekV3) {
    // DeepseekV3TopkRouter: sigmoid scores, bias for selection only, best topk_group groups by the
    // sum of their top-2 biased scores, weights = unbiased scores (renormalised) · scaling.
    m.n_shared_experts = n_shared_experts;
    m.d_ff_shared = moe_intermediate_size;
    m.router.routing = RouterType::TokenChoice;
    m.router.score = ScoreFn::Sigmoid;
    m.router.order = TopkOrder::ScoreThenTopk;
    m.router.use_bias = true;
    m.router.n_groups = static_cast<int>(n_group);
    m.router.topk_groups = static_cast<int>(topk_group);
    m.router.group_score = GroupScore::SumTop2;
    m.router.scaling = routed_scaling_factor;
  }
  m.router.top_k = static_cast<int>(num_experts_per_tok);
  m.router.normalize = arch == Arch::Mixtral ? true : norm_topk_prob;
  m.balance.aux_coef = router_aux_loss_coef;
  m.balance.z_coef = router_z_loss_coef;
  return m;
}

namespace {
// Upper bounds of a config's sizes: several times the largest published MoE models (vocabularies
// of ~260K, widths of ~16K, ~100 layers, ~400 experts), low enough that every product the engine
// forms from them (a layer's expert weights E·3·d_ff·d, the parameter count) fits in int64, so a
// hostile or mistyped config.json is refused before anything is allocated.
struct SizeBound {
  const char* key;
  int64_t value, max;
};
constexpr int64_t kMaxParams = int64_t{1} << 41;  // 2.2·10^12 parameters

void check_bounds(std::initializer_list<SizeBound> bounds) {
  for (const SizeBound& b : bounds)
    MOE_CHECK(b.value <= b.max, "config.json: ", b.key, " = ", b.value,
              " is larger than this engine's limit ", b.max);
}
}  // namespace

void ModelConfig::validate() const {
  check_bounds({{"vocab_size", vocab_size, int64_t{1} << 22},
                {"hidden_size", hidden_size, int64_t{1} << 16},
                {"num_hidden_layers", num_hidden_layers, 1024},
                {"num_attention_heads", num_attention_heads, 1024},
                {"num_key_value_heads", num_key_value_heads, 1024},
                {"head_dim", head_dim, 4096},
                {"intermediate_size", intermediate_size, int64_t{1} << 18},
                {"moe_intermediate_size", moe_intermediate_size, int64_t{1} << 18},
                {"shared_expert_intermediate_size", shared_expert_intermediate_size, int64_t{1} << 18},
                {"num_experts", num_experts, int64_t{1} << 14},
                {"n_shared_experts", n_shared_experts, 64},
                {"n_group", n_group, int64_t{1} << 14},
                {"max_position_embeddings", max_position_embeddings, int64_t{1} << 24},
                {"q_lora_rank", q_lora_rank, int64_t{1} << 16},
                {"kv_lora_rank", kv_lora_rank, int64_t{1} << 16},
                {"qk_nope_head_dim", qk_nope_head_dim, 4096},
                {"qk_rope_head_dim", qk_rope_head_dim, 4096},
                {"v_head_dim", v_head_dim, 4096}});
  MOE_CHECK(vocab_size > 0, "config.json: vocab_size must be > 0, got ", vocab_size);
  MOE_CHECK(hidden_size > 0, "config.json: hidden_size must be > 0, got ", hidden_size);
  MOE_CHECK(num_hidden_layers > 0, "config.json: num_hidden_layers must be > 0, got ", num_hidden_layers);
  MOE_CHECK(num_attention_heads > 0, "config.json: num_attention_heads must be > 0, got ",
            num_attention_heads);
  MOE_CHECK(num_key_value_heads > 0 && num_attention_heads % num_key_value_heads == 0,
            "config.json: num_key_value_heads = ", num_key_value_heads,
            " must be > 0 and divide num_attention_heads = ", num_attention_heads);
  MOE_CHECK(head_dim > 0 || hidden_size % num_attention_heads == 0,
            "config.json: hidden_size = ", hidden_size,
            " is not divisible by num_attention_heads = ", num_attention_heads, " and head_dim is not set");
  MOE_CHECK(mla() || head_dim_or_default() % 2 == 0,
            "config.json: head_dim must be even for rotary embeddings, got ", head_dim_or_default());
  MOE_CHECK(arch != Arch::Olmoe || head_dim == 0 || head_dim * num_attention_heads == hidden_size,
            "config.json: olmoe needs head_dim · num_attention_heads == hidden_size");
  MOE_CHECK(num_experts > 0, "config.json: the number of experts must be > 0, got ", num_experts);
  MOE_CHECK(num_experts_per_tok >= 1 && num_experts_per_tok <= num_experts,
            "config.json: num_experts_per_tok must be in [1, ", num_experts, "], got ", num_experts_per_tok);
  MOE_CHECK(expert_width() > 0, "config.json: ",
            (arch == Arch::Mixtral || arch == Arch::Olmoe) ? "intermediate_size" : "moe_intermediate_size",
            " (the expert width) must be > 0, got ", expert_width());
  MOE_CHECK(decoder_sparse_step >= 1, "config.json: decoder_sparse_step must be >= 1, got ",
            decoder_sparse_step);
  for (int64_t l : mlp_only_layers)
    MOE_CHECK(l >= 0 && l < num_hidden_layers, "config.json: mlp_only_layers entry ", l,
              " is not a layer index");
  bool any_dense = false;
  for (int64_t l = 0; l < num_hidden_layers; ++l) any_dense = any_dense || !is_moe_layer(l);
  MOE_CHECK(!any_dense || intermediate_size > 0, "config.json: dense layers need intermediate_size > 0");
  MOE_CHECK(std::isfinite(rope_theta) && rope_theta > 0, "config.json: rope_theta must be > 0, got ",
            rope_theta);
  MOE_CHECK(std::isfinite(rms_norm_eps) && rms_norm_eps > 0, "config.json: rms_norm_eps must be > 0, got ",
            rms_norm_eps);
  MOE_CHECK(max_position_embeddings > 0, "config.json: max_position_embeddings must be > 0");
  MOE_CHECK(initializer_range > 0, "config.json: initializer_range must be > 0");
  if (mla()) validate_mla();
  // bos/eos ids are metadata (transformers' default configs carry ids of the full-size vocabulary
  // into tiny test models); generation stops on the tokenizer's end-of-text token.
  moe_layer_config().validate();
  MOE_CHECK(n_params() <= kMaxParams, "config.json: the model would have ", n_params(),
            " parameters, more than this engine's limit ", kMaxParams);
}

void ModelConfig::validate_mla() const {
  const char* p = "config.json: deepseek_v3: ";
  MOE_CHECK(num_key_value_heads == num_attention_heads, p, "num_key_value_heads = ", num_key_value_heads,
            " must equal num_attention_heads = ", num_attention_heads,
            " (latent attention decompresses keys and values for every head)");
  MOE_CHECK(q_lora_rank >= 0, p, "q_lora_rank must be > 0 or null, got ", q_lora_rank);
  MOE_CHECK(kv_lora_rank > 0, p, "kv_lora_rank must be > 0, got ", kv_lora_rank);
  MOE_CHECK(qk_nope_head_dim >= 0, p, "qk_nope_head_dim must be >= 0, got ", qk_nope_head_dim);
  MOE_CHECK(qk_rope_head_dim > 0 && qk_rope_head_dim % 2 == 0, p,
            "qk_rope_head_dim must be even and > 0, got ", qk_rope_head_dim);
  MOE_CHECK(v_head_dim > 0, p, "v_head_dim must be > 0, got ", v_head_dim);
  MOE_CHECK(head_dim == 0 || head_dim == qk_rope_head_dim, p, "head_dim = ", head_dim,
            " must equal qk_rope_head_dim = ", qk_rope_head_dim);
  MOE_CHECK(n_shared_experts >= 0, p, "n_shared_experts must be >= 0, got ", n_shared_experts);
  MOE_CHECK(first_k_dense_replace >= 0 && first_k_dense_replace <= num_hidden_layers, p,
            "first_k_dense_replace must be in [0, num_hidden_layers = ", num_hidden_layers, "], got ",
            first_k_dense_replace);
  MOE_CHECK(n_group >= 1 && num_experts % n_group == 0, p, "n_group = ", n_group,
            " must be >= 1 and divide n_routed_experts = ", num_experts);
  MOE_CHECK(
      num_experts / n_group >= 2, p, "each of the n_group = ", n_group,
      " expert groups needs >= 2 experts (the group score is the sum of its top 2), n_routed_experts = ",
      num_experts);
  MOE_CHECK(topk_group >= 1 && topk_group <= n_group, p, "topk_group must be in [1, n_group = ", n_group,
            "], got ", topk_group);
  MOE_CHECK(num_experts_per_tok <= topk_group * (num_experts / n_group), p,
            "num_experts_per_tok = ", num_experts_per_tok, " exceeds the ",
            topk_group * (num_experts / n_group), " experts of the topk_group eligible groups");
  MOE_CHECK(std::isfinite(routed_scaling_factor) && routed_scaling_factor > 0, p,
            "routed_scaling_factor must be > 0, got ", routed_scaling_factor);
  const RopeScaling& r = rope_scaling;
  MOE_CHECK(r.type == "default" || r.type == "yarn", p, "rope_scaling type '", r.type,
            "' is not supported (supported: yarn, or null)");
  if (r.yarn()) {
    MOE_CHECK(std::isfinite(r.factor) && r.factor > 0, p, "rope_scaling.factor must be > 0, got ", r.factor);
    MOE_CHECK(r.original_max_position_embeddings >= 0, p,
              "rope_scaling.original_max_position_embeddings must be > 0, got ",
              r.original_max_position_embeddings);
    MOE_CHECK(std::isfinite(r.beta_fast) && r.beta_fast > 0 && std::isfinite(r.beta_slow) && r.beta_slow > 0,
              p, "rope_scaling.beta_fast and beta_slow must be > 0, got ", r.beta_fast, " and ", r.beta_slow);
    MOE_CHECK(
        std::isfinite(r.mscale) && std::isfinite(r.mscale_all_dim) && r.attention_factor >= 0, p,
        "rope_scaling mscale, mscale_all_dim and attention_factor must be finite (attention_factor >= 0)");
  }
}

int64_t ModelConfig::attention_params() const {
  const int64_t d = hidden_size, hd = head_dim_or_default();
  const int64_t hq = num_attention_heads, hkv = num_key_value_heads;
  if (mla()) {
    const int64_t qk = qk_head_dim(), b = mla_bias ? 1 : 0;
    int64_t attn = q_lora_rank > 0 ? d * q_lora_rank + b * q_lora_rank + q_lora_rank + q_lora_rank * hq * qk
                                   : d * hq * qk;
    attn += (d + b) * (kv_lora_rank + qk_rope_head_dim) + kv_lora_rank;  // kv_a_proj_with_mqa, kv_a_layernorm
    attn += kv_lora_rank * hq * (qk_nope_head_dim + v_head_dim);         // kv_b_proj
    attn += hq * v_head_dim * d + b * d;                                 // o_proj
    return attn;
  }
  int64_t attn = d * hq * hd * 2 + d * hkv * hd * 2;
  if (attention_bias()) attn += hq * hd + 2 * hkv * hd;
  if (qk_norm() == QkNorm::PerHead) attn += 2 * hd;
  if (qk_norm() == QkNorm::Full) attn += hq * hd + hkv * hd;
  return attn;
}

int64_t ModelConfig::n_params() const {
  const int64_t d = hidden_size;
  const int64_t attn = attention_params();
  const MoEConfig m = moe_layer_config();
  const int64_t moe =
      m.n_experts * 3 * m.d_ff * d + m.n_experts * d + 3 * m.shared_width() * d + (m.shared_gate ? d : 0);
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
  } catch (const json::exception& e) {  // a syntax error, or a number out of range (1e400)
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
  } else if (c.arch == Arch::DeepseekV3) {
    parse_deepseek_v3(j, c);
  } else {
    // transformers 5 writes num_local_experts (num_experts is its alias there)
    if (!get(j, "num_experts", c.num_experts)) require(j, "num_local_experts", c.num_experts);
    get(j, "norm_topk_prob", c.norm_topk_prob);
  }
  if (c.arch != Arch::DeepseekV3) parse_plain_rope(j, c);
  if (c.arch == Arch::Qwen2Moe || c.arch == Arch::Qwen3Moe) {
    require(j, "moe_intermediate_size", c.moe_intermediate_size);
    get(j, "decoder_sparse_step", c.decoder_sparse_step);
    get(j, "mlp_only_layers", c.mlp_only_layers);
  }
  if (c.arch == Arch::Qwen2Moe) get(j, "shared_expert_intermediate_size", c.shared_expert_intermediate_size);
  if (c.arch == Arch::Olmoe) {
    // transformers' OLMoE supports clip_qkv; this engine does not, so refuse rather than differ.
    MOE_CHECK(!j.contains("clip_qkv") || j["clip_qkv"].is_null(),
              "config.json: olmoe clip_qkv is not supported");
  }
  if (j.contains("moe_cpp")) {
    const json& x = j["moe_cpp"];
    MOE_CHECK(x.is_object(), "config.json: 'moe_cpp' must be an object");
    for (auto it = x.begin(); it != x.end(); ++it)
      MOE_CHECK(it.key() == "router" || it.key() == "balance", "config.json: unknown key 'moe_cpp.", it.key(),
                "'");
    // Parse with the layer-config reader (same field names as docs/MOE_LAYER.md).
    json layer = {{"d_model", c.hidden_size}, {"d_ff", 1}, {"n_experts", c.num_experts}};
    if (x.contains("router")) layer["router"] = x["router"];
    if (x.contains("balance")) layer["balance"] = x["balance"];
    if (!layer.contains("router") || !layer["router"].contains("top_k"))
      layer["router"]["top_k"] = c.num_experts_per_tok;
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

namespace {
// The deepseek_v3 keys, as transformers writes them; rope scaling in both spellings so that
// transformers 4 ("rope_scaling" beside "rope_theta") and 5 ("rope_parameters") read it.
void to_json_deepseek_v3(const ModelConfig& c, json& j) {
  j["n_routed_experts"] = c.num_experts;
  j["moe_intermediate_size"] = c.moe_intermediate_size;
  j["n_shared_experts"] = c.n_shared_experts;
  j["first_k_dense_replace"] = c.first_k_dense_replace;
  j["n_group"] = c.n_group;
  j["topk_group"] = c.topk_group;
  j["norm_topk_prob"] = c.norm_topk_prob;
  j["routed_scaling_factor"] = c.routed_scaling_factor;
  j["q_lora_rank"] = c.q_lora_rank > 0 ? json(c.q_lora_rank) : json(nullptr);
  j["kv_lora_rank"] = c.kv_lora_rank;
  j["qk_nope_head_dim"] = c.qk_nope_head_dim;
  j["qk_rope_head_dim"] = c.qk_rope_head_dim;
  j["v_head_dim"] = c.v_head_dim;
  j["head_dim"] = c.qk_rope_head_dim;
  j["rope_interleave"] = c.rope_interleave;
  j["attention_bias"] = c.mla_bias;
  json rope = nullptr;
  if (c.rope_scaling.yarn()) {
    const RopeScaling& r = c.rope_scaling;
    rope = {{"type", "yarn"},           {"rope_type", "yarn"},      {"factor", r.factor},
            {"beta_fast", r.beta_fast}, {"beta_slow", r.beta_slow}, {"truncate", r.truncate}};
    if (r.mscale != 0) rope["mscale"] = r.mscale;
    if (r.mscale_all_dim != 0) rope["mscale_all_dim"] = r.mscale_all_dim;
    if (r.attention_factor > 0) rope["attention_factor"] = r.attention_factor;
    if (r.original_max_position_embeddings > 0)
      rope["original_max_position_embeddings"] = r.original_max_position_embeddings;
  }
  j["rope_scaling"] = rope;
  json params = rope.is_null() ? json{{"rope_type", "default"}} : rope;
  params.erase("type");
  params["rope_theta"] = c.rope_theta;
  j["rope_parameters"] = params;
}
}  // namespace

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
    case Arch::DeepseekV3:
      break;
    case Arch::Olmoe:
      j["num_experts"] = c.num_experts;
      j["norm_topk_prob"] = c.norm_topk_prob;
      j["clip_qkv"] = nullptr;
      j["attention_bias"] = false;
      break;
  }
  if (c.arch == Arch::DeepseekV3) to_json_deepseek_v3(c, j);
  if (c.has_extra) {
    const json layer = json::parse(moe::to_json(c.moe_layer_config()));
    j["moe_cpp"] = {{"router", layer["router"]}, {"balance", layer["balance"]}};
  }
  return j.dump(2);
}

}  // namespace moe::model
