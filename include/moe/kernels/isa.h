// The CPU instruction sets of the kernels: one registry for every kernel family, chosen at run time
// from CPUID (src/kernels/cpu/isa.h). Names: "generic", "avx2", "avx512", "avx512bf16", "amx".
//
//   cpu_isa_summary()        "f32 avx512, bf16 avx512bf16, int8/int4 avx512" (what runs now)
//   set_cpu_isa("avx2")      caps every family at avx2 (each takes the cap when it has it, else its
//                            best set below)
//   set_gemm_bf16_isa(...)   one family exactly (tests and benchmarks of that family)
#pragma once

#include <string>
#include <vector>

namespace moe::kernels {

std::vector<std::string> cpu_isa_names();         // every known name, lowest first
bool cpu_isa_supported(const std::string& name);  // a known name that this CPU runs
void set_cpu_isa(const std::string& cap);         // throws moe::Error on unknown or unsupported
void reset_cpu_isa();                             // every family back to its start-up choice
std::string cpu_isa_summary();

// The AMX tile code on a portable emulation of the tile instructions (scalar, the order of Intel's
// pseudo-code): with it on, "amx" is supported on every CPU with avx512, so that tests and benchmarks
// run the tile kernels' packing, blocking and edges anywhere. Never chosen by default; off again,
// a bf16 family left on an emulated amx goes back to its best instruction set.
void set_amx_emulation(bool on);
bool amx_emulation();

// Per family: the f32 GEMM engine (gemm, grouped_gemm and the fused FFN ops: generic, avx2, avx512).
const char* gemm_isa();
void set_gemm_isa(const std::string& name);
bool gemm_isa_supported(const std::string& name);

}  // namespace moe::kernels
