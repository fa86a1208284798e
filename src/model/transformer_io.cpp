// Parameters of the transformer: creation, initialisation, Hugging Face names and checkpoints.
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>

#include "model/hf_names.h"
#include "moe/core/error.h"
#include "moe/core/rng.h"
#include "moe/model/low_rank.h"
#include "moe/model/quantized.h"
#include "moe/model/safetensors.h"
#include "moe/model/transformer.h"

namespace moe::model {

namespace fs = std::filesystem;

namespace {
using hf_names::layer_prefix;
using hf_names::moe_prefix;

const char* kSharedSuffix[4] = {".shared_expert.gate_proj.weight", ".shared_expert.up_proj.weight",
                                ".shared_expert.down_proj.weight", ".shared_expert_gate.weight"};
// deepseek_v3: one ungated MLP of width n_shared_experts · moe_intermediate_size.
const char* kSharedExpertsSuffix[4] = {".shared_experts.gate_proj.weight", ".shared_experts.up_proj.weight",
                                       ".shared_experts.down_proj.weight", ""};
const char* const kBiasSuffix = hf_names::kRouterBiasSuffix;
}  // namespace

std::string moe_block_prefix(const ModelConfig& c, int64_t layer) { return moe_prefix(c, layer); }

std::array<std::string, 3> expert_weight_names(const ModelConfig& c, int64_t layer, int64_t expert) {
  std::string n[3];
  hf_names::expert_names(c, layer, expert, n);
  return {n[0], n[1], n[2]};
}

Transformer::Transformer(ModelConfig cfg, DType dtype, bool external_experts, ExpertParallel ep)
    : cfg_(std::move(cfg)), dtype_(dtype), external_experts_(external_experts), ep_(std::move(ep)) {
  cfg_.validate();
  MOE_CHECK(dtype == DType::F32 || dtype == DType::F64, "transformer: dtype must be f32 or f64, got ",
            dtype_name(dtype));
  build_params();
}

Transformer::Transformer(ModelConfig cfg, bool external_experts, ExpertParallel ep, Unallocated u)
    : cfg_(std::move(cfg)),
      dtype_(DType::F32),
      external_experts_(external_experts),
      ep_(std::move(ep)),
      allocate_(false),
      allocate_experts_(u.experts) {
  cfg_.validate();
  build_params();
}

int Transformer::add_param(const std::string& name, Tensor value, bool decay, Shape shape) {
  value.set_name(name);
  NamedParam p;
  p.name = name;
  p.value = std::move(value);
  p.decay = decay;
  params_.push_back(std::move(p));
  shapes_.push_back(std::move(shape));
  return static_cast<int>(params_.size()) - 1;
}

int Transformer::add_matrix(const std::string& name, int64_t rows, int64_t cols) {
  return add_param(name, allocate_ ? Tensor::zeros({rows, cols}, dtype_) : Tensor(), true, {rows, cols});
}

void Transformer::check_masters(const char* what) const {
  MOE_CHECK(!masters_released_, what,
            ": this model was loaded for inference only and holds its linear and expert weights once, packed "
            "(release_masters: no f32 master weights); load it with model::load_pretrained for training, "
            "saving or another precision");
}

void Transformer::build_params() {
  const ModelConfig& c = cfg_;
  const int64_t V = c.vocab_size, d = c.hidden_size, hd = c.head_dim_or_default();
  const int64_t Dq = c.num_attention_heads * hd, Dk = c.num_key_value_heads * hd;
  auto vec = [&](int64_t n, double v) { return Tensor::full({n}, v, dtype_); };
  auto add_vec = [&](const std::string& name, int64_t n, double v) {
    return add_param(name, vec(n, v), false, {n});
  };
  index_.embed = add_matrix("model.embed_tokens.weight", V, d);
  index_.layers.resize(static_cast<size_t>(c.num_hidden_layers));
  moe_.resize(static_cast<size_t>(c.num_hidden_layers));
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    LayerIndex& P = index_.layers[l];
    const std::string pre = layer_prefix(l);
    P.ln1 = add_vec(pre + "input_layernorm.weight", d, 1.0);
    if (c.mla()) {
      build_mla_params(l);
    } else {
      P.q_w = add_matrix(pre + "self_attn.q_proj.weight", Dq, d);
      P.k_w = add_matrix(pre + "self_attn.k_proj.weight", Dk, d);
      P.v_w = add_matrix(pre + "self_attn.v_proj.weight", Dk, d);
      P.o_w = add_matrix(pre + "self_attn.o_proj.weight", d, Dq);
      if (c.attention_bias()) {
        P.q_b = add_vec(pre + "self_attn.q_proj.bias", Dq, 0.0);
        P.k_b = add_vec(pre + "self_attn.k_proj.bias", Dk, 0.0);
        P.v_b = add_vec(pre + "self_attn.v_proj.bias", Dk, 0.0);
      }
      if (c.qk_norm() != QkNorm::None) {
        const bool per_head = c.qk_norm() == QkNorm::PerHead;
        P.q_norm = add_vec(pre + "self_attn.q_norm.weight", per_head ? hd : Dq, 1.0);
        P.k_norm = add_vec(pre + "self_attn.k_norm.weight", per_head ? hd : Dk, 1.0);
      }
    }
    P.ln2 = add_vec(pre + "post_attention_layernorm.weight", d, 1.0);
    if (c.is_moe_layer(l)) {
      const MoEConfig mc = c.moe_layer_config();
      moe_[l] = allocate_experts_ ? std::make_unique<MoELayer>(mc, dtype_, backend_, external_experts_, ep_)
                                  : MoELayer::without_expert_weights(mc, backend_, external_experts_, ep_);
      MoEParams& mp = moe_[l]->params();
      const std::string mpre = moe_prefix(c, l);
      const int64_t El = moe_[l]->local_experts(), F = mc.d_ff, Fs = mc.shared_width();
      const bool gated = mc.activation == kernels::Activation::SwiGLU;
      P.moe[0] = add_param(mpre + ".gate.weight", mp.router_w, true, mp.router_w.shape());
      if (!external_experts_) {
        P.moe[1] = add_param(mpre + ".experts.w_gate", mp.w_gate, true, gated ? Shape{El, F, d} : Shape{});
        P.moe[2] = add_param(mpre + ".experts.w_up", mp.w_up, true, {El, F, d});
        P.moe[3] = add_param(mpre + ".experts.w_down", mp.w_down, true, {El, d, F});
      }
      const Tensor* shared[4] = {&mp.shared_w_gate, &mp.shared_w_up, &mp.shared_w_down, &mp.shared_gate_w};
      const Shape shared_shape[4] = {{Fs, d}, {Fs, d}, {d, Fs}, {1, d}};
      const bool present[4] = {Fs > 0 && gated, Fs > 0, Fs > 0, Fs > 0 && mc.shared_gate};
      for (int i = 0; i < 4; ++i)
        if (present[i])
          P.moe[4 + i] = add_param(mpre + (c.mla() ? kSharedExpertsSuffix : kSharedSuffix)[i], *shared[i],
                                   true, shared_shape[i]);
    } else {
      const int64_t F = c.intermediate_size;
      P.gate = add_matrix(pre + "mlp.gate_proj.weight", F, d);
      P.up = add_matrix(pre + "mlp.up_proj.weight", F, d);
      P.down = add_matrix(pre + "mlp.down_proj.weight", d, F);
    }
  }
  index_.norm = add_vec("model.norm.weight", d, 1.0);
  index_.head = c.tie_word_embeddings ? index_.embed : add_matrix("lm_head.weight", V, d);
}

// Latent attention of layer l (deepseek_v3), names as transformers' DeepseekV3Attention.
void Transformer::build_mla_params(int64_t l) {
  const ModelConfig& c = cfg_;
  LayerIndex& P = index_.layers[l];
  const std::string pre = layer_prefix(l) + "self_attn.";
  const int64_t d = c.hidden_size, H = c.num_attention_heads, qk = c.qk_head_dim();
  const int64_t kva = c.kv_lora_rank + c.qk_rope_head_dim, kvb = H * (c.qk_nope_head_dim + c.v_head_dim);
  auto add_vec = [&](const std::string& name, int64_t n, double v) {
    return add_param(name, Tensor::full({n}, v, dtype_), false, {n});
  };
  if (c.q_lora_rank > 0) {
    P.q_a_w = add_matrix(pre + "q_a_proj.weight", c.q_lora_rank, d);
    if (c.mla_bias) P.q_a_b = add_vec(pre + "q_a_proj.bias", c.q_lora_rank, 0.0);
    P.q_a_norm = add_vec(pre + "q_a_layernorm.weight", c.q_lora_rank, 1.0);
    P.q_b_w = add_matrix(pre + "q_b_proj.weight", H * qk, c.q_lora_rank);
  } else {
    P.q_w = add_matrix(pre + "q_proj.weight", H * qk, d);
  }
  P.kv_a_w = add_matrix(pre + "kv_a_proj_with_mqa.weight", kva, d);
  if (c.mla_bias) P.kv_a_b = add_vec(pre + "kv_a_proj_with_mqa.bias", kva, 0.0);
  P.kv_a_norm = add_vec(pre + "kv_a_layernorm.weight", c.kv_lora_rank, 1.0);
  P.kv_b_w = add_matrix(pre + "kv_b_proj.weight", kvb, c.kv_lora_rank);
  P.o_w = add_matrix(pre + "o_proj.weight", d, H * c.v_head_dim);
  if (c.mla_bias) P.o_b = add_vec(pre + "o_proj.bias", d, 0.0);
}

void Transformer::init_params(uint64_t seed) {
  check_masters("init_params");
  const Rng rng(seed);
  for (size_t i = 0; i < params_.size(); ++i) {
    NamedParam& p = params_[i];
    if (p.value.dim() == 1) continue;  // norms stay one, biases zero
    // A rank's expert slice takes the values of the whole tensor at its place.
    const uint64_t offset = is_expert_param(p.name)
                                ? static_cast<uint64_t>(first_expert() * (p.value.numel() / p.value.size(0)))
                                : 0;
    rng.fork(i + 1).fill_normal(p.value, 0.0, cfg_.initializer_range, offset);
  }
  for (auto& m : moe_)
    if (m) m->params().router_bias.fill(0.0);
}

NamedParam& Transformer::param(const std::string& name) {
  for (NamedParam& p : params_)
    if (p.name == name) return p;
  throw Error(cat("model has no parameter '", name, "'"));
}

void Transformer::ensure_grads() {
  check_masters("ensure_grads");
  for (NamedParam& p : params_)
    if (!p.grad.defined()) p.grad = Tensor::zeros(p.value.shape(), dtype_, p.name + ".grad");
}

void Transformer::zero_grads() {
  ensure_grads();
  for (NamedParam& p : params_) p.grad.fill(0.0);
}

void Transformer::update_router_biases(const StepResult& r) {
  for (size_t i = 0; i < r.moe_layers.size(); ++i) {
    const int64_t l = r.moe_layers[i];
    MOE_CHECK(l >= 0 && l < cfg_.num_hidden_layers && moe_[l], "update_router_biases: layer ", l,
              " is not MoE");
    moe_[l]->update_bias(r.stats[i]);
  }
}

const MoELayer* Transformer::moe_layer(int64_t layer) const {
  MOE_CHECK(layer >= 0 && layer < cfg_.num_hidden_layers, "layer ", layer, " out of range");
  return moe_[layer].get();
}

MoELayer* Transformer::mutable_moe_layer(int64_t layer) {
  MOE_CHECK(layer >= 0 && layer < cfg_.num_hidden_layers, "layer ", layer, " out of range");
  return moe_[layer].get();
}

bool Transformer::is_expert_param(const std::string& name) {
  return name.find(".experts.w_") != std::string::npos;
}

int64_t Transformer::first_expert() const {
  for (const auto& m : moe_)
    if (m) return m->first_expert();
  return 0;
}

std::map<std::string, Tensor> Transformer::hf_state_dict() const {
  check_masters("hf_state_dict");
  MOE_CHECK(!external_experts_,
            "hf_state_dict: this model's expert weights are held outside it (offloaded or "
            "quantized experts); it cannot be saved as a float checkpoint");
  std::map<std::string, Tensor> sd;
  for (size_t i = 0; i < params_.size(); ++i) {
    if (params_[i].name.find(".experts.w_") != std::string::npos) continue;
    sd[params_[i].name] = params_[i].value.to(DType::F32);
  }
  for (int64_t l = 0; l < cfg_.num_hidden_layers; ++l) {
    if (!moe_[l]) continue;
    const MoEParams& mp = moe_[l]->params();
    const std::string pre = moe_prefix(cfg_, l);
    std::string names[3];
    for (int64_t e = 0; e < moe_[l]->local_experts(); ++e) {
      hf_names::expert_names(cfg_, l, moe_[l]->first_expert() + e, names);
      sd[names[0]] =
          mp.w_gate.slice(0, e, e + 1).reshape({mp.w_gate.size(1), mp.w_gate.size(2)}).to(DType::F32);
      sd[names[1]] = mp.w_up.slice(0, e, e + 1).reshape({mp.w_up.size(1), mp.w_up.size(2)}).to(DType::F32);
      sd[names[2]] =
          mp.w_down.slice(0, e, e + 1).reshape({mp.w_down.size(1), mp.w_down.size(2)}).to(DType::F32);
    }
    if (moe_[l]->config().router.use_bias) sd[pre + kBiasSuffix] = mp.router_bias.to(DType::F32);
  }
  return sd;
}

void Transformer::load_hf_state_dict(const std::map<std::string, Tensor>& sd) {
  TensorSource src;
  for (const auto& [name, t] : sd) src.names.push_back(name);
  src.load = [&sd](const std::string& name) { return sd.at(name); };
  load_hf_state_dict(src);
}

void Transformer::load_hf_state_dict(const TensorSource& source) {
  check_masters("load_hf_state_dict");
  const std::set<std::string> sd(source.names.begin(), source.names.end());
  std::set<std::string> used;
  auto take = [&](const std::string& name, const Tensor& dst) {
    MOE_CHECK(sd.count(name), "checkpoint: missing tensor '", name, "'");
    const Tensor src = source.load(name);
    const std::string in = source.file ? " in " + source.file(name) : std::string();
    const DType t = src.dtype();
    MOE_CHECK(t == DType::F32 || t == DType::BF16 || t == DType::F16 || t == DType::F64,
              "checkpoint: tensor '", name, "'", in, " has dtype ", dtype_name(t), "; expected a float type");
    MOE_CHECK(src.shape() == dst.shape(), "checkpoint: tensor '", name, "'", in, ": expected shape ",
              shape_str(dst.shape()), ", got ", shape_str(src.shape()));
    Tensor d = dst;
    d.copy_from(src);
    used.insert(name);
  };
  for (const NamedParam& p : params_) {
    if (p.name.find(".experts.w_") != std::string::npos) continue;
    take(p.name, p.value);
  }
  for (int64_t l = 0; l < cfg_.num_hidden_layers; ++l) {
    if (!moe_[l]) continue;
    MoEParams& mp = moe_[l]->params();
    const std::string pre = moe_prefix(cfg_, l);
    std::string names[3];
    if (external_experts_) {
      const std::string ep = pre + ".experts.";  // read by the expert executor, not here
      for (const std::string& name : sd)
        if (name.compare(0, ep.size(), ep) == 0) used.insert(name);
    }
    const int64_t first = moe_[l]->first_expert(), El = moe_[l]->local_experts();
    for (int64_t e = 0; e < cfg_.num_experts && !external_experts_; ++e) {
      if (e < first || e >= first + El) {  // another rank's expert (expert parallelism)
        hf_names::expert_names(cfg_, l, e, names);
        for (const std::string& n : names)
          if (sd.count(n)) used.insert(n);
        continue;
      }
      hf_names::expert_names(cfg_, l, e, names);
      const int64_t i = e - first;  // index in this process's expert tensors
      take(names[0], mp.w_gate.slice(0, i, i + 1).reshape({mp.w_gate.size(1), mp.w_gate.size(2)}));
      take(names[1], mp.w_up.slice(0, i, i + 1).reshape({mp.w_up.size(1), mp.w_up.size(2)}));
      take(names[2], mp.w_down.slice(0, i, i + 1).reshape({mp.w_down.size(1), mp.w_down.size(2)}));
    }
    if (sd.count(pre + kBiasSuffix)) take(pre + kBiasSuffix, mp.router_bias);
  }
  // transformers drops a tied lm_head.weight on save; some writers keep it: accept an equal copy.
  if (cfg_.tie_word_embeddings && sd.count("lm_head.weight")) used.insert("lm_head.weight");
  std::string unexpected;
  int n_unexpected = 0;
  for (const std::string& name : sd)
    if (!used.count(name) && n_unexpected++ < 5) unexpected += (unexpected.empty() ? "" : ", ") + name;
  MOE_CHECK(n_unexpected == 0, "checkpoint: ", n_unexpected, " unexpected tensor(s) for a ",
            arch_name(cfg_.arch), " model of this config: ", unexpected, n_unexpected > 5 ? ", ..." : "");
}

void save_pretrained(const Transformer& m, const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  MOE_CHECK(!ec, "cannot create directory '", dir, "': ", ec.message());
  save_safetensors((fs::path(dir) / "model.safetensors").string(), m.hf_state_dict(), {{"format", "pt"}});
  const std::string cfg_path = (fs::path(dir) / "config.json").string();
  {
    std::ofstream f(cfg_path + ".tmp", std::ios::binary | std::ios::trunc);
    MOE_CHECK(f.good(), "cannot write '", cfg_path, ".tmp'");
    f << to_json(m.config()) << "\n";
    f.close();
    MOE_CHECK(f.good(), "error writing '", cfg_path, ".tmp'");
  }
  fs::rename(cfg_path + ".tmp", cfg_path, ec);
  MOE_CHECK(!ec, "cannot rename '", cfg_path, ".tmp': ", ec.message());
}

namespace {
// The distinct shard files named by a sharded checkpoint's index ("weight_map"), sorted.
std::vector<std::string> shard_files(const std::string& index_path) {
  std::ifstream f(index_path, std::ios::binary);
  MOE_CHECK(f.good(), "cannot open '", index_path, "'");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(f);
  } catch (const nlohmann::json::exception& e) {
    throw Error(cat(index_path, ": invalid JSON: ", e.what()));
  }
  MOE_CHECK(j.is_object() && j.contains("weight_map") && j["weight_map"].is_object(), index_path,
            ": expected an object with a 'weight_map' object");
  std::set<std::string> files;
  for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
    MOE_CHECK(it->is_string(), index_path, ": weight_map entry '", it.key(), "' is not a file name");
    const std::string name = it->get<std::string>();
    MOE_CHECK(name.find('/') == std::string::npos && name.find("..") == std::string::npos, index_path,
              ": shard file name '", name, "' must be a plain file name");
    files.insert(name);
  }
  MOE_CHECK(!files.empty(), index_path, ": weight_map is empty");
  return {files.begin(), files.end()};
}
}  // namespace

std::map<std::string, Tensor> load_hf_tensors(const std::string& dir) {
  const fs::path p(dir);
  MOE_CHECK(fs::is_directory(p), "model directory '", dir, "' does not exist");
  const fs::path single = p / "model.safetensors", index = p / "model.safetensors.index.json";
  if (fs::exists(single)) return load_safetensors(single.string());
  MOE_CHECK(fs::exists(index), "model directory '", dir, "' has neither model.safetensors nor ",
            "model.safetensors.index.json");
  std::map<std::string, Tensor> sd;
  for (const std::string& f : shard_files(index.string()))
    for (auto& [name, t] : load_safetensors((p / f).string())) sd[name] = std::move(t);
  return sd;
}

namespace {
std::vector<std::string> checkpoint_files(const std::string& dir) {
  const fs::path p(dir);
  MOE_CHECK(fs::is_directory(p), "model directory '", dir, "' does not exist");
  const fs::path single = p / "model.safetensors", index = p / "model.safetensors.index.json";
  std::vector<std::string> files;
  if (fs::exists(single)) {
    files.push_back(single.string());
  } else {
    MOE_CHECK(fs::exists(index), "model directory '", dir, "' has neither model.safetensors nor ",
              "model.safetensors.index.json");
    for (const std::string& f : shard_files(index.string())) files.push_back((p / f).string());
  }
  return files;
}
}  // namespace

std::map<std::string, TensorLocation> checkpoint_locations(const std::string& dir) {
  std::map<std::string, TensorLocation> out;
  for (const std::string& f : checkpoint_files(dir)) {
    const SafetensorsReader r(f);
    for (const std::string& name : r.names()) {
      const SafetensorsEntry& e = r.entry(name);
      TensorLocation loc;
      loc.file = f;
      loc.dtype = e.dtype;
      loc.shape = e.shape;
      loc.offset = r.data_start() + e.begin;
      loc.bytes = e.end - e.begin;
      out[name] = std::move(loc);
    }
  }
  return out;
}

TensorSource checkpoint_source(const std::string& dir) {
  const std::vector<std::string> files = checkpoint_files(dir);
  auto readers = std::make_shared<std::vector<SafetensorsReader>>();
  auto where = std::make_shared<std::map<std::string, size_t>>();  // tensor -> reader
  for (const std::string& f : files) {
    readers->emplace_back(f);
    for (const std::string& name : readers->back().names()) (*where)[name] = readers->size() - 1;
  }
  TensorSource src;
  for (const auto& [name, r] : *where) src.names.push_back(name);
  src.load = [readers, where](const std::string& name) { return (*readers)[where->at(name)].load(name); };
  src.file = [readers, where](const std::string& name) { return (*readers)[where->at(name)].path(); };
  src.map = [readers, where](const std::string& name) { return (*readers)[where->at(name)].map(name); };
  return src;
}

void check_checkpoint_shape(const ModelConfig& cfg, const std::string& dir) {
  const std::map<std::string, TensorLocation> loc = checkpoint_locations(dir);
  const char* embed = "model.embed_tokens.weight";
  const auto it = loc.find(embed);
  MOE_CHECK(it != loc.end(), dir, ": checkpoint: missing tensor '", embed, "'");
  const Shape want{cfg.vocab_size, cfg.hidden_size};
  MOE_CHECK(it->second.shape == want, dir, ": checkpoint: tensor '", embed, "' has shape ",
            shape_str(it->second.shape),
            " but config.json says (vocab_size, hidden_size) = ", shape_str(want));
  std::vector<char> seen(static_cast<size_t>(cfg.num_hidden_layers), 0);
  const std::string pre = "model.layers.";
  for (const auto& kv : loc) {
    if (kv.first.compare(0, pre.size(), pre) != 0) continue;
    const int64_t l = std::atoll(kv.first.c_str() + pre.size());
    if (l >= 0 && l < cfg.num_hidden_layers) seen[static_cast<size_t>(l)] = 1;
  }
  for (int64_t l = 0; l < cfg.num_hidden_layers; ++l)
    MOE_CHECK(seen[static_cast<size_t>(l)], dir, ": checkpoint: no tensors of layer ", l,
              " but config.json says ", "num_hidden_layers = ", cfg.num_hidden_layers);
  // The routed experts: each MoE layer's router has one row per expert.
  for (int64_t l = 0; l < cfg.num_hidden_layers; ++l) {
    if (!cfg.is_moe_layer(l)) continue;
    const std::string gate = hf_names::moe_prefix(cfg, l) + ".gate.weight";
    const auto g = loc.find(gate);
    if (g == loc.end() || g->second.shape.empty()) continue;
    MOE_CHECK(g->second.shape[0] == cfg.num_experts, dir, ": checkpoint: tensor '", gate, "' has ",
              g->second.shape[0], " rows but config.json says ", cfg.num_experts, " experts");
  }
}

Transformer load_pretrained(const std::string& dir, DType dtype, bool external_experts, ExpertParallel ep) {
  const fs::path p(dir);
  MOE_CHECK(fs::is_directory(p), "model directory '", dir, "' does not exist");
  const ModelConfig cfg = load_model_config((p / "config.json").string());
  check_checkpoint_shape(cfg, dir);
  if (!external_experts) {
    // Compressed checkpoints hold no float expert weights: say so rather than name a missing tensor.
    MOE_CHECK(read_low_rank_config(dir).rank == 0, "'", dir,
              "' holds low-rank experts (config.json has a low_rank_config); this needs a float checkpoint "
              "(the one `moe compress` read)");
    MOE_CHECK(read_quant_config(dir).bits == 0, "'", dir,
              "' holds quantized experts (config.json has a quantization_config); this needs a float "
              "checkpoint (the one `moe quantize` read)");
  }
  Transformer m(cfg, dtype, external_experts, std::move(ep));
  const TensorSource sd = checkpoint_source(dir);
  try {
    m.load_hf_state_dict(sd);
  } catch (const Error& e) {
    throw Error(cat(dir, ": ", e.what()));
  }
  return m;
}

}  // namespace moe::model
