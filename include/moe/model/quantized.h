// Quantized checkpoints (`moe quantize`): the Hugging Face layout with some linear weights stored as
// group-wise int8/int4 (moe/kernels/ops_quant.h gives the formats).
//
// config.json gains
//   "quantization_config": {"quant_method": "moe_cpp", "bits": 4, "group_size": 64,
//                           "modules": ["experts"] or ["experts", "attention"],
//                           "expert_bits": [[4, 8, ...], ...]   (optional: per MoE layer, per expert)}
// and each quantized linear "<name>.weight" (N, K) is replaced by
//   "<name>.qweight"  I8 (N, K) for int8, U8 (N, K / 2) for int4
//   "<name>.scales"   F16 (N, K / group)
//   "<name>.mins"     F16 (N, K / group), int4 only
// The bits of a tensor follow from the dtype of its qweight. Everything else is as in the source
// checkpoint (same names, dtypes and values).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "moe/kernels/ops_quant.h"
#include "moe/model/transformer.h"

namespace moe::model {

struct QuantConfig {
  int bits = 0;  // 0: not quantized
  int64_t group = 64;
  bool attention = false;                     // attention projections quantized too
  std::vector<std::vector<int>> expert_bits;  // per MoE layer (in layer order), per expert; empty: all `bits`
};

// The quantization_config of `dir`/config.json; bits 0 when there is none. Throws on a malformed one.
QuantConfig read_quant_config(const std::string& dir);

// The bits of expert e of the moe_index-th MoE layer (counting MoE layers only): expert_bits when
// present, else bits.
int expert_bits_of(const QuantConfig& q, int64_t moe_index, int64_t e);
// Throws moe::Error naming `what` (e.g. the model directory) when q does not fit the model c:
// expert_bits without one row of c.num_experts entries per MoE layer.
void check_quant_config(const QuantConfig& q, const ModelConfig& c, const std::string& what);

// True when `src` holds "<weight_name minus .weight>.qweight".
bool has_quantized(const TensorSource& src, const std::string& weight_name);
// Loads "<base>.qweight/.scales/.mins" for the linear whose float name would be `weight_name`
// ("....w1.weight"), checking dtypes and that the shape is (N, K) with the given group.
kernels::QuantizedMatrix load_quantized(const TensorSource& src, const std::string& weight_name, int64_t N,
                                        int64_t K, int64_t group);

// ---- writing: `moe quantize` ----

struct QuantizeOptions {
  int bits = 4;            // 8 or 4
  int64_t group = 64;      // a multiple of 32 that divides every quantized K
  bool attention = false;  // also the attention projections (hf_names: q/k/v/o; deepseek_v3's MLA ones)
  // Mixed precision: the fraction mixed_fraction of each MoE layer's experts with the lowest routing
  // weight in usage_file (save_expert_usage's JSON, moe/model/expert_usage.h) get mixed_bits
  // instead of bits.
  int mixed_bits = 0;  // 0 (off), 4 or 8
  double mixed_fraction = 0;
  std::string usage_file;
  bool overwrite = false;  // replace the files of a non-empty dst
};

struct QuantizeResult {
  QuantConfig config;               // what was written into quantization_config
  int64_t expert_tensors = 0;       // routed-expert linears quantized
  int64_t attention_tensors = 0;    // attention linears quantized
  int64_t expert_params = 0;        // their elements
  int64_t expert_bytes_before = 0;  // in the source checkpoint (its dtype)
  int64_t expert_bytes_after = 0;   // qweight + scales + mins
  int64_t attention_bytes_before = 0, attention_bytes_after = 0;
  int64_t file_bytes = 0;  // dst/model.safetensors
};

// Reads the checkpoint in src_dir tensor by tensor (f32, bf16 or f16 linears), quantizes every routed
// expert's gate/up/down weight (shared experts, dense layers, router, norms and embeddings stay as they
// are) and, with attention, the attention projections; writes dst_dir/model.safetensors, dst_dir/config.json
// (the source's with quantization_config added) and copies tokenizer.json, tokenizer_config.json and
// generation_config.json where present. Throws moe::Error, before writing anything, on bad options, a
// non-empty dst_dir without overwrite, a source that is already quantized, a quantized linear whose K
// is not a multiple of group, or a usage file that does not match the model.
QuantizeResult quantize_checkpoint(const std::string& src_dir, const std::string& dst_dir,
                                   const QuantizeOptions& opt);

}  // namespace moe::model
