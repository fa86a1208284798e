// Threaded CPU implementations (moe::parallel_for / parallel_items). Deterministic: every output
// element has exactly one owner and a fixed summation order that does not depend on the thread
// count. Arguments have been validated by the op table (src/kernels/op_table.h, rows_*.h).
#pragma once

#include "moe/kernels/ops.h"
#include "moe/kernels/ops_bf16.h"
#include "moe/kernels/ops_moves.h"
#include "moe/kernels/ops_quant.h"
#include "moe/kernels/ops_routing.h"
#include "moe/kernels/weights.h"

namespace moe::kernels::cpu {

template <typename T>
void gemm(const GemmArgs<T>& args);

void permute(const PermuteArgs& args);

template <typename T>
void grouped_gemm(const GroupedGemmArgs<T>& args);

template <typename T>
void grouped_gemm_wgrad(const GroupedWgradArgs<T>& args);
// args.bf16 on AMX (wgemm/wgrad_bf16.cpp): false, computing nothing, when the bf16 family is not on amx.
bool grouped_gemm_wgrad_bf16(const GroupedWgradArgs<float>& args);

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

// The GEMM over stored weight formats (moe/kernels/weights.h); grouped_gemm_bf16w, gemm_bf16w and
// gemm_qw (ops_bf16.h, ops_quant.h) call it (rows_weights.h).
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

}  // namespace moe::kernels::cpu
