// The one registry of CPU instruction sets (public side: moe/kernels/isa.h). Every kernel family
// (the f32 GEMM engine, the bf16-weight GEMM, the int8/int4-weight GEMM; later AMX tiles) has a slot
// holding the instruction set its micro-kernels use, picked at start-up as the best one the family
// has and the CPU runs; tests and benchmarks change it by name. One CPUID probe serves all.
#pragma once

#include <atomic>

namespace moe::kernels::cpu {

// Ordered: each level implies the ones below it on the CPUs we run on.
enum Isa : int { kGeneric = 0, kAvx2 = 1, kAvx512 = 2, kAvx512Bf16 = 3, kIsaCount = 4 };

enum class Family : int { F32 = 0, Bf16 = 1, Quant = 2, Count = 3 };

// The slot a family's micro-kernel dispatch reads (relaxed: a plain choice of code path).
std::atomic<int>& isa_slot(Family f);
inline int isa(Family f) { return isa_slot(f).load(std::memory_order_relaxed); }

// Whether this CPU runs an instruction set (avx2 includes FMA and F16C; avx512 is avx512f with avx2).
bool cpu_runs(int isa);

}  // namespace moe::kernels::cpu
