// Quantized checkpoints (moe/model/quantized.h): quantization_config, loading quantized linears, and the
// writer behind `moe quantize`.
#include "moe/model/quantized.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>
#include <set>

#include "model/hf_names.h"
#include "moe/core/error.h"
#include "moe/model/safetensors.h"

namespace moe::model {

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

namespace {

ojson read_json_file(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  MOE_CHECK(f.good(), "cannot open '", p.string(), "'");
  try {
    return ojson::parse(f);
  } catch (const nlohmann::json::exception& e) {
    throw Error(cat(p.string(), ": invalid JSON: ", e.what()));
  }
}

void write_text_atomic(const fs::path& p, const std::string& text) {
  const std::string tmp = p.string() + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    MOE_CHECK(f.good(), "cannot write '", tmp, "'");
    f << text;
    f.close();
    MOE_CHECK(f.good(), "error writing '", tmp, "'");
  }
  std::error_code ec;
  fs::rename(tmp, p, ec);
  MOE_CHECK(!ec, "cannot rename '", tmp, "': ", ec.message());
}

// "<...>.weight" -> "<...>"; throws on any other name.
std::string linear_base(const std::string& weight_name) {
  const std::string suffix = ".weight";
  MOE_CHECK(weight_name.size() > suffix.size() &&
                weight_name.compare(weight_name.size() - suffix.size(), suffix.size(), suffix) == 0,
            "quantized weights: '", weight_name, "' is not the name of a linear's weight (<name>.weight)");
  return weight_name.substr(0, weight_name.size() - suffix.size());
}

// Whether src holds `name`. The sources of checkpoint_source (and of a std::map) list their names sorted,
// so a bisection finds a present name quickly (a model has ~10^4 of them); a miss, or an unsorted list,
// falls back to a scan.
bool holds(const TensorSource& src, const std::string& name) {
  const auto& v = src.names;
  size_t lo = 0, hi = v.size();
  while (lo < hi) {
    const size_t mid = lo + (hi - lo) / 2;
    const int c = v[mid].compare(name);
    if (c == 0) return true;
    if (c < 0) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return std::find(v.begin(), v.end(), name) != v.end();
}

// " in FILE" for a tensor that src holds, when src knows its files.
std::string where(const TensorSource& src, const std::string& name) {
  return src.file ? " in " + src.file(name) : std::string();
}

QuantConfig parse_quant_config(const ojson& q, const std::string& what) {
  MOE_CHECK(q.is_object(), what, ": quantization_config must be an object");
  auto get_int = [&](const char* key) -> int64_t {
    MOE_CHECK(q.contains(key) && q[key].is_number_integer(), what, ": quantization_config.", key,
              " must be an integer");
    return q[key].get<int64_t>();
  };
  MOE_CHECK(q.contains("quant_method") && q["quant_method"].is_string(), what,
            ": quantization_config.quant_method is missing");
  const std::string method = q["quant_method"];
  MOE_CHECK(method == "moe_cpp", what, ": quantization_config.quant_method '", method,
            "' is not supported (expected \"moe_cpp\", as written by moe quantize)");
  QuantConfig c;
  c.bits = static_cast<int>(get_int("bits"));
  MOE_CHECK(c.bits == 4 || c.bits == 8, what, ": quantization_config.bits must be 4 or 8, got ", c.bits);
  c.group = get_int("group_size");
  MOE_CHECK(c.group > 0 && c.group % 32 == 0, what,
            ": quantization_config.group_size must be a positive multiple of 32, got ", c.group);
  MOE_CHECK(q.contains("modules") && q["modules"].is_array(), what,
            ": quantization_config.modules must be a list");
  bool experts = false;
  for (const auto& m : q["modules"]) {
    MOE_CHECK(m.is_string() && (m == "experts" || m == "attention"), what,
              ": quantization_config.modules holds ", m.dump(), " (expected \"experts\" or \"attention\")");
    (m == "experts" ? experts : c.attention) = true;
  }
  MOE_CHECK(experts, what, ": quantization_config.modules must include \"experts\"");
  if (q.contains("expert_bits")) {
    const auto& eb = q["expert_bits"];
    MOE_CHECK(eb.is_array(), what, ": quantization_config.expert_bits must be a list of lists");
    for (size_t l = 0; l < eb.size(); ++l) {
      MOE_CHECK(eb[l].is_array(), what, ": quantization_config.expert_bits[", l, "] must be a list");
      std::vector<int> row;
      for (const auto& b : eb[l]) {
        MOE_CHECK(b.is_number_integer() && (b == 4 || b == 8), what, ": quantization_config.expert_bits[", l,
                  "] holds ", b.dump(), " (expected 4 or 8)");
        row.push_back(b.get<int>());
      }
      c.expert_bits.push_back(std::move(row));
    }
  }
  return c;
}

// Routing weight per expert of each MoE layer, from save_expert_usage's JSON
// (moe/model/expert_usage.h: {"tokens": N, "layers": [{"layer": l, "count": [...], "weight": [...]},
// ...]}), by layer index.
std::map<int64_t, std::vector<double>> read_usage_weights(const std::string& path) {
  const ojson j = read_json_file(path);
  MOE_CHECK(
      j.is_object() && j.contains("layers") && j["layers"].is_array(), path,
      ": expected an expert usage file ({\"tokens\": N, \"layers\": [...]}, as `moe calibrate` writes)");
  std::map<int64_t, std::vector<double>> w;
  for (size_t i = 0; i < j["layers"].size(); ++i) {
    const auto& l = j["layers"][i];
    MOE_CHECK(l.is_object() && l.contains("layer") && l["layer"].is_number_integer() &&
                  l.contains("weight") && l["weight"].is_array(),
              path, ": layers[", i, "] needs an integer 'layer' and a 'weight' list");
    std::vector<double> v;
    for (const auto& x : l["weight"]) {
      MOE_CHECK(x.is_number() && std::isfinite(x.get<double>()), path, ": layers[", i, "].weight holds ",
                x.dump());
      v.push_back(x.get<double>());
    }
    w[l["layer"].get<int64_t>()] = std::move(v);
  }
  return w;
}

// Per MoE layer (in layer order), per expert: the bits of its weights.
std::vector<std::vector<int>> choose_expert_bits(const ModelConfig& cfg, const QuantizeOptions& o) {
  std::vector<std::vector<int>> bits;
  if (o.mixed_bits == 0 || o.mixed_fraction == 0) return bits;
  const auto usage = read_usage_weights(o.usage_file);
  const int64_t E = cfg.num_experts;
  const auto n_low = static_cast<int64_t>(std::llround(o.mixed_fraction * static_cast<double>(E)));
  for (int64_t l = 0; l < cfg.num_hidden_layers; ++l) {
    if (!cfg.is_moe_layer(l)) continue;
    const auto it = usage.find(l);
    MOE_CHECK(it != usage.end(), o.usage_file, ": no usage for MoE layer ", l,
              " (was it measured on this model?)");
    MOE_CHECK(static_cast<int64_t>(it->second.size()) == E, o.usage_file, ": layer ", l, " has ",
              it->second.size(), " expert weights, the model has ", E, " experts");
    std::vector<int64_t> order(static_cast<size_t>(E));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t b) { return it->second[a] < it->second[b]; });
    std::vector<int> row(static_cast<size_t>(E), o.bits);
    for (int64_t i = 0; i < n_low; ++i)
      row[static_cast<size_t>(order[static_cast<size_t>(i)])] = o.mixed_bits;
    bits.push_back(std::move(row));
  }
  return bits;
}

void check_options(const QuantizeOptions& o) {
  MOE_CHECK(o.bits == 4 || o.bits == 8, "quantize: bits must be 4 or 8, got ", o.bits);
  MOE_CHECK(o.group > 0 && o.group % 32 == 0, "quantize: group size must be a positive multiple of 32, got ",
            o.group);
  MOE_CHECK(o.mixed_bits == 0 || o.mixed_bits == 4 || o.mixed_bits == 8,
            "quantize: mixed bits must be 4 or 8, got ", o.mixed_bits);
  MOE_CHECK(o.mixed_fraction >= 0 && o.mixed_fraction <= 1,
            "quantize: mixed fraction must be in [0, 1], got ", o.mixed_fraction);
  if (o.mixed_bits != 0) {
    MOE_CHECK(o.mixed_bits != o.bits, "quantize: mixed bits ", o.mixed_bits, " equal bits ", o.bits);
    MOE_CHECK(o.mixed_fraction > 0, "quantize: mixed bits need a mixed fraction > 0");
    MOE_CHECK(!o.usage_file.empty(), "quantize: mixed bits need an expert usage file");
  } else {
    MOE_CHECK(o.mixed_fraction == 0, "quantize: a mixed fraction needs mixed bits");
  }
}

}  // namespace

QuantConfig read_quant_config(const std::string& dir) {
  const fs::path p = fs::path(dir) / "config.json";
  const ojson j = read_json_file(p);
  MOE_CHECK(j.is_object(), p.string(), ": expected a JSON object");
  if (!j.contains("quantization_config") || j["quantization_config"].is_null()) return {};
  return parse_quant_config(j["quantization_config"], p.string());
}

int expert_bits_of(const QuantConfig& q, int64_t moe_index, int64_t e) {
  if (q.expert_bits.empty()) return q.bits;
  MOE_CHECK(moe_index >= 0 && moe_index < static_cast<int64_t>(q.expert_bits.size()) && e >= 0 &&
                e < static_cast<int64_t>(q.expert_bits[static_cast<size_t>(moe_index)].size()),
            "quantization_config.expert_bits has no entry for MoE layer ", moe_index, ", expert ", e);
  return q.expert_bits[static_cast<size_t>(moe_index)][static_cast<size_t>(e)];
}

void check_quant_config(const QuantConfig& q, const ModelConfig& c, const std::string& what) {
  if (q.bits == 0 || q.expert_bits.empty()) return;
  int64_t moe_layers = 0;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) moe_layers += c.is_moe_layer(l) ? 1 : 0;
  MOE_CHECK(static_cast<int64_t>(q.expert_bits.size()) == moe_layers, what,
            ": quantization_config.expert_bits has ", q.expert_bits.size(), " layers, the model has ",
            moe_layers, " MoE layers");
  for (size_t i = 0; i < q.expert_bits.size(); ++i)
    MOE_CHECK(static_cast<int64_t>(q.expert_bits[i].size()) == c.num_experts, what,
              ": quantization_config.expert_bits[", i, "] has ", q.expert_bits[i].size(),
              " entries, the model has ", c.num_experts, " experts");
}

bool has_quantized(const TensorSource& src, const std::string& weight_name) {
  return holds(src, linear_base(weight_name) + ".qweight");
}

kernels::QuantizedMatrix load_quantized(const TensorSource& src, const std::string& weight_name, int64_t N,
                                        int64_t K, int64_t group) {
  const std::string base = linear_base(weight_name), qn = base + ".qweight";
  MOE_CHECK(holds(src, qn), "checkpoint: missing tensor '", qn, "'");
  Tensor q = src.load(qn);
  const std::string in = where(src, qn);
  MOE_CHECK(q.dtype() == DType::I8 || q.dtype() == DType::U8, "checkpoint: tensor '", qn, "'", in,
            " has dtype ", dtype_name(q.dtype()), "; expected i8 (int8) or u8 (packed int4)");
  const int bits = q.dtype() == DType::I8 ? 8 : 4;
  auto load = [&](const std::string& name) {
    MOE_CHECK(holds(src, name), "checkpoint: missing tensor '", name, "' (beside '", qn, "'", in, ")");
    return src.load(name);
  };
  Tensor scales = load(base + ".scales");
  Tensor mins = bits == 4 ? load(base + ".mins") : Tensor();
  MOE_CHECK(bits == 4 || !holds(src, base + ".mins"), "checkpoint: int8 weight '", qn, "'", in,
            " has a '.mins' tensor (int8 is symmetric)");
  kernels::QuantizedMatrix r;
  try {
    r = kernels::quantized_from_tensors(bits, group, std::move(q), std::move(scales), std::move(mins), base);
  } catch (const Error& e) {
    throw Error(cat("checkpoint", in, ": ", e.what()));
  }
  MOE_CHECK(r.N == N && r.K == K, "checkpoint: quantized weight '", base, "'", in, ": expected shape (", N,
            ", ", K, "), got (", r.N, ", ", r.K, ")");
  return r;
}

QuantizeResult quantize_checkpoint(const std::string& src_dir, const std::string& dst_dir,
                                   const QuantizeOptions& o) {
  check_options(o);
  const fs::path src(src_dir), dst(dst_dir);
  MOE_CHECK(fs::is_directory(src), "quantize: model directory '", src_dir, "' does not exist");
  std::error_code ec;
  if (fs::exists(dst)) {
    MOE_CHECK(fs::is_directory(dst), "quantize: output '", dst_dir, "' exists and is not a directory");
    MOE_CHECK(!fs::equivalent(src, dst, ec), "quantize: the output directory is the model directory '",
              src_dir, "'");
    MOE_CHECK(o.overwrite || fs::is_empty(dst), "quantize: output directory '", dst_dir,
              "' is not empty (use --overwrite to replace its files)");
  }
  ojson config = read_json_file(src / "config.json");
  MOE_CHECK(config.is_object(), (src / "config.json").string(), ": expected a JSON object");
  MOE_CHECK(!config.contains("quantization_config") || config["quantization_config"].is_null(), "quantize: '",
            src_dir, "' is already quantized (config.json has a quantization_config)");
  MOE_CHECK(!config.contains("low_rank_config") || config["low_rank_config"].is_null(), "quantize: '",
            src_dir,
            "' holds low-rank experts (config.json has a low_rank_config); quantize the float checkpoint "
            "`moe compress` read");
  const ModelConfig cfg = load_model_config((src / "config.json").string());

  QuantizeResult r;
  r.config.bits = o.bits;
  r.config.group = o.group;
  r.config.attention = o.attention;
  r.config.expert_bits = choose_expert_bits(cfg, o);

  // The linears to quantize and their bits.
  std::map<std::string, int> plan;
  std::set<std::string> experts;
  int64_t moe_index = 0;
  for (int64_t l = 0; l < cfg.num_hidden_layers; ++l) {
    if (o.attention) {
      for (const std::string& n : hf_names::attention_names(cfg, l)) plan[n] = o.bits;
    }
    if (!cfg.is_moe_layer(l)) continue;
    std::string names[3];
    for (int64_t e = 0; e < cfg.num_experts; ++e) {
      hf_names::expert_names(cfg, l, e, names);
      const int bits = r.config.expert_bits.empty() ? o.bits : r.config.expert_bits[moe_index][e];
      for (const std::string& n : names) {
        plan[n] = bits;
        experts.insert(n);
      }
    }
    ++moe_index;
  }
  const TensorSource source = checkpoint_source(src_dir);
  const std::set<std::string> present(source.names.begin(), source.names.end());
  for (const auto& [name, bits] : plan)
    MOE_CHECK(present.count(name), "quantize: '", src_dir, "' has no tensor '", name, "'");

  std::map<std::string, Tensor> out;
  for (const std::string& name : source.names) {
    Tensor t = source.load(name);
    const auto it = plan.find(name);
    if (it == plan.end()) {
      out[name] = std::move(t);
      continue;
    }
    const std::string in = where(source, name);
    const DType dt = t.dtype();
    MOE_CHECK(dt == DType::F32 || dt == DType::BF16 || dt == DType::F16, "quantize: tensor '", name, "'", in,
              " has dtype ", dtype_name(dt), "; expected f32, bf16 or f16");
    MOE_CHECK(t.dim() == 2, "quantize: tensor '", name, "'", in, " must be 2-D, got shape ",
              shape_str(t.shape()));
    const int64_t N = t.size(0), K = t.size(1);
    MOE_CHECK(K % o.group == 0, "quantize: tensor '", name, "'", in, " of shape ", shape_str(t.shape()),
              ": K = ", K, " is not a multiple of the group size ", o.group, " (try a smaller --group-size)");
    const Tensor w = t.to(DType::F32).contiguous();
    const std::string base = linear_base(name);
    kernels::QuantizedMatrix q = kernels::quantize_matrix(w.data<float>(), N, K, it->second, o.group, name);
    const bool is_expert = experts.count(name) != 0;
    (is_expert ? r.expert_bytes_before : r.attention_bytes_before) += static_cast<int64_t>(t.nbytes());
    (is_expert ? r.expert_bytes_after : r.attention_bytes_after) += q.bytes();
    (is_expert ? r.expert_tensors : r.attention_tensors) += 1;
    if (is_expert) r.expert_params += N * K;
    out[base + ".qweight"] = std::move(q.q);
    out[base + ".scales"] = std::move(q.scales);
    if (q.mins.defined()) out[base + ".mins"] = std::move(q.mins);
  }

  ojson qc;
  qc["quant_method"] = "moe_cpp";
  qc["bits"] = o.bits;
  qc["group_size"] = o.group;
  qc["modules"] = o.attention ? ojson{"experts", "attention"} : ojson::array({"experts"});
  if (!r.config.expert_bits.empty()) qc["expert_bits"] = r.config.expert_bits;
  config["quantization_config"] = qc;

  fs::create_directories(dst, ec);
  MOE_CHECK(!ec, "quantize: cannot create directory '", dst_dir, "': ", ec.message());
  // An index of an earlier sharded checkpoint in dst (--overwrite) would not describe the new file.
  fs::remove(dst / "model.safetensors.index.json", ec);
  save_safetensors((dst / "model.safetensors").string(), out,
                   {{"format", "pt"}, {"quantized_by", "moe_cpp"}});
  write_text_atomic(dst / "config.json", config.dump(2) + "\n");
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "generation_config.json"}) {
    if (!fs::exists(src / f)) continue;
    fs::copy_file(src / f, dst / f, fs::copy_options::overwrite_existing, ec);
    MOE_CHECK(!ec, "quantize: cannot copy '", (src / f).string(), "' to '", dst_dir, "': ", ec.message());
  }
  r.file_bytes = static_cast<int64_t>(fs::file_size(dst / "model.safetensors"));
  return r;
}

}  // namespace moe::model
