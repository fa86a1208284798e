// The instruction-set registry (src/kernels/cpu/isa.h, moe/kernels/isa.h).
#include "kernels/cpu/isa.h"

#include <cpuid.h>
#include <string>
#include <vector>

#include "moe/core/error.h"
#include "moe/kernels/isa.h"
#include "moe/kernels/ops_bf16.h"
#include "moe/kernels/ops_quant.h"

namespace moe::kernels {

namespace cpu {

namespace {

const char* const kNames[kIsaCount] = {"generic", "avx2", "avx512", "avx512bf16"};

struct FamilyInfo {
  const char* op;     // the op named in errors
  const char* label;  // in the summary
  int top;            // the highest instruction set the family has kernels for
};
const FamilyInfo kFamilies[static_cast<int>(Family::Count)] = {
    {"gemm", "f32", kAvx512}, {"gemm_bf16w", "bf16", kAvx512Bf16}, {"gemm_qw", "int8/int4", kAvx512}};

int best_below(int cap) {
  for (int i = cap; i > kGeneric; --i) {
    if (cpu_runs(i)) return i;
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
  std::string s;
  for (int i = 0; i <= info(f).top; ++i)
    s += std::string(i == 0 ? "" : i == info(f).top ? " or " : ", ") + kNames[i];
  return s;
}

bool family_supports(Family f, const std::string& name) {
  const int i = index_of(name);
  return i >= 0 && i <= info(f).top && cpu_runs(i);
}

void set_family(Family f, const std::string& name) {
  const int i = index_of(name);
  MOE_CHECK(i >= 0 && i <= info(f).top, info(f).op, ": unknown instruction set '", name, "' (expected ",
            expected(f), ")");
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
  }
  return false;
}

std::atomic<int>& isa_slot(Family f) {
  // Function-local statics: initialised on first use, whatever the order of static initialisation.
  static std::atomic<int> slots[static_cast<int>(Family::Count)] = {
      best_below(kFamilies[0].top), best_below(kFamilies[1].top), best_below(kFamilies[2].top)};
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
  MOE_CHECK(c >= 0, "unknown instruction set '", cap, "' (expected generic, avx2, avx512 or avx512bf16)");
  MOE_CHECK(cpu::cpu_runs(c), "instruction set '", cap, "' is not supported by this CPU");
  for (int f = 0; f < static_cast<int>(Family::Count); ++f) {
    const int top = cpu::kFamilies[f].top;
    cpu::isa_slot(static_cast<Family>(f)).store(cpu::best_below(c < top ? c : top));
  }
}

std::string cpu_isa_summary() {
  std::string s;
  for (int f = 0; f < static_cast<int>(Family::Count); ++f) {
    s += std::string(f ? ", " : "") + cpu::kFamilies[f].label + " " + cpu::name_of(static_cast<Family>(f));
  }
  return s;
}

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
