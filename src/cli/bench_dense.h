// The dense f32 GEMM rate of this machine, measured with the engine's own kernels::gemm: the
// ceiling `moe bench layer` compares the MoE layer against, taken in the same process.
#pragma once

#include <cstdint>

#include "moe/kernels/ops.h"

namespace moe::cli {

// One dense stand-in for the expert matmuls of a layer: `rows` tokens through `mats` matrices of
// an FFN of width F on a model of width d, in the layer's layout (weights stored (out, in), as
// nn.Linear): for mats == 3 (SwiGLU) gate = X·Wg^T and up = X·Wu^T, (rows, F) each, then
// down = H·Wd^T, (rows, d); for mats == 2 up and down only. One rep is 2·rows·F·d·mats FLOPs.
struct DenseGemmSpec {
  int64_t rows = 0;  // M
  int64_t F = 0;     // FFN width
  int64_t d = 0;     // model width
  int mats = 3;
  int reps = 3;  // timed reps (after one untimed one); >= 1
  kernels::Backend backend = kernels::Backend::Cpu;
  uint64_t seed = 0;
};

struct DenseGemmResult {
  double flops = 0;    // per rep
  double best_ms = 0;  // fastest rep
  double median_ms = 0;
  double gflops_best = 0;  // flops / best_ms
  double gflops_median = 0;
};

// Allocates the operands (random normal, scaled so values stay O(1)), runs one untimed rep and
// `reps` timed ones. Throws moe::Error on a bad spec.
DenseGemmResult measure_dense_gemm(const DenseGemmSpec& spec);

}  // namespace moe::cli
