// `moe quantize --model DIR --out DIR --bits 8|4 [--group-size 32|64|128] [--attention]
//  [--mixed-bits 4 --mixed-fraction F --usage FILE] [--overwrite] [--json]`: writes a checkpoint whose
// routed experts (and optionally attention projections) are group-wise int8/int4
// (include/moe/model/quantized.h), and prints the bytes of the expert weights before and after.
#include <cstdio>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "cli/model_dir.h"
#include "moe/model/quantized.h"

namespace moe::cli {
namespace {

struct QuantArgs {
  std::string src, out;
  model::QuantizeOptions opt;
  bool json = false;
};

double mib(int64_t b) { return static_cast<double>(b) / (1024.0 * 1024.0); }

int run_quantize(const QuantArgs& a) {
  const model::QuantizeResult r = model::quantize_checkpoint(resolve_model_dir(a.src), a.out, a.opt);
  const int64_t bf16_bytes = 2 * r.expert_params;
  const double of_bf16 =
      bf16_bytes > 0 ? static_cast<double>(r.expert_bytes_after) / static_cast<double>(bf16_bytes) : 0;
  int64_t mixed = 0;
  for (const auto& layer : r.config.expert_bits)
    for (int b : layer) mixed += b != a.opt.bits;
  if (a.json) {
    std::cout << nlohmann::json{{"out", a.out},
                                {"bits", a.opt.bits},
                                {"group_size", a.opt.group},
                                {"attention", a.opt.attention},
                                {"mixed_bits", a.opt.mixed_bits},
                                {"mixed_experts", mixed},
                                {"expert_tensors", r.expert_tensors},
                                {"attention_tensors", r.attention_tensors},
                                {"expert_params", r.expert_params},
                                {"expert_bytes_before", r.expert_bytes_before},
                                {"expert_bytes_after", r.expert_bytes_after},
                                {"expert_bytes_bf16", bf16_bytes},
                                {"ratio_to_bf16", round_to(of_bf16, 4)},
                                {"attention_bytes_before", r.attention_bytes_before},
                                {"attention_bytes_after", r.attention_bytes_after},
                                {"file_bytes", r.file_bytes}}
                     .dump()
              << "\n";
    return kExitOk;
  }
  std::printf("quantize: wrote %s (int%d, group %lld, %s", a.out.c_str(), a.opt.bits,
              static_cast<long long>(a.opt.group), a.opt.attention ? "experts and attention" : "experts");
  if (a.opt.mixed_bits != 0)
    std::printf("; %lld experts in int%d", static_cast<long long>(mixed), a.opt.mixed_bits);
  std::printf(")\n");
  std::printf("  expert weights  %lld tensors, %lld parameters\n", static_cast<long long>(r.expert_tensors),
              static_cast<long long>(r.expert_params));
  std::printf("    before        %lld bytes (%.2f MiB)\n", static_cast<long long>(r.expert_bytes_before),
              mib(r.expert_bytes_before));
  std::printf("    after         %lld bytes (%.2f MiB), %.1f%% of bf16 (%.2f MiB)\n",
              static_cast<long long>(r.expert_bytes_after), mib(r.expert_bytes_after), 100.0 * of_bf16,
              mib(bf16_bytes));
  if (a.opt.attention)
    std::printf("  attention       %lld tensors, %lld -> %lld bytes\n",
                static_cast<long long>(r.attention_tensors), static_cast<long long>(r.attention_bytes_before),
                static_cast<long long>(r.attention_bytes_after));
  std::printf("  model.safetensors %lld bytes (%.2f MiB)\n", static_cast<long long>(r.file_bytes),
              mib(r.file_bytes));
  return kExitOk;
}

}  // namespace

void register_quantize(CLI::App& app, Registry& reg) {
  auto a = std::make_shared<QuantArgs>();
  CLI::App* c = app.add_subcommand("quantize", "Write a checkpoint with group-wise int8/int4 experts");
  add_model_flag(c, a->src);
  c->add_option("--out", a->out, "Output model directory (must be empty or absent, unless --overwrite)")
      ->required();
  c->add_option("--bits", a->opt.bits, "Bits per expert weight")->required()->check(CLI::IsMember({4, 8}));
  c->add_option("--group-size", a->opt.group, "Weights per scale (and min): consecutive inputs of one output")
      ->check(CLI::IsMember({32, 64, 128}))
      ->capture_default_str();
  c->add_flag("--attention", a->opt.attention, "Also quantize the attention projections");
  c->add_option("--mixed-bits", a->opt.mixed_bits,
                "Bits of the least-used experts (with --mixed-fraction, --usage)")
      ->check(CLI::IsMember({4, 8}));
  c->add_option("--mixed-fraction", a->opt.mixed_fraction,
                "Fraction of each MoE layer's experts, lowest routing weight first, that get --mixed-bits")
      ->check(in_range(0, 1));
  c->add_option("--usage", a->opt.usage_file, "Expert usage JSON measured on calibration text");
  c->add_flag("--overwrite", a->opt.overwrite, "Replace the files of a non-empty --out");
  add_json_flag(c, a->json);
  c->footer(
      "Routed experts' gate/up/down weights become int8 (symmetric, one f16 scale per group) or int4\n"
      "(asymmetric, f16 scale and min per group); shared experts, dense layers, router, norms and\n"
      "embeddings are copied unchanged. config.json gains a quantization_config (docs/QUANTIZATION.md).");
  c->callback([&reg, a] { reg.action = [a] { return run_quantize(*a); }; });
}

}  // namespace moe::cli
