// `moe compress --model DIR --out DIR (--rank R | --ratio X) [--shared-base] [--calibration FILE
// [--seq-len S] [--damping D]] [--overwrite] [--json] [--threads N]`: every routed expert matrix as a
// truncated SVD (moe/model/low_rank.h), activation-aware with calibration text; the result loads in
// `moe eval`, `moe generate` and `moe serve`. docs/LOW_RANK.md.
#include <chrono>
#include <cstdio>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli/calibration_cmd.h"
#include "cli/common.h"
#include "cli/model_dir.h"
#include "moe/core/error.h"
#include "moe/infer/merge_calibrate.h"
#include "moe/model/low_rank.h"

namespace moe::cli {
namespace {

struct CompressArgs {
  std::string model, out;
  model::CompressOptions opt;
  std::string calibration;
  int64_t seq_len = 0;
  bool json = false;
  int threads = 0;
};

int run_compress(const CompressArgs& a) {
  apply_threads(a.threads);
  MOE_CHECK((a.opt.rank > 0) != (a.opt.ratio > 0), "compress: give exactly one of --rank R and --ratio X");
  const std::string dir = resolve_model_dir(a.model);
  const auto t0 = std::chrono::steady_clock::now();
  model::CompressOptions opt = a.opt;
  model::ExpertInputMoments moments;
  int64_t calib_tokens = 0;
  if (!a.calibration.empty()) {  // activation-aware: the experts' input moments on the text
    const CalibrationInput in =
        read_calibration_input("compress", a.model, a.out, a.opt.overwrite, a.calibration);
    model::Transformer m = model::load_pretrained(in.dir);
    const int64_t S = calibration_seq_len("compress", a.seq_len, m.config());
    moments = infer::measure_expert_moments(m, in.tokens, S);
    opt.moments = &moments;
    calib_tokens = static_cast<int64_t>(in.tokens.size());
  }
  const model::CompressResult r = model::compress_checkpoint(dir, a.out, opt);
  const double seconds = ms_since(t0) / 1000.0;
  const double ratio = static_cast<double>(r.expert_params_after) /
                       static_cast<double>(std::max<int64_t>(r.expert_params_before, 1));
  if (a.json) {
    std::cout << nlohmann::json{{"out", a.out},
                                {"rank", r.rank},
                                {"shared_base", a.opt.shared_base},
                                {"moe_layers", r.moe_layers},
                                {"matrices", r.matrices},
                                {"expert_params_before", r.expert_params_before},
                                {"expert_params_after", r.expert_params_after},
                                {"param_ratio", ratio},
                                {"rel_error_mean", r.rel_error_mean},
                                {"rel_error_max", r.rel_error_max},
                                {"energy_kept_mean", r.energy_kept_mean},
                                {"calibration_tokens", calib_tokens},
                                {"rel_input_error_mean", r.rel_input_error_mean},
                                {"matrices_without_rows", r.matrices_without_rows},
                                {"file_bytes", r.file_bytes},
                                {"seconds", round_to(seconds, 3)}}
                     .dump()
              << "\n";
    return kExitOk;
  }
  std::printf("compressed %s -> %s: rank %lld%s, %lld MoE layers, %lld expert matrices in %.1f s\n",
              dir.c_str(), a.out.c_str(), static_cast<long long>(r.rank),
              a.opt.shared_base ? " on a shared base" : "", static_cast<long long>(r.moe_layers),
              static_cast<long long>(r.matrices), seconds);
  std::printf("  expert parameters %lld -> %lld (%.1f%%)\n", static_cast<long long>(r.expert_params_before),
              static_cast<long long>(r.expert_params_after), 100.0 * ratio);
  std::printf("  relative error ||W - W'||/||W||: mean %.4f, max %.4f; energy kept (mean) %.2f%%\n",
              r.rel_error_mean, r.rel_error_max, 100.0 * r.energy_kept_mean);
  if (opt.moments)
    std::printf(
        "  activation-aware (%lld calibration tokens): error on the inputs seen ||(W - W')L||/||WL|| "
        "mean %.4f; %lld matrices without calibration rows (plain SVD)\n",
        static_cast<long long>(calib_tokens), r.rel_input_error_mean,
        static_cast<long long>(r.matrices_without_rows));
  std::printf("  model.safetensors %lld bytes (%.2f MiB)\n", static_cast<long long>(r.file_bytes),
              static_cast<double>(r.file_bytes) / 1048576.0);
  return kExitOk;
}

}  // namespace

void register_compress(CLI::App& app, Registry& reg) {
  auto a = std::make_shared<CompressArgs>();
  CLI::App* c = app.add_subcommand("compress", "Write a checkpoint with low-rank (truncated SVD) experts");
  add_model_flag(c, a->model);
  c->add_option("--out", a->out, "Output model directory (must be empty or absent, unless --overwrite)")
      ->required();
  c->add_option("--rank", a->opt.rank, "Rank R of every expert matrix's factors (at most min(N, K))")
      ->check(in_range(1, 1 << 20));
  c->add_option("--ratio", a->opt.ratio,
                "Instead of --rank: the rank whose stored expert parameters are about this fraction of the "
                "originals, in (0, 1)")
      ->check(above_at_most(0, 1));
  c->add_flag("--shared-base", a->opt.shared_base,
              "Each MoE layer's matrix kind stores the experts' mean once; experts store rank-R deltas");
  c->add_option("--calibration", a->calibration,
                "Text to run the model on: each expert matrix is factorised for the inputs it sees there "
                "(activation-aware, docs/LOW_RANK.md) instead of by its own singular values");
  c->add_option("--seq-len", a->seq_len, "Calibration window in tokens (0: min(context, 512))")
      ->check(in_range(0, 1 << 24));
  c->add_option("--damping", a->opt.damping,
                "With --calibration: added to the inputs' second moment, times its mean diagonal")
      ->check(above_at_most(0, 1e6))
      ->capture_default_str();
  c->add_flag("--overwrite", a->opt.overwrite, "Replace the files of a non-empty --out");
  add_threads_flag(c, a->threads);
  add_json_flag(c, a->json);
  c->footer(
      "Each routed expert's W (N, K) becomes lr_a (N, R) and lr_b (R, K) with A·B its best rank-R\n"
      "approximation; everything else is copied unchanged. config.json gains a low_rank_config.\n"
      "Inference runs the factors (x·Bᵀ·Aᵀ) or materialises A·B at load: --low-rank-exec of eval,\n"
      "generate and serve (docs/LOW_RANK.md).");
  c->callback([&reg, a] { reg.action = [a] { return run_compress(*a); }; });
}

}  // namespace moe::cli
