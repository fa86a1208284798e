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
  int bits = 0;                  // 0: not quantized
  int64_t group = 64;
  bool attention = false;        // attention projections quantized too
  std::vector<std::vector<int>> expert_bits;  // per MoE layer (in layer order), per expert; empty: all `bits`
};

// The quantization_config of `dir`/config.json; bits 0 when there is none. Throws on a malformed one.
QuantConfig read_quant_config(const std::string& dir);

// True when `src` holds "<weight_name minus .weight>.qweight".
bool has_quantized(const TensorSource& src, const std::string& weight_name);
// Loads "<base>.qweight/.scales/.mins" for the linear whose float name would be `weight_name`
// ("....w1.weight"), checking dtypes and that the shape is (N, K) with the given group.
kernels::QuantizedMatrix load_quantized(const TensorSource& src, const std::string& weight_name, int64_t N,
                                        int64_t K, int64_t group);

}  // namespace moe::model
