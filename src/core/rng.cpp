#include "moe/core/rng.h"

#include <cmath>

#include "moe/core/error.h"
#include "moe/core/parallel.h"
#include "moe/core/tensor.h"

namespace moe {

std::array<uint32_t, 4> philox4x32(std::array<uint32_t, 4> c, uint64_t key) {
  constexpr uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
  uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(M0) * c[0];
    const uint64_t p1 = static_cast<uint64_t>(M1) * c[2];
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    c = {hi1 ^ c[1] ^ k0, lo1, hi0 ^ c[3] ^ k1, lo0};
    k0 += W0;
    k1 += W1;
  }
  return c;
}

namespace {
std::array<uint32_t, 4> block(uint64_t seed, uint64_t stream, uint64_t i) {
  return philox4x32({static_cast<uint32_t>(i), static_cast<uint32_t>(i >> 32), static_cast<uint32_t>(stream),
                     static_cast<uint32_t>(stream >> 32)},
                    seed);
}
double to_unit(uint32_t a, uint32_t b) {  // [0, 1) from 53 random bits
  const uint64_t x = (static_cast<uint64_t>(a) << 21) ^ (b >> 11);
  return static_cast<double>(x & ((1ull << 53) - 1)) * (1.0 / 9007199254740992.0);
}
}  // namespace

uint32_t Rng::bits(uint64_t i) const { return block(seed_, stream_, i)[0]; }

double Rng::uniform(uint64_t i) const {
  const auto r = block(seed_, stream_, i);
  return to_unit(r[0], r[1]);
}

double Rng::normal(uint64_t i) const {
  const auto r = block(seed_, stream_, i);
  const double u1 = 1.0 - to_unit(r[0], r[1]);  // (0, 1]
  const double u2 = to_unit(r[2], r[3]);
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
}

uint64_t Rng::below(uint64_t i, uint64_t n) const {
  MOE_CHECK(n >= 1, "Rng::below: n must be >= 1");
  const auto r = block(seed_, stream_, i);
  const uint64_t x = (static_cast<uint64_t>(r[0]) << 32) | r[1];
  return x % n;
}

void Rng::fill_uniform(Tensor& t, double lo, double hi) const {
  const int64_t n = t.numel();
  if (t.dtype() == DType::F32 && t.is_contiguous()) {
    float* p = t.data<float>();
    parallel_for(n, 4096, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i)
        p[i] = static_cast<float>(lo + (hi - lo) * uniform(static_cast<uint64_t>(i)));
    });
    return;
  }
  for (int64_t i = 0; i < n; ++i) t.set(i, lo + (hi - lo) * uniform(static_cast<uint64_t>(i)));
}

void Rng::fill_normal(Tensor& t, double mean, double stddev, uint64_t offset) const {
  const int64_t n = t.numel();
  if (t.dtype() == DType::F32 && t.is_contiguous()) {
    float* p = t.data<float>();
    parallel_for(n, 4096, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i)
        p[i] = static_cast<float>(mean + stddev * normal(offset + static_cast<uint64_t>(i)));
    });
    return;
  }
  for (int64_t i = 0; i < n; ++i) t.set(i, mean + stddev * normal(offset + static_cast<uint64_t>(i)));
}

}  // namespace moe
