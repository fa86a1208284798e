// CUDA implementations (T = float). All pointers in the op arguments are device pointers. These
// functions are defined only when the library is built with CUDA (MOE_HAVE_CUDA); callers guard
// them with #ifdef MOE_HAVE_CUDA. Errors (CUDA failures, bad expert ids) throw moe::Error.
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

// Throws moe::Error naming `what` when `status` (a cudaError_t) is not cudaSuccess.
void check_status(int status, const char* what);

void gemm(const GemmArgs<float>& args);
void permute(const PermuteArgs& args);
void grouped_gemm(const GroupedGemmArgs<float>& args);
void grouped_gemm_wgrad(const GroupedWgradArgs<float>& args);
void activation(const ActivationArgs<float>& args);
void activation_backward(const ActivationBackwardArgs<float>& args);
void combine(const CombineArgs<float>& args);
void combine_backward(const CombineBackwardArgs<float>& args);

}  // namespace moe::kernels::cuda
