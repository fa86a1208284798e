// Reference implementations: plain loops with double accumulation. They are the definition of each
// op in include/moe/kernels/ops.h; the fast backends are tested against them. Arguments have been
// validated by the op table (src/kernels/op_table.h, rows_*.h).
#pragma once

#include "moe/kernels/ops.h"
#include "moe/kernels/ops_bf16.h"
#include "moe/kernels/ops_moves.h"
#include "moe/kernels/ops_quant.h"
#include "moe/kernels/ops_routing.h"
#include "moe/kernels/weights.h"

namespace moe::kernels::ref {

template <typename T>
void gemm(const GemmArgs<T>& args);

void permute(const PermuteArgs& args);

template <typename T>
void grouped_gemm(const GroupedGemmArgs<T>& args);

template <typename T>
void grouped_gemm_wgrad(const GroupedWgradArgs<T>& args);

template <typename T>
void activation(const ActivationArgs<T>& args);

template <typename T>
void activation_backward(const ActivationBackwardArgs<T>& args);

template <typename T>
void combine(const CombineArgs<T>& args);

template <typename T>
void combine_backward(const CombineBackwardArgs<T>& args);

template <typename T>
void grouped_ffn_up(const FfnUpArgs<T>& args);

template <typename T>
void grouped_ffn_down_backward(const FfnDownBackwardArgs<T>& args);

template <typename T>
void grouped_gemm_cat(const GroupedGemmCatArgs<T>& args);

template <typename T>
void grouped_gemm_scatter(const GroupedGemmScatterArgs<T>& args);

// out (K) = scale * h of one stored pre-activation row a (see a_preact in moe/kernels/ops.h), each
// h rounded to T first.
template <typename T>
void preact_row(Activation act, const T* a, int64_t K, T scale, T* out);

// The GEMM over stored weight formats (moe/kernels/weights.h); grouped_gemm_bf16w, gemm_bf16w and
// gemm_qw (ops_bf16.h, ops_quant.h) call it (rows_weights.h).
// op(W)[k, n] of one expert's weight view, as fp32 (the dequantised value for int8 / int4).
float weight_at(const WeightView& W, int64_t k, int64_t n);
void grouped_gemm_w(const GroupedGemmWArgs& args);

// The routing ops (moe/kernels/ops_routing.h).
template <typename T>
void router_topk(const RouterTopkArgs<T>& args);

template <typename T>
void routing_stats(const RoutingStatsArgs<T>& args);

// The row moves (moe/kernels/ops_moves.h).
template <typename T>
void dispatch_rows(const DispatchRowsArgs<T>& args);
template <typename T>
void scale_scatter_rows(const ScaleScatterRowsArgs<T>& args);
template <typename T>
void add_gated_rows(const AddGatedRowsArgs<T>& args);
template <typename T>
void scatter_values(const ScatterValuesArgs<T>& args);

}  // namespace moe::kernels::ref
