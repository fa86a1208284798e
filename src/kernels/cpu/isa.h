// The one registry of CPU instruction sets (public side: moe/kernels/isa.h). Every kernel family
// (the f32 GEMM engine, the bf16-weight GEMM, the int8/int4-weight GEMM; later AMX tiles) has a slot
// holding the instruction set its micro-kernels use, picked at start-up as the best one the family
// has and the CPU runs; tests and benchmarks change it by name. One CPUID probe serves all.
#pragma once

#include <atomic>

namespace moe::kernels::cpu {

// Ordered: each level implies the ones below it on the CPUs we run on.
// amx: AMX-TILE and AMX-BF16 with the Linux permission for tile data granted (or the portable
// emulation of the tile instructions, set_amx_emulation: tests run the AMX code on any machine with AVX-512).
enum Isa : int { kGeneric = 0, kAvx2 = 1, kAvx512 = 2, kAvx512Bf16 = 3, kAmx = 4, kIsaCount = 5 };

enum class Family : int { F32 = 0, Bf16 = 1, Quant = 2, Count = 3 };

// The slot a family's micro-kernel dispatch reads (relaxed: a plain choice of code path).
std::atomic<int>& isa_slot(Family f);
inline int isa(Family f) { return isa_slot(f).load(std::memory_order_relaxed); }

// Whether this CPU runs an instruction set (avx2 includes FMA and F16C; avx512 is avx512f with avx2).
bool cpu_runs(int isa);

// Whether the tile code runs on the emulation (moe/kernels/isa.h set_amx_emulation) rather than the
// hardware's tiles.
bool amx_emulated();

// Whether vdpbf16ps runs at the rate of fp32 FMA or better (AMD Zen 4 and 5: one 512-bit
// instruction per cycle, twice the products of an FMA). Intel cores issue it on one port, at half the
// fp32 FMA rate (measured 85 vs 175 GFLOP/s per core on a Xeon with AVX512-BF16): there the bf16
// family's best choice below amx is avx512, which widens bf16 to fp32 and uses FMA.
bool fast_dpbf16();

}  // namespace moe::kernels::cpu
