// Counter-based random numbers (Philox-4x32-10, Salmon et al., SC'11). The value for element i of
// a stream depends only on (seed, stream, i), so results never depend on the thread count or on
// the order in which elements are drawn.
#pragma once

#include <array>
#include <cstdint>

namespace moe {

class Tensor;

// One Philox-4x32-10 block: four 32-bit outputs for a 128-bit counter and a 64-bit key.
std::array<uint32_t, 4> philox4x32(std::array<uint32_t, 4> counter, uint64_t key);

class Rng {
 public:
  explicit Rng(uint64_t seed, uint64_t stream = 0) : seed_(seed), stream_(stream) {}
  uint64_t seed() const { return seed_; }
  uint64_t stream() const { return stream_; }
  // A different, independent stream of the same seed (e.g. per step or per tensor).
  Rng fork(uint64_t stream) const { return Rng(seed_, stream_ * 0x9E3779B97F4A7C15ull + stream + 1); }

  uint32_t bits(uint64_t i) const;               // 32 random bits for index i
  double uniform(uint64_t i) const;              // in [0, 1), 53-bit resolution
  double normal(uint64_t i) const;               // standard normal (Box-Muller on one Philox block)
  uint64_t below(uint64_t i, uint64_t n) const;  // integer in [0, n), n >= 1

  // Fill any float tensor (contiguous or not) in logical element order, in parallel.
  void fill_uniform(Tensor& t, double lo, double hi) const;
  // Element i takes index offset + i, so a slice of a larger tensor (one rank's experts) can be
  // filled with exactly the values the whole tensor would hold there.
  void fill_normal(Tensor& t, double mean, double stddev, uint64_t offset = 0) const;

 private:
  uint64_t seed_;
  uint64_t stream_;
};

}  // namespace moe
