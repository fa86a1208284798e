// The AMX tile instructions the bf16-packed format uses, behind one interface with two
// implementations: AmxHw (the instructions, as inline assembly, so that no function needs a target
// attribute and both compilers accept it) and AmxEmu (a portable scalar emulation that follows the
// pseudo-code of Intel's manual, so that every machine runs the tile kernel's packing, blocking and
// edges).
//
// Both are configured alike (palette 1, tiles 0..7 each 16 rows of 64 bytes):
//   load<T>(base, stride)   tile T row r = the 64 bytes at base + r * stride (tileloadd)
//   store<T>(base, stride)  the reverse (tilestored)
//   zero<T>()               tile T = 0 (tilezero)
//   dp<C, A, B>()           C (16 x 16 fp32) += A (16 rows x 16 bf16 pairs) · B (16 pair rows x 16
//                           columns), TDPBF16PS: for each (m, n), over k = 0..15 in order,
//                           c += a[m][2k] · b[k][2n], then c += a[m][2k + 1] · b[k][2n + 1]
//   dpbsud<C, A, B>()       C (16 x 16 int32) += A (16 rows x 64 signed bytes) · B (16 quad rows x
//                           16 columns of 4 unsigned bytes), TDPBSUD (integer: exact, any order)
// begin() loads the configuration, end() releases the tiles.
//
// The emulation's products are exact (bf16 · bf16 fits in fp32) and each addition rounds to nearest
// even, in the manual's order. The hardware flushes denormal inputs and outputs to zero and may add
// in another order; a result of the hardware is within K · 2^-24 · sum |a · w| of the emulation's.
#pragma once

#include <cstdint>
#include <cstring>

#define MOE_TILE_INLINE inline __attribute__((always_inline))

namespace moe::kernels::cpu::wgemm {

// The 64-byte tile configuration (LDTILECFG's memory operand), palette 1.
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};
static_assert(sizeof(TileConfig) == 64, "the tile configuration is 64 bytes");

inline TileConfig tile_config_16x64() {
  TileConfig c;
  for (int t = 0; t < 8; ++t) {
    c.colsb[t] = 64;
    c.rows[t] = 16;
  }
  return c;
}

// One tile instruction per tile index (the register is part of the instruction).
#define MOE_TILE_CASES(M) M(0) M(1) M(2) M(3) M(4) M(5) M(6) M(7)

// clang-format off
struct AmxHw {
  static MOE_TILE_INLINE void begin() {
    static const TileConfig cfg = tile_config_16x64();
    asm volatile("ldtilecfg (%0)" ::"r"(&cfg) : "memory");
  }
  static MOE_TILE_INLINE void end() { asm volatile("tilerelease" ::: "memory"); }
  template <int T>
  static MOE_TILE_INLINE void load(const void* base, int64_t stride) {
#define MOE_TILE_LOAD(n) \
  if constexpr (T == n) asm volatile("tileloadd (%0,%1,1), %%tmm" #n ::"r"(base), "r"(stride) : "memory");
    MOE_TILE_CASES(MOE_TILE_LOAD)
#undef MOE_TILE_LOAD
  }
  template <int T>
  static MOE_TILE_INLINE void store(void* base, int64_t stride) {
#define MOE_TILE_STORE(n) \
  if constexpr (T == n) asm volatile("tilestored %%tmm" #n ", (%0,%1,1)" ::"r"(base), "r"(stride) : "memory");
    MOE_TILE_CASES(MOE_TILE_STORE)
#undef MOE_TILE_STORE
  }
  template <int T>
  static MOE_TILE_INLINE void zero() {
#define MOE_TILE_ZERO(n) \
  if constexpr (T == n) asm volatile("tilezero %%tmm" #n ::: "memory");
    MOE_TILE_CASES(MOE_TILE_ZERO)
#undef MOE_TILE_ZERO
  }
  // C in tiles 0..3, A in 4..5, B in 6..7 (the only combinations the kernel uses).
  template <int C, int A, int B>
  static MOE_TILE_INLINE void dp() {
    static_assert(C < 4 && (A == 4 || A == 5) && (B == 6 || B == 7), "C in 0..3, A in 4..5, B in 6..7");
#define MOE_TILE_DP(c, a, b)                                                     \
  if constexpr (C == c && A == a && B == b)                                      \
    asm volatile("tdpbf16ps %%tmm" #b ", %%tmm" #a ", %%tmm" #c ::: "memory");
    MOE_TILE_DP(0, 4, 6) MOE_TILE_DP(1, 4, 7) MOE_TILE_DP(2, 5, 6) MOE_TILE_DP(3, 5, 7)
    MOE_TILE_DP(0, 5, 6) MOE_TILE_DP(1, 5, 7) MOE_TILE_DP(2, 4, 6) MOE_TILE_DP(3, 4, 7)
#undef MOE_TILE_DP
  }
  template <int C, int A, int B>
  static MOE_TILE_INLINE void dpbsud() {
    static_assert(C < 4 && (A == 4 || A == 5) && (B == 6 || B == 7), "C in 0..3, A in 4..5, B in 6..7");
#define MOE_TILE_DPB(c, a, b)                \
  if constexpr (C == c && A == a && B == b) \
    asm volatile("tdpbsud %%tmm" #b ", %%tmm" #a ", %%tmm" #c ::: "memory");
    MOE_TILE_DPB(0, 4, 6) MOE_TILE_DPB(1, 4, 7) MOE_TILE_DPB(2, 5, 6) MOE_TILE_DPB(3, 5, 7)
#undef MOE_TILE_DPB
  }
};
// clang-format on

#undef MOE_TILE_CASES

struct AmxEmu {
  struct Tile {
    alignas(64) uint8_t row[16][64];
  };
  static Tile* tiles() {
    thread_local Tile t[8];
    return t;
  }
  static void begin() {}
  static void end() {}
  template <int T>
  static void load(const void* base, int64_t stride) {
    for (int r = 0; r < 16; ++r)
      std::memcpy(tiles()[T].row[r], static_cast<const char*>(base) + r * stride, 64);
  }
  template <int T>
  static void store(void* base, int64_t stride) {
    for (int r = 0; r < 16; ++r) std::memcpy(static_cast<char*>(base) + r * stride, tiles()[T].row[r], 64);
  }
  template <int T>
  static void zero() {
    std::memset(tiles()[T].row, 0, sizeof(Tile::row));
  }
  static float bf16(const uint8_t* p) {  // the bf16 at p as fp32
    const uint32_t u = (uint32_t{p[0]} | (uint32_t{p[1]} << 8)) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  template <int C, int A, int B>
  static void dp() {
    Tile& c = tiles()[C];
    const Tile& a = tiles()[A];
    const Tile& b = tiles()[B];
    for (int m = 0; m < 16; ++m) {
      float acc[16];
      std::memcpy(acc, c.row[m], 64);
      for (int k = 0; k < 16; ++k) {
        const float a0 = bf16(a.row[m] + 4 * k), a1 = bf16(a.row[m] + 4 * k + 2);
        for (int n = 0; n < 16; ++n) {
          acc[n] += a0 * bf16(b.row[k] + 4 * n);
          acc[n] += a1 * bf16(b.row[k] + 4 * n + 2);
        }
      }
      std::memcpy(c.row[m], acc, 64);
    }
  }
  template <int C, int A, int B>
  static void dpbsud() {
    Tile& c = tiles()[C];
    const Tile& a = tiles()[A];
    const Tile& b = tiles()[B];
    for (int m = 0; m < 16; ++m) {
      int32_t acc[16];
      std::memcpy(acc, c.row[m], 64);
      for (int k = 0; k < 16; ++k)
        for (int n = 0; n < 16; ++n)
          for (int i = 0; i < 4; ++i)
            acc[n] += int32_t{static_cast<int8_t>(a.row[m][4 * k + i])} * int32_t{b.row[k][4 * n + i]};
      std::memcpy(c.row[m], acc, 64);
    }
  }
};

}  // namespace moe::kernels::cpu::wgemm
