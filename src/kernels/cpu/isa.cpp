// The instruction-set registry (src/kernels/cpu/isa.h, moe/kernels/isa.h).
#include "kernels/cpu/isa.h"

#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "moe/core/error.h"
#include "moe/kernels/isa.h"
#include "moe/kernels/ops_bf16.h"
#include "moe/kernels/ops_quant.h"

namespace moe::kernels {

namespace cpu {

namespace {

const char* const kNames[kIsaCount] = {"generic", "avx2", "avx512", "avx512bf16", "amx"};

std::atomic<bool>& emulation_flag() {
  static std::atomic<bool> on{false};
  return on;
}

struct FamilyInfo {
  const char* op;     // the op named in errors
  const char* label;  // in the summary
  unsigned sets;      // the instruction sets the family has kernels for (bit i: Isa i)
  bool has(int i) const { return i >= 0 && i < kIsaCount && ((sets >> i) & 1u) != 0; }
};
constexpr unsigned bit(int i) { return 1u << i; }
constexpr unsigned kUpToAvx512 = bit(kGeneric) | bit(kAvx2) | bit(kAvx512);
const FamilyInfo kFamilies[static_cast<int>(Family::Count)] = {
    {"gemm", "f32", kUpToAvx512},
    {"gemm_bf16w", "bf16", kUpToAvx512 | bit(kAvx512Bf16) | bit(kAmx)},
    {"gemm_qw", "int8/int4",
     kUpToAvx512 | bit(kAmx)}};  // amx: the int8-packed format's tiles (int4-packed: vpdpbusd)

// The best instruction set at or below cap that the family has and the CPU runs; the bf16 family passes
// over avx512bf16 where vdpbf16ps is slower than widening to fp32 (fast_dpbf16), and over an emulated
// amx (a test tool, never a default).
int best_below(Family f, int cap) {
  for (int i = cap; i > kGeneric; --i) {
    if (!kFamilies[static_cast<int>(f)].has(i) || !cpu_runs(i)) continue;
    if (f == Family::Bf16 && i == kAvx512Bf16 && !fast_dpbf16()) continue;
    if (i == kAmx && amx_emulated()) continue;
    return i;
  }
  return kGeneric;
}

int index_of(const std::string& name) {
  for (int i = 0; i < kIsaCount; ++i) {
    if (name == kNames[i]) return i;
  }
  return -1;
}

const FamilyInfo& info(Family f) { return kFamilies[static_cast<int>(f)]; }

const char* name_of(Family f) { return kNames[isa(f)]; }

// Names the family accepts, for error messages: "generic, avx2 or avx512".
std::string expected(Family f) {
  std::vector<std::string> names;
  for (int i = 0; i < kIsaCount; ++i)
    if (info(f).has(i)) names.push_back(kNames[i]);
  std::string s;
  for (size_t i = 0; i < names.size(); ++i)
    s += (i == 0 ? "" : i + 1 == names.size() ? " or " : ", ") + names[i];
  return s;
}

bool family_supports(Family f, const std::string& name) {
  const int i = index_of(name);
  return info(f).has(i) && cpu_runs(i);
}

void set_family(Family f, const std::string& name) {
  const int i = index_of(name);
  MOE_CHECK(info(f).has(i), info(f).op, ": unknown instruction set '", name, "' (expected ", expected(f),
            ")");
  MOE_CHECK(cpu_runs(i), info(f).op, ": instruction set '", name, "' is not supported by this CPU");
  isa_slot(f).store(i);
}

// F16C (CPUID leaf 1, ECX bit 29). clang before 16 does not know "f16c" in __builtin_cpu_supports
// (the fuzz build, -DMOE_FUZZ=ON, uses Debian's clang 14): it reads the CPUID bit itself.
bool cpu_has_f16c() {
#if defined(__clang__)
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  return __get_cpuid(1, &eax, &ebx, &ecx, &edx) != 0 && (ecx & bit_F16C) != 0;
#else
  return __builtin_cpu_supports("f16c");
#endif
}

}  // namespace

// AMX-TILE and AMX-BF16 (CPUID leaf 7, EDX bits 24 and 22), and Linux's permission to use tile data
// (arch_prctl ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA, asked once per process).
bool hardware_amx() {
  static const bool ok = [] {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) == 0) return false;
    if ((edx & (1u << 24)) == 0 || (edx & (1u << 22)) == 0) return false;
#if defined(__linux__) && defined(SYS_arch_prctl)
    constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
#else
    return false;
#endif
  }();
  return ok;
}

bool amx_emulated() { return emulation_flag().load(std::memory_order_relaxed); }

bool fast_dpbf16() {
  __builtin_cpu_init();
  return __builtin_cpu_is("amd");
}

bool cpu_runs(int isa) {
  __builtin_cpu_init();
  switch (isa) {
    case kGeneric:
      return true;
    case kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu_has_f16c();
    case kAvx512:
      return __builtin_cpu_supports("avx512f") && cpu_runs(kAvx2);
    case kAvx512Bf16:
      return __builtin_cpu_supports("avx512bf16") && cpu_runs(kAvx512);
    case kAmx:  // the emulation runs wherever AVX-512 does: the tile paths' edges and fallbacks use it,
                // as every CPU with AMX has it
      return (amx_emulated() || hardware_amx()) && cpu_runs(kAvx512);
  }
  return false;
}

std::atomic<int>& isa_slot(Family f) {
  // Function-local statics: initialised on first use, whatever the order of static initialisation.
  static std::atomic<int> slots[static_cast<int>(Family::Count)] = {best_below(Family::F32, kIsaCount - 1),
                                                                    best_below(Family::Bf16, kIsaCount - 1),
                                                                    best_below(Family::Quant, kIsaCount - 1)};
  return slots[static_cast<int>(f)];
}

}  // namespace cpu

using cpu::Family;

std::vector<std::string> cpu_isa_names() { return {cpu::kNames, cpu::kNames + cpu::kIsaCount}; }

bool cpu_isa_supported(const std::string& name) {
  const int i = cpu::index_of(name);
  return i >= 0 && cpu::cpu_runs(i);
}

void set_cpu_isa(const std::string& cap) {
  const int c = cpu::index_of(cap);
  MOE_CHECK(c >= 0, "unknown instruction set '", cap,
            "' (expected generic, avx2, avx512, avx512bf16 or amx)");
  MOE_CHECK(cpu::cpu_runs(c), "instruction set '", cap, "' is not supported by this CPU");
  for (int f = 0; f < static_cast<int>(Family::Count); ++f) {
    // A cap the family has is taken as named (also avx512bf16 on Intel, or an emulated amx); otherwise
    // the family's best choice below it.
    const auto fam = static_cast<Family>(f);
    cpu::isa_slot(fam).store(cpu::kFamilies[f].has(c) ? c : cpu::best_below(fam, c));
  }
}

void reset_cpu_isa() {
  for (int f = 0; f < static_cast<int>(Family::Count); ++f)
    cpu::isa_slot(static_cast<Family>(f)).store(cpu::best_below(static_cast<Family>(f), cpu::kIsaCount - 1));
}

std::string cpu_isa_summary() {
  std::string s;
  for (int f = 0; f < static_cast<int>(Family::Count); ++f) {
    s += std::string(f ? ", " : "") + cpu::kFamilies[f].label + " " + cpu::name_of(static_cast<Family>(f));
  }
  return s;
}

void set_amx_emulation(bool on) {
  cpu::emulation_flag().store(on);
  for (Family f : {Family::Bf16, Family::Quant})
    if (!on && cpu::isa(f) == cpu::kAmx && !cpu::hardware_amx())
      cpu::isa_slot(f).store(cpu::best_below(f, cpu::kAmx));
}
bool amx_emulation() { return cpu::amx_emulated(); }

const char* gemm_isa() { return cpu::name_of(Family::F32); }
void set_gemm_isa(const std::string& name) { cpu::set_family(Family::F32, name); }
bool gemm_isa_supported(const std::string& name) { return cpu::family_supports(Family::F32, name); }

const char* gemm_bf16_isa() { return cpu::name_of(Family::Bf16); }
void set_gemm_bf16_isa(const std::string& name) { cpu::set_family(Family::Bf16, name); }
bool gemm_bf16_isa_supported(const std::string& name) { return cpu::family_supports(Family::Bf16, name); }

const char* gemm_quant_isa() { return cpu::name_of(Family::Quant); }
void set_gemm_quant_isa(const std::string& name) { cpu::set_family(Family::Quant, name); }
bool gemm_quant_isa_supported(const std::string& name) { return cpu::family_supports(Family::Quant, name); }

}  // namespace moe::kernels
