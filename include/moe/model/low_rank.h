// Low-rank expert checkpoints (`moe compress`): every routed expert matrix W (N, K) (gate and up (F, d),
// down (d, F)) stored as a truncated SVD W ≈ A·B, A (N, R), B (R, K) (src/model/svd.h says how the
// singular values are split between A and B). With a shared base, each MoE layer's matrix kind gets
// W̄ = the mean of its experts' matrices and each expert stores the rank-R factors of W_e − W̄.
//
// Format: the Hugging Face layout; config.json gains
//   "low_rank_config": {"method": "moe_cpp_low_rank", "rank": R, "shared_base": true|false}
// and each routed expert's "<...>.experts.<e>.<proj>.weight" is replaced by
//   "<...>.experts.<e>.<proj>.lr_a" (N, R) and "<...>.experts.<e>.<proj>.lr_b" (R, K)
// plus, with a shared base, "<...>.experts.base.<proj>.weight" (N, K) once per MoE layer and kind
// (<proj>: gate_proj/up_proj/down_proj, or w1/w3/w2 for mixtral). Factors have the source weights'
// dtype. Everything else is the source checkpoint's, unchanged.
//
// --ratio X picks R so the stored expert parameters are about X of the originals. Per MoE layer, with
// E experts and the kinds' shapes (N_m, K_m):
//   original  P = E · Σ_m N_m·K_m
//   stored    E · R · Σ_m (N_m + K_m)  (+ Σ_m N_m·K_m with a shared base)
//   R = floor(X·P / (E · Σ_m (N_m + K_m)))        (shared base: floor((X·E − 1) · Σ N·K / (E · Σ (N + K))))
// which must be in [1, min(N, K)].
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "moe/model/transformer.h"
#include "moe/moe/low_rank_experts.h"

namespace moe::model {

struct LowRankConfig {
  int64_t rank = 0;  // 0: not a low-rank checkpoint
  bool shared_base = false;
};

// The low_rank_config of `dir`/config.json; rank 0 when there is none. Throws on a malformed one.
LowRankConfig read_low_rank_config(const std::string& dir);

// The rank that --ratio `ratio` gives for `cfg` (formula above). Throws moe::Error when ratio is not
// in (0, 1), the model has no MoE layer, or the rank would fall outside [1, min(N, K)].
int64_t rank_for_ratio(const ModelConfig& cfg, double ratio, bool shared_base);

// Tensor names: "<...>.lr_a" / "<...>.lr_b" for the expert weight "<...>.weight", and the base of
// matrix kind `kind` (0 gate, 1 up, 2 down) of MoE layer `layer`.
std::string low_rank_name(const std::string& weight_name, const char* suffix);
std::string low_rank_base_name(const ModelConfig& cfg, int64_t layer, int kind);

// ---- writing: `moe compress` ----

// What calibration text shows of each routed expert's inputs (`moe compress --calibration`,
// moe/infer/merge_calibrate.h measures it): per MoE layer, in layer order, and expert, the rows the
// router sent to it, the sum of x·xᵀ over their layer inputs x (d, d), and the sum of h·hᵀ over
// their hidden vectors h = act(gate·x) ⊙ (up·x) (F, F), the input of the down projection.
struct ExpertInputMoments {
  int64_t d = 0, F = 0;
  std::vector<std::vector<int64_t>> rows;                // [layer][expert]
  std::vector<std::vector<std::vector<double>>> gx, gh;  // [layer][expert], row-major (d, d) / (F, F)
};

// Activation-aware factors. With C = Σ x·xᵀ / n + δ·I the second moment of a matrix's inputs
// (damped by δ = damping · mean(diag), so that an expert with few rows stays well posed) and
// C = L·Lᵀ its Cholesky factor, the best rank-R Ŵ for the inputs seen minimises
// E‖(W − Ŵ)·x‖² = ‖(W − Ŵ)·L‖_F²: Ŵ = [W·L]_R · L⁻¹, the truncated SVD of W·L taken back through
// L⁻¹ (so A = A', B = B'·L⁻¹ from W·L ≈ A'·B'). An expert with no calibration rows gets the plain
// truncated SVD. factors_whitened writes A (N, R) and B (R, K); gram is the raw Σ x·xᵀ (K, K) of
// `rows` rows. Returns ‖(W − Ŵ)·L‖_F / ‖W·L‖_F, the relative error on the inputs.
double factors_whitened(const double* w, int64_t N, int64_t K, int64_t R, const std::vector<double>& gram,
                        int64_t rows, double damping, std::vector<double>& A, std::vector<double>& B);

struct CompressOptions {
  int64_t rank = 0;  // > 0: this rank
  double ratio = 0;  // else: the rank of this parameter ratio, in (0, 1)
  bool shared_base = false;
  bool overwrite = false;  // replace the files of a non-empty dst
  // Activation-aware factors from calibration moments (null: the plain truncated SVD of each W, or
  // of W − W̄ with a shared base); damping as in factors_whitened.
  const ExpertInputMoments* moments = nullptr;
  double damping = 0.01;
};

struct CompressResult {
  int64_t rank = 0;
  int64_t moe_layers = 0;
  int64_t matrices = 0;              // expert matrices factorised
  int64_t expert_params_before = 0;  // elements of the routed experts' weights
  int64_t expert_params_after = 0;   // factors (+ bases)
  double rel_error_mean = 0;         // ‖W − Ŵ‖_F / ‖W‖_F over the expert matrices (in double)
  double rel_error_max = 0;
  double energy_kept_mean = 0;  // Σ_{i<R} σ_i² / Σ σ_i² of what was factorised (W or W − W̄)
  // With moments: mean over the expert matrices with calibration rows of ‖(W − Ŵ)·L‖_F / ‖W·L‖_F, the
  // error on the inputs seen (-1 without moments), and how many matrices had no rows (plain SVD).
  double rel_input_error_mean = -1;
  int64_t matrices_without_rows = 0;
  int64_t file_bytes = 0;  // dst/model.safetensors
};

// Reads the checkpoint in src_dir (f32, bf16 or f16 experts), factorises every routed expert matrix
// (in parallel over the experts of a layer, on the library's threads) and writes dst_dir/model.safetensors,
// dst_dir/config.json (with low_rank_config) and the tokenizer files. Throws moe::Error, before
// writing anything, on bad options (rank above min(N, K), ratio outside (0, 1)), a model without MoE
// layers, a quantized or already low-rank source, or a non-empty dst without overwrite.
CompressResult compress_checkpoint(const std::string& src_dir, const std::string& dst_dir,
                                   const CompressOptions& opt);

// ---- reading ----

// Loads MoE layer `layer`'s factors (and bases) from src as f32, checking every tensor's presence and
// shape ((N, R), (R, K), (N, K)) with errors naming the tensor and its file.
LowRankExperts load_low_rank_experts(const TensorSource& src, const ModelConfig& cfg, int64_t layer,
                                     const LowRankConfig& lrc);

// `src` with every routed expert's factors presented as its "<...>.weight" (f32, A·B + base computed
// when read), the bases dropped: what a plain model loads (materialising at load).
TensorSource materializing_source(TensorSource src, const ModelConfig& cfg, const LowRankConfig& lrc);

// Attaches a LowRankExecutor with the factors from src to every MoE layer of m, which must have been
// built with external_experts.
void attach_low_rank_experts(Transformer& m, const TensorSource& src, const LowRankConfig& lrc);

// Whether the factored runner does fewer multiply-adds per routed row than the materialised experts
// (moe/moe/low_rank_experts.h) for MoE layer `layer`, by the margin kFactoredAdvantage. Measured
// (docs/LOW_RANK.md): factored was faster at 0.25x and 0.5x the multiply-adds, mixed at 0.85x and
// slower at 1.1x; the margin also covers bf16 inference, where materialised experts read half the
// bytes and the factored runner stays f32.
inline constexpr double kFactoredAdvantage = 0.8;
bool factored_is_faster(const ModelConfig& cfg, int64_t layer, const LowRankConfig& lrc);

}  // namespace moe::model
