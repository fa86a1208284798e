// CUDA implementations (T = float): the Cuda column of the op table (src/kernels/op_table.h). All
// pointers in the op arguments are device pointers. Each op enqueues its kernels on the context's
// stream and returns without waiting; scratch memory comes from the context's workspace. Launch
// failures throw moe::Error at once; data errors found on the device (bad expert ids) are recorded in
// the context and thrown by Context::synchronize. Defined only when built with CUDA (MOE_HAVE_CUDA).
#pragma once

#include <cstddef>

#include "moe/kernels/ops.h"

namespace moe::kernels::cuda {

// Number of CUDA devices; 0 (not an error) when there is no GPU or no driver.
int device_count();

// Small device-memory helpers for tests and tools (synchronous).
void* device_alloc(size_t bytes);
void device_free(void* p);
void copy_to_device(void* dst, const void* src, size_t bytes);
void copy_to_host(void* dst, const void* src, size_t bytes);
void synchronize();
void stream_synchronize(void* stream);  // a cudaStream_t (null: the default stream)

// Throws moe::Error naming `what` when `status` (a cudaError_t) is not cudaSuccess.
void check_status(int status, const char* what);

void gemm(const GemmArgs<float>& args, Context& ctx);
void permute(const PermuteArgs& args, Context& ctx);
void grouped_gemm(const GroupedGemmArgs<float>& args, Context& ctx);
void grouped_gemm_wgrad(const GroupedWgradArgs<float>& args, Context& ctx);
void activation(const ActivationArgs<float>& args, Context& ctx);
void activation_backward(const ActivationBackwardArgs<float>& args, Context& ctx);
void combine(const CombineArgs<float>& args, Context& ctx);
void combine_backward(const CombineBackwardArgs<float>& args, Context& ctx);

}  // namespace moe::kernels::cuda
