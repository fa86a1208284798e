// The op table's instantiations (one per row and element type), its listing, and the names of
// backends and activations. The rows themselves are in rows_*.h.
#include "kernels/op_table.h"

#include <string>
#include <vector>

#include "kernels/rows_core.h"
#include "kernels/rows_elementwise.h"
#include "kernels/rows_ffn.h"
#include "kernels/rows_moves.h"
#include "kernels/rows_routing.h"
#include "kernels/rows_weights.h"
#include "moe/core/error.h"
#ifdef MOE_HAVE_CUDA
#include "kernels/cuda/cuda.h"
#endif

namespace moe::kernels {

// ---------------------------------------------------------------------------------------------
// The rows. A new op adds its Args here (and to op_table() below).

#define MOE_OP_ROWS_TYPED(T)                        \
  MOE_OP_ROW_INSTANTIATE(GemmArgs<T>)               \
  MOE_OP_ROW_INSTANTIATE(GroupedGemmArgs<T>)        \
  MOE_OP_ROW_INSTANTIATE(GroupedWgradArgs<T>)       \
  MOE_OP_ROW_INSTANTIATE(ActivationArgs<T>)         \
  MOE_OP_ROW_INSTANTIATE(ActivationBackwardArgs<T>) \
  MOE_OP_ROW_INSTANTIATE(CombineArgs<T>)            \
  MOE_OP_ROW_INSTANTIATE(CombineBackwardArgs<T>)    \
  MOE_OP_ROW_INSTANTIATE(FfnUpArgs<T>)              \
  MOE_OP_ROW_INSTANTIATE(FfnDownBackwardArgs<T>)    \
  MOE_OP_ROW_INSTANTIATE(GroupedGemmCatArgs<T>)     \
  MOE_OP_ROW_INSTANTIATE(GroupedGemmScatterArgs<T>)

MOE_OP_ROWS_TYPED(float)
MOE_OP_ROWS_TYPED(double)
MOE_OP_ROW_INSTANTIATE(PermuteArgs)
MOE_OP_ROW_INSTANTIATE(GroupedGemmWArgs)
MOE_OP_ROW_INSTANTIATE(GroupedGemmBf16Args)
MOE_OP_ROW_INSTANTIATE(GemmBf16Args)
MOE_OP_ROW_INSTANTIATE(GemmQuantArgs)
MOE_OP_ROW_INSTANTIATE(RouterTopkArgs<float>)
MOE_OP_ROW_INSTANTIATE(RouterTopkArgs<double>)
MOE_OP_ROW_INSTANTIATE(RoutingStatsArgs<float>)
MOE_OP_ROW_INSTANTIATE(RoutingStatsArgs<double>)
MOE_OP_ROW_INSTANTIATE(DispatchRowsArgs<float>)
MOE_OP_ROW_INSTANTIATE(DispatchRowsArgs<double>)
MOE_OP_ROW_INSTANTIATE(ScaleScatterRowsArgs<float>)
MOE_OP_ROW_INSTANTIATE(ScaleScatterRowsArgs<double>)
MOE_OP_ROW_INSTANTIATE(AddGatedRowsArgs<float>)
MOE_OP_ROW_INSTANTIATE(AddGatedRowsArgs<double>)
MOE_OP_ROW_INSTANTIATE(ScatterValuesArgs<float>)
MOE_OP_ROW_INSTANTIATE(ScatterValuesArgs<double>)
#undef MOE_OP_ROWS_TYPED

std::vector<OpInfo> op_table() {
  using table::info;
  std::vector<OpInfo> rows;
  auto typed = [&rows](auto tag) {
    using T = decltype(tag);
    for (OpInfo i : {info<GemmArgs<T>>(), info<GroupedGemmArgs<T>>(), info<GroupedWgradArgs<T>>(),
                     info<ActivationArgs<T>>(), info<ActivationBackwardArgs<T>>(), info<CombineArgs<T>>(),
                     info<CombineBackwardArgs<T>>(), info<FfnUpArgs<T>>(), info<FfnDownBackwardArgs<T>>(),
                     info<GroupedGemmCatArgs<T>>(), info<GroupedGemmScatterArgs<T>>()}) {
      rows.push_back(std::move(i));
    }
  };
  typed(float{});
  rows.push_back(info<PermuteArgs>());
  rows.push_back(info<GroupedGemmWArgs>());
  rows.push_back(info<GroupedGemmBf16Args>());
  rows.push_back(info<GemmBf16Args>());
  rows.push_back(info<GemmQuantArgs>());
  rows.push_back(info<RouterTopkArgs<float>>());
  rows.push_back(info<RoutingStatsArgs<float>>());
  rows.push_back(info<DispatchRowsArgs<float>>());
  rows.push_back(info<ScaleScatterRowsArgs<float>>());
  rows.push_back(info<AddGatedRowsArgs<float>>());
  rows.push_back(info<ScatterValuesArgs<float>>());
  typed(double{});
  rows.push_back(info<RouterTopkArgs<double>>());
  rows.push_back(info<RoutingStatsArgs<double>>());
  rows.push_back(info<DispatchRowsArgs<double>>());
  rows.push_back(info<ScaleScatterRowsArgs<double>>());
  rows.push_back(info<AddGatedRowsArgs<double>>());
  rows.push_back(info<ScatterValuesArgs<double>>());
  return rows;
}

namespace table {

void require_cuda_device(const char* op) {
#ifdef MOE_HAVE_CUDA
  MOE_CHECK(cuda::device_count() > 0, op,
            ": the cuda backend is not available (no GPU or CUDA driver found)");
#else
  throw Error(cat(op, ": the cuda backend is not available (this build has no CUDA support)"));
#endif
}

}  // namespace table

// ---------------------------------------------------------------------------------------------
// Names

const char* backend_name(Backend b) {
  switch (b) {
    case Backend::Ref:
      return "ref";
    case Backend::Cpu:
      return "cpu";
    case Backend::Cuda:
      return "cuda";
  }
  return "?";
}

Backend backend_from_name(const std::string& name) {
  if (name == "ref") return Backend::Ref;
  if (name == "cpu") return Backend::Cpu;
  if (name == "cuda") return Backend::Cuda;
  throw Error(cat("unknown backend '", name, "' (expected ref, cpu or cuda)"));
}

bool backend_available(Backend b) {
  switch (b) {
    case Backend::Ref:
    case Backend::Cpu:
      return true;
    case Backend::Cuda:
#ifdef MOE_HAVE_CUDA
      return cuda::device_count() > 0;
#else
      return false;
#endif
  }
  return false;
}

std::vector<Backend> available_backends() {
  std::vector<Backend> out;
  for (Backend b : {Backend::Ref, Backend::Cpu, Backend::Cuda}) {
    if (backend_available(b)) out.push_back(b);
  }
  return out;
}

const char* activation_name(Activation a) {
  switch (a) {
    case Activation::SwiGLU:
      return "swiglu";
    case Activation::Gelu:
      return "gelu";
    case Activation::Relu:
      return "relu";
    case Activation::Silu:
      return "silu";
  }
  return "?";
}

Activation activation_from_name(const std::string& name) {
  if (name == "swiglu") return Activation::SwiGLU;
  if (name == "gelu") return Activation::Gelu;
  if (name == "relu") return Activation::Relu;
  if (name == "silu") return Activation::Silu;
  throw Error(cat("unknown activation '", name, "' (expected swiglu, gelu, relu or silu)"));
}

}  // namespace moe::kernels
