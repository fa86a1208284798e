// Low-rank expert checkpoints (moe/model/low_rank.h): low_rank_config, the writer behind `moe compress`,
// and the readers (factors for the factored runner, or materialised weights for a plain model).
#include "moe/model/low_rank.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>

#include "model/svd.h"
#include "moe/core/error.h"
#include "moe/core/file_io.h"
#include "moe/core/parallel.h"
#include "moe/kernels/ops.h"
#include "moe/model/safetensors.h"

namespace moe::model {

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

namespace {

const char* const kMethod = "moe_cpp_low_rank";
const char* const kKindName[3] = {"gate", "up", "down"};

ojson read_config_json(const fs::path& p) {
  const std::string text = io::read_file(p.string(), "config.json '" + p.string() + "'");
  try {
    ojson j = ojson::parse(text);
    MOE_CHECK(j.is_object(), p.string(), ": expected a JSON object");
    return j;
  } catch (const nlohmann::json::exception& e) {
    throw Error(cat(p.string(), ": invalid JSON: ", e.what()));
  }
}

// The shape (N, K) of matrix kind k (0 gate, 1 up, 2 down) of an expert of c, and whether the kind
// exists (gate: SwiGLU only).
struct Kind {
  bool present = false;
  int64_t N = 0, K = 0;
};
Kind kind_shape(const MoEConfig& c, int k) {
  if (k == 0 && c.activation != kernels::Activation::SwiGLU) return {};
  return k == 2 ? Kind{true, c.d_model, c.d_ff} : Kind{true, c.d_ff, c.d_model};
}

int64_t count_moe_layers(const ModelConfig& cfg) {
  int64_t n = 0;
  for (int64_t l = 0; l < cfg.num_hidden_layers; ++l) n += cfg.is_moe_layer(l) ? 1 : 0;
  return n;
}

// ‖X − A·B‖_F² of X (N, K), A (N, R), B (R, K), and Σ x² of n values, in double.
double residual_sq(const double* X, const std::vector<double>& A, const std::vector<double>& B, int64_t N,
                   int64_t K, int64_t R) {
  double err = 0;
  for (int64_t i = 0; i < N; ++i)
    for (int64_t j = 0; j < K; ++j) {
      double ab = 0;
      for (int64_t q = 0; q < R; ++q) ab += A[i * R + q] * B[q * K + j];
      const double d = X[i * K + j] - ab;
      err += d * d;
    }
  return err;
}
double sum_sq(const double* x, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += x[i] * x[i];
  return s;
}

// The index among the MoE layers of layer l (a MoE layer).
int64_t moe_layer_index(const ModelConfig& cfg, int64_t l) {
  int64_t n = 0;
  for (int64_t i = 0; i < l; ++i) n += cfg.is_moe_layer(i) ? 1 : 0;
  return n;
}

// Σ N·K and Σ (N + K) over the kinds present, and the smallest min(N, K).
struct KindSums {
  double nk = 0, n_plus_k = 0;
  int64_t max_rank = 0;
};
KindSums kind_sums(const MoEConfig& mc) {
  KindSums s;
  s.max_rank = INT64_MAX;
  for (int k = 0; k < 3; ++k) {
    const Kind kd = kind_shape(mc, k);
    if (!kd.present) continue;
    s.nk += static_cast<double>(kd.N * kd.K);
    s.n_plus_k += static_cast<double>(kd.N + kd.K);
    s.max_rank = std::min(s.max_rank, std::min(kd.N, kd.K));
  }
  return s;
}

std::string where(const TensorSource& src, const std::string& name) {
  return src.file ? " in " + src.file(name) : std::string();
}

// A factor or base read from src as f32 (N, K), its presence, dtype and shape checked.
Tensor load_checked(const TensorSource& src, const std::set<std::string>& names, const std::string& name,
                    const Shape& shape, const std::string& role) {
  MOE_CHECK(names.count(name), "low-rank checkpoint: missing tensor '", name, "' (", role, ")");
  Tensor t = src.load(name);
  const DType dt = t.dtype();
  MOE_CHECK(dt == DType::F32 || dt == DType::BF16 || dt == DType::F16, "low-rank checkpoint: tensor '", name,
            "'", where(src, name), " has dtype ", dtype_name(dt), "; expected f32, bf16 or f16");
  MOE_CHECK(t.shape() == shape, "low-rank checkpoint: tensor '", name, "'", where(src, name), " (", role,
            "): expected shape ", shape_str(shape), ", got ", shape_str(t.shape()));
  return t.to(DType::F32).contiguous();
}

void check_dst(const fs::path& src, const fs::path& dst, bool overwrite) {
  std::error_code ec;
  if (!fs::exists(dst)) return;
  MOE_CHECK(fs::is_directory(dst), "compress: output '", dst.string(), "' exists and is not a directory");
  MOE_CHECK(!fs::equivalent(src, dst, ec), "compress: the output directory is the model directory '",
            src.string(), "'");
  MOE_CHECK(overwrite || fs::is_empty(dst), "compress: output directory '", dst.string(),
            "' is not empty (use --overwrite to replace its files)");
}

// What the factorisation of one matrix reports.
struct FactorStats {
  double rel_error = 0, energy_kept = 0, input_error = -1;  // input_error: -1 when not whitened
};

// A (N, R) · B (R, K) + base into w (N, K), f32 (base may be null).
void multiply_factors(const float* a, const float* b, const float* base, int64_t N, int64_t K, int64_t R,
                      float* w) {
  kernels::GemmArgs<float> g;
  g.M = N, g.N = K, g.K = R;
  g.A = a, g.lda = R;
  g.B = b, g.ldb = K;
  g.C = w, g.ldc = K;
  kernels::gemm<float>(kernels::Backend::Cpu, g);
  if (base)
    for (int64_t i = 0; i < N * K; ++i) w[i] += base[i];
}

}  // namespace

double factors_whitened(const double* w, int64_t N, int64_t K, int64_t R, const std::vector<double>& gram,
                        int64_t rows, double damping, std::vector<double>& A, std::vector<double>& B) {
  MOE_CHECK(rows >= 1 && static_cast<int64_t>(gram.size()) == K * K, "compress: calibration moments of ",
            rows, " rows and ", gram.size(), " entries for inputs of width ", K);
  MOE_CHECK(std::isfinite(damping) && damping > 0, "compress: damping must be > 0, got ", damping);
  std::vector<double> c(gram.size());
  double mean_diag = 0;
  for (int64_t i = 0; i < K; ++i) mean_diag += gram[i * K + i] / static_cast<double>(rows);
  mean_diag /= static_cast<double>(K);
  const double delta = damping * (mean_diag > 0 ? mean_diag : 1.0);
  for (int64_t i = 0; i < K * K; ++i) c[i] = gram[i] / static_cast<double>(rows);
  for (int64_t i = 0; i < K; ++i) c[i * K + i] += delta;
  std::vector<double> L;
  MOE_CHECK(svd::cholesky(c, K, L), "compress: the calibration moments are not positive definite");
  std::vector<double> wl(static_cast<size_t>(N * K), 0.0);  // W·L
  for (int64_t i = 0; i < N; ++i)                           // (the caller runs experts in parallel)
    for (int64_t j = 0; j < K; ++j) {
      double v = 0;
      for (int64_t q = j; q < K; ++q) v += w[i * K + q] * L[q * K + j];  // L[q][j] nonzero for q >= j
      wl[i * K + j] = v;
    }
  std::vector<double> Bp;
  svd::truncated_factors(wl.data(), N, K, R, A, Bp);
  // Error on the inputs: ‖W·L − A·B'‖ / ‖W·L‖.
  const double err = residual_sq(wl.data(), A, Bp, N, K, R), norm = sum_sq(wl.data(), N * K);
  // B = B'·L⁻¹: each row b solves b·L = b', from the last entry back (L lower: (b·L)_j = Σ_{i≥j} b_i L_ij).
  B.assign(static_cast<size_t>(R * K), 0.0);
  for (int64_t q = 0; q < R; ++q) {
    double* b = &B[q * K];
    for (int64_t j = K - 1; j >= 0; --j) {
      double v = Bp[q * K + j];
      for (int64_t i = j + 1; i < K; ++i) v -= b[i] * L[i * K + j];
      b[j] = v / L[j * K + j];
    }
  }
  return norm > 0 ? std::sqrt(err / norm) : 0.0;
}

LowRankConfig read_low_rank_config(const std::string& dir) {
  const fs::path p = fs::path(dir) / "config.json";
  const ojson j = read_config_json(p);
  if (!j.contains("low_rank_config") || j["low_rank_config"].is_null()) return {};
  const ojson& c = j["low_rank_config"];
  const std::string what = p.string() + ": low_rank_config";
  MOE_CHECK(c.is_object(), what, " must be an object");
  MOE_CHECK(c.contains("method") && c["method"].is_string() && c["method"] == kMethod, what,
            ".method must be \"", kMethod, "\" (as written by moe compress), got ",
            c.contains("method") ? c["method"].dump() : std::string("nothing"));
  MOE_CHECK(c.contains("rank") && c["rank"].is_number_integer() && c["rank"].get<int64_t>() >= 1, what,
            ".rank must be an integer >= 1, got ",
            c.contains("rank") ? c["rank"].dump() : std::string("nothing"));
  LowRankConfig r;
  r.rank = c["rank"].get<int64_t>();
  if (c.contains("shared_base")) {
    MOE_CHECK(c["shared_base"].is_boolean(), what, ".shared_base must be true or false, got ",
              c["shared_base"].dump());
    r.shared_base = c["shared_base"].get<bool>();
  }
  return r;
}

int64_t rank_for_ratio(const ModelConfig& cfg, double ratio, bool shared_base) {
  MOE_CHECK(std::isfinite(ratio) && ratio > 0 && ratio < 1, "compress: --ratio must be in (0, 1), got ",
            ratio);
  MOE_CHECK(count_moe_layers(cfg) > 0, "compress: the model has no MoE layers");
  const MoEConfig mc = cfg.moe_layer_config();
  const KindSums s = kind_sums(mc);
  const double E = static_cast<double>(mc.n_experts);
  const double budget = shared_base ? (ratio * E - 1.0) * s.nk : ratio * E * s.nk;  // parameters for factors
  const auto R = static_cast<int64_t>(std::floor(budget / (E * s.n_plus_k)));
  MOE_CHECK(R >= 1, "compress: --ratio ", ratio, " leaves no room for a rank-1 factor per expert",
            shared_base ? cat(" beside the shared base (", E, " experts: the base alone is ", 1.0 / E,
                              " of the expert parameters)")
                        : std::string());
  MOE_CHECK(R <= s.max_rank, "compress: --ratio ", ratio, " needs rank ", R,
            ", above min(N, K) = ", s.max_rank, " of the expert matrices (the full matrices are smaller)");
  return R;
}

std::string low_rank_name(const std::string& weight_name, const char* suffix) {
  const std::string w = ".weight";
  MOE_CHECK(
      weight_name.size() > w.size() && weight_name.compare(weight_name.size() - w.size(), w.size(), w) == 0,
      "low-rank: '", weight_name, "' is not a weight name (<name>.weight)");
  return weight_name.substr(0, weight_name.size() - w.size()) + "." + suffix;
}

std::string low_rank_base_name(const ModelConfig& cfg, int64_t layer, int kind) {
  const std::string e0 = expert_weight_names(cfg, layer, 0)[static_cast<size_t>(kind)];
  const std::string pre = moe_block_prefix(cfg, layer) + ".experts.0.";
  return moe_block_prefix(cfg, layer) + ".experts.base." + e0.substr(pre.size());
}

CompressResult compress_checkpoint(const std::string& src_dir, const std::string& dst_dir,
                                   const CompressOptions& o) {
  const fs::path src(src_dir), dst(dst_dir);
  MOE_CHECK(fs::is_directory(src), "compress: model directory '", src_dir, "' does not exist");
  MOE_CHECK((o.rank > 0) != (o.ratio > 0), "compress: give exactly one of a rank and a ratio");
  check_dst(src, dst, o.overwrite);
  ojson config = read_config_json(src / "config.json");
  MOE_CHECK(!config.contains("quantization_config") || config["quantization_config"].is_null(), "compress: '",
            src_dir, "' is quantized (config.json has a quantization_config); compress its float source");
  MOE_CHECK(!config.contains("low_rank_config") || config["low_rank_config"].is_null(), "compress: '",
            src_dir, "' is already low-rank (config.json has a low_rank_config)");
  const ModelConfig cfg = load_model_config((src / "config.json").string());
  CompressResult r;
  r.moe_layers = count_moe_layers(cfg);
  MOE_CHECK(r.moe_layers > 0, "compress: '", src_dir, "' has no MoE layers (nothing to compress)");
  const MoEConfig mc = cfg.moe_layer_config();
  const KindSums sums = kind_sums(mc);
  const int64_t R = o.rank > 0 ? o.rank : rank_for_ratio(cfg, o.ratio, o.shared_base);
  MOE_CHECK(R <= sums.max_rank, "compress: rank ", R, " exceeds min(N, K) = ", sums.max_rank,
            " of the expert matrices (gate/up (", mc.d_ff, ", ", mc.d_model, "), down (", mc.d_model, ", ",
            mc.d_ff, "))");
  r.rank = R;

  const TensorSource source = checkpoint_source(src_dir);
  const std::set<std::string> present(source.names.begin(), source.names.end());
  std::set<std::string> expert_names;
  for (int64_t l = 0; l < cfg.num_hidden_layers; ++l) {
    if (!cfg.is_moe_layer(l)) continue;
    for (int64_t e = 0; e < cfg.num_experts; ++e)
      for (int k = 0; k < 3; ++k) {
        if (!kind_shape(mc, k).present) continue;
        const std::string n = expert_weight_names(cfg, l, e)[static_cast<size_t>(k)];
        MOE_CHECK(present.count(n), "compress: '", src_dir, "' has no tensor '", n, "'");
        expert_names.insert(n);
      }
  }
  std::map<std::string, Tensor> out;
  for (const std::string& name : source.names)
    if (!expert_names.count(name)) out[name] = source.load(name);

  const int64_t E = cfg.num_experts;
  if (o.moments) {
    const ExpertInputMoments& mo = *o.moments;
    MOE_CHECK(static_cast<int64_t>(mo.rows.size()) == r.moe_layers && mo.d == mc.d_model && mo.F == mc.d_ff,
              "compress: calibration moments of ", mo.rows.size(), " MoE layers (d ", mo.d, ", F ", mo.F,
              ") for a model of ", r.moe_layers, " (d ", mc.d_model, ", F ", mc.d_ff, ")");
    for (size_t l = 0; l < mo.rows.size(); ++l)
      MOE_CHECK(static_cast<int64_t>(mo.rows[l].size()) == E && mo.gx[l].size() == mo.rows[l].size() &&
                    mo.gh[l].size() == mo.rows[l].size(),
                "compress: calibration moments of MoE layer ", l, " cover ", mo.rows[l].size(),
                " experts, not ", E);
  }
  double err_sum = 0, energy_sum = 0, input_err_sum = 0;
  int64_t n_input = 0;
  for (int64_t l = 0; l < cfg.num_hidden_layers; ++l) {
    if (!cfg.is_moe_layer(l)) continue;
    for (int k = 0; k < 3; ++k) {
      const Kind kd = kind_shape(mc, k);
      if (!kd.present) continue;
      const int64_t N = kd.N, K = kd.K;
      std::vector<std::vector<double>> w(static_cast<size_t>(E));
      std::vector<DType> dts(static_cast<size_t>(E));
      std::vector<std::string> names(static_cast<size_t>(E));
      for (int64_t e = 0; e < E; ++e) {
        names[e] = expert_weight_names(cfg, l, e)[static_cast<size_t>(k)];
        const Tensor t = source.load(names[e]);
        const DType dt = t.dtype();
        MOE_CHECK(dt == DType::F32 || dt == DType::BF16 || dt == DType::F16, "compress: tensor '", names[e],
                  "'", where(source, names[e]), " has dtype ", dtype_name(dt), "; expected f32, bf16 or f16");
        MOE_CHECK(t.shape() == Shape({N, K}), "compress: tensor '", names[e], "'", where(source, names[e]),
                  ": expected shape (", N, ", ", K, "), got ", shape_str(t.shape()));
        const Tensor f = t.to(DType::F64).contiguous();
        w[e].assign(f.data<double>(), f.data<double>() + N * K);
        dts[e] = dt;
      }
      std::vector<double> base;
      if (o.shared_base) {  // W̄ = mean over the experts
        base.assign(static_cast<size_t>(N * K), 0.0);
        for (int64_t e = 0; e < E; ++e)
          for (int64_t i = 0; i < N * K; ++i) base[i] += w[e][i];
        for (double& x : base) x /= static_cast<double>(E);
        const std::string bn = low_rank_base_name(cfg, l, k);
        out[bn] = Tensor::from(base, {N, K}, dts[0], bn);
      }
      std::vector<FactorStats> st(static_cast<size_t>(E));
      std::vector<Tensor> fa(static_cast<size_t>(E)), fb(static_cast<size_t>(E));
      // Calibration moments of this kind's inputs: x for gate and up, h for down.
      const ExpertInputMoments* mo = o.moments;
      const int64_t moe_index = moe_layer_index(cfg, l);
      parallel_items(E, [&](int64_t e) {
        std::vector<double> delta = w[e];
        if (!base.empty())
          for (int64_t i = 0; i < N * K; ++i) delta[i] -= base[i];
        std::vector<double> A, B, sv;
        const int64_t rows = mo ? mo->rows[moe_index][e] : 0;
        if (rows > 0) {
          const std::vector<double>& g = k == 2 ? mo->gh[moe_index][e] : mo->gx[moe_index][e];
          st[e].input_error = factors_whitened(delta.data(), N, K, R, g, rows, o.damping, A, B);
          sv = svd::thin_svd(delta.data(), N, K).S;  // for the energy kept, as without moments
        } else {
          svd::truncated_factors(delta.data(), N, K, R, A, B, &sv);
        }
        double kept = 0, all = 0;
        for (size_t j = 0; j < sv.size(); ++j) (j < static_cast<size_t>(R) ? kept : all) += sv[j] * sv[j];
        all += kept;
        // ‖W − (W̄ + A·B)‖_F / ‖W‖_F, all in double.
        const double err = residual_sq(delta.data(), A, B, N, K, R), norm = sum_sq(w[e].data(), N * K);
        st[e].rel_error = norm > 0 ? std::sqrt(err / norm) : 0.0;
        st[e].energy_kept = all > 0 ? kept / all : 1.0;
        fa[e] = Tensor::from(A, {N, R}, dts[e]);
        fb[e] = Tensor::from(B, {R, K}, dts[e]);
      });
      for (int64_t e = 0; e < E; ++e) {
        out[low_rank_name(names[e], "lr_a")] = std::move(fa[e]);
        out[low_rank_name(names[e], "lr_b")] = std::move(fb[e]);
        err_sum += st[e].rel_error;
        energy_sum += st[e].energy_kept;
        if (st[e].input_error >= 0) {
          input_err_sum += st[e].input_error, ++n_input;
        } else if (o.moments) {
          ++r.matrices_without_rows;
        }
        r.rel_error_max = std::max(r.rel_error_max, st[e].rel_error);
        r.matrices += 1;
        r.expert_params_before += N * K;
        r.expert_params_after += R * (N + K);
      }
      if (o.shared_base) r.expert_params_after += N * K;
    }
  }
  r.rel_error_mean = err_sum / static_cast<double>(std::max<int64_t>(r.matrices, 1));
  r.energy_kept_mean = energy_sum / static_cast<double>(std::max<int64_t>(r.matrices, 1));
  if (n_input > 0) r.rel_input_error_mean = input_err_sum / static_cast<double>(n_input);

  config["low_rank_config"] = ojson{{"method", kMethod}, {"rank", R}, {"shared_base", o.shared_base}};
  std::error_code ec;
  fs::create_directories(dst, ec);
  MOE_CHECK(!ec, "compress: cannot create directory '", dst_dir, "': ", ec.message());
  fs::remove(dst / "model.safetensors.index.json", ec);  // an earlier sharded checkpoint's (--overwrite)
  save_safetensors((dst / "model.safetensors").string(), out,
                   {{"format", "pt"}, {"compressed_by", "moe_cpp"}});
  io::write_file_atomic((dst / "config.json").string(), "config.json",
                        [&](std::ostream& f) { f << config.dump(2) << "\n"; });
  for (const char* f :
       {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"}) {
    // Beside the checkpoint, or (a run directory's checkpoint/) one folder up, as inference looks.
    fs::path from = src / f;
    if (!fs::exists(from)) from = src.parent_path() / f;
    if (!fs::exists(from)) continue;
    fs::copy_file(from, dst / f, fs::copy_options::overwrite_existing, ec);
    MOE_CHECK(!ec, "compress: cannot copy '", from.string(), "' to '", dst_dir, "': ", ec.message());
  }
  r.file_bytes = static_cast<int64_t>(fs::file_size(dst / "model.safetensors"));
  return r;
}

LowRankExperts load_low_rank_experts(const TensorSource& src, const ModelConfig& cfg, int64_t layer,
                                     const LowRankConfig& lrc) {
  const MoEConfig mc = cfg.moe_layer_config();
  const int64_t E = cfg.num_experts, R = lrc.rank;
  const std::set<std::string> names(src.names.begin(), src.names.end());
  LowRankExperts x;
  x.rank = R;
  LowRankMatrix* mats[3] = {&x.gate, &x.up, &x.down};
  for (int k = 0; k < 3; ++k) {
    const Kind kd = kind_shape(mc, k);
    if (!kd.present) continue;
    LowRankMatrix& m = *mats[k];
    m.a = Tensor::empty({E, kd.N, R}, DType::F32, cat("layer ", layer, " ", kKindName[k], " lr_a"));
    m.b = Tensor::empty({E, R, kd.K}, DType::F32, cat("layer ", layer, " ", kKindName[k], " lr_b"));
    for (int64_t e = 0; e < E; ++e) {
      const std::string w = expert_weight_names(cfg, layer, e)[static_cast<size_t>(k)];
      const Tensor a = load_checked(src, names, low_rank_name(w, "lr_a"), {kd.N, R}, "factor A (N, R)");
      const Tensor b = load_checked(src, names, low_rank_name(w, "lr_b"), {R, kd.K}, "factor B (R, K)");
      std::copy(a.data<float>(), a.data<float>() + kd.N * R, m.a.data<float>() + e * kd.N * R);
      std::copy(b.data<float>(), b.data<float>() + R * kd.K, m.b.data<float>() + e * R * kd.K);
    }
    if (lrc.shared_base)
      m.base =
          load_checked(src, names, low_rank_base_name(cfg, layer, k), {kd.N, kd.K}, "shared base (N, K)");
  }
  return x;
}

TensorSource materializing_source(TensorSource src, const ModelConfig& cfg, const LowRankConfig& lrc) {
  const MoEConfig mc = cfg.moe_layer_config();
  struct Expert {
    int64_t layer, expert;
    int kind;
  };
  auto experts = std::make_shared<std::map<std::string, Expert>>();
  std::set<std::string> replaced;
  for (int64_t l = 0; l < cfg.num_hidden_layers; ++l) {
    if (!cfg.is_moe_layer(l)) continue;
    for (int k = 0; k < 3; ++k) {
      if (!kind_shape(mc, k).present) continue;
      if (lrc.shared_base) replaced.insert(low_rank_base_name(cfg, l, k));
      for (int64_t e = 0; e < cfg.num_experts; ++e) {
        const std::string w = expert_weight_names(cfg, l, e)[static_cast<size_t>(k)];
        (*experts)[w] = Expert{l, e, k};
        replaced.insert(low_rank_name(w, "lr_a"));
        replaced.insert(low_rank_name(w, "lr_b"));
      }
    }
  }
  TensorSource out;
  for (const std::string& n : src.names)
    if (!replaced.count(n)) out.names.push_back(n);
  for (const auto& [n, ex] : *experts) out.names.push_back(n);
  std::sort(out.names.begin(), out.names.end());
  auto names = std::make_shared<std::set<std::string>>(src.names.begin(), src.names.end());
  // The shared bases, read once each (the experts of a layer share one).
  auto bases = std::make_shared<std::map<std::string, Tensor>>();
  auto mu = std::make_shared<std::mutex>();
  out.load = [src, experts, names, bases, mu, cfg, mc, lrc](const std::string& name) {
    const auto it = experts->find(name);
    if (it == experts->end()) return src.load(name);
    const Expert ex = it->second;
    const Kind kd = kind_shape(mc, ex.kind);
    const int64_t R = lrc.rank;
    const Tensor a = load_checked(src, *names, low_rank_name(name, "lr_a"), {kd.N, R}, "factor A (N, R)");
    const Tensor b = load_checked(src, *names, low_rank_name(name, "lr_b"), {R, kd.K}, "factor B (R, K)");
    const float* base = nullptr;
    if (lrc.shared_base) {
      const std::string bn = low_rank_base_name(cfg, ex.layer, ex.kind);
      std::lock_guard<std::mutex> g(*mu);
      auto bi = bases->find(bn);
      if (bi == bases->end())
        bi = bases->emplace(bn, load_checked(src, *names, bn, {kd.N, kd.K}, "shared base (N, K)")).first;
      base = bi->second.data<float>();
    }
    Tensor w = Tensor::empty({kd.N, kd.K}, DType::F32, name);
    multiply_factors(a.data<float>(), b.data<float>(), base, kd.N, kd.K, R, w.data<float>());
    return w;
  };
  if (src.map)  // the experts are made here, not in the file
    out.map = [src, experts](const std::string& name) {
      return experts->count(name) ? Tensor() : src.map(name);
    };
  if (src.file)
    out.file = [src, experts](const std::string& name) {
      return src.file(experts->count(name) ? low_rank_name(name, "lr_a") : name);
    };
  return out;
}

void attach_low_rank_experts(Transformer& m, const TensorSource& src, const LowRankConfig& lrc) {
  MOE_CHECK(m.external_experts(),
            "low-rank experts: the model holds its own expert weights; build it with "
            "external_experts");
  const ModelConfig& cfg = m.config();
  for (int64_t l = 0; l < cfg.num_hidden_layers; ++l) {
    MoELayer* layer = m.mutable_moe_layer(l);
    if (!layer) continue;
    layer->set_expert_executor(std::make_shared<LowRankExecutor>(
        load_low_rank_experts(src, cfg, l, lrc), layer->config(), cat("layer ", l), m.backend()));
  }
}

bool factored_is_faster(const ModelConfig& cfg, int64_t layer, const LowRankConfig& lrc) {
  MOE_CHECK(cfg.is_moe_layer(layer), "low-rank: layer ", layer, " is not a MoE layer");
  const MoEConfig mc = cfg.moe_layer_config();
  return low_rank_flops_per_row(mc, lrc.rank, lrc.shared_base) < kFactoredAdvantage * dense_flops_per_row(mc);
}

}  // namespace moe::model
