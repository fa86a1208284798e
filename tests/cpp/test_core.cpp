// Core: dtypes, tensors, allocation, threads, RNG.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include <cmath>
#include <cstring>

#include "moe/core/error.h"
#include "moe/core/membw.h"
#include "moe/core/parallel.h"
#include "moe/core/rng.h"
#include "moe/core/tensor.h"

namespace moe {
namespace {

TEST(DType, Bf16RoundsToNearestEven) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3F80);
  EXPECT_EQ(bf16_to_f32(0x3F80), 1.0f);
  // 1 + 2^-8 is exactly halfway between bf16 1.0 and 1 + 2^-7: ties go to even (1.0).
  EXPECT_EQ(f32_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3F80);
  EXPECT_EQ(f32_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3F82);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(NAN))));
  EXPECT_TRUE(std::isinf(bf16_to_f32(f32_to_bf16(INFINITY))));
}

TEST(DType, F16RoundTripsEveryHalf) {
  // Every finite half value survives half -> float -> half exactly.
  for (uint32_t h = 0; h < 0x10000; ++h) {
    if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff)) continue;  // NaN payloads
    ASSERT_EQ(f32_to_f16(f16_to_f32(static_cast<uint16_t>(h))), h) << std::hex << h;
  }
  EXPECT_EQ(f16_to_f32(0x3C00), 1.0f);
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));         // smallest subnormal
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7C00);                      // overflow to inf
  EXPECT_EQ(f32_to_f16(1.0f + std::ldexp(1.0f, -11)), 0x3C00);  // tie to even
  EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(NAN))));
}

TEST(DType, NamesRoundTripAndUnknownIsAnError) {
  for (DType t :
       {DType::F32, DType::F64, DType::BF16, DType::F16, DType::I8, DType::I4, DType::I32, DType::I64})
    EXPECT_EQ(dtype_from_name(dtype_name(t)), t);
  EXPECT_THROW(dtype_from_name("f8"), Error);
}

TEST(Tensor, ShapeStridesViewsAndAlignment) {
  Tensor t = Tensor::zeros({3, 4, 5}, DType::F32, "t");
  EXPECT_EQ(t.strides(), (Shape{20, 5, 1}));
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.raw()) % 64, 0u);
  for (int64_t i = 0; i < 60; ++i) t.set(i, static_cast<double>(i));
  Tensor s = t.slice(1, 1, 3);  // (3, 2, 5)
  EXPECT_EQ(s.shape(), (Shape{3, 2, 5}));
  EXPECT_FALSE(s.is_contiguous());
  EXPECT_EQ(s.get(0), 5.0);
  EXPECT_EQ(s.get(10), 25.0);
  Tensor tr = t.reshape({12, 5}).transpose(0, 1);  // (5, 12)
  EXPECT_EQ(tr.get(1), 5.0);
  Tensor c = tr.contiguous();
  EXPECT_TRUE(c.is_contiguous());
  EXPECT_EQ(c.get(13), 6.0);
  // Views share storage.
  s.set(0, -1.0);
  EXPECT_EQ(t.get(5), -1.0);
  EXPECT_THROW(t.reshape({7, 9}), Error);
  EXPECT_THROW(t.slice(0, 2, 5), Error);
  EXPECT_THROW(t.data<double>(), Error);
}

TEST(Tensor, ConversionsAndInt4Packing) {
  Tensor f = Tensor::from({1.5, -2.25, 3.0}, {3}, DType::F32, "f");
  EXPECT_EQ(f.to(DType::BF16).to(DType::F32).to_vector(), (std::vector<double>{1.5, -2.25, 3.0}));
  EXPECT_EQ(f.to(DType::F16).to_vector(), (std::vector<double>{1.5, -2.25, 3.0}));
  Tensor q = Tensor::zeros({5}, DType::I4, "q");
  EXPECT_EQ(q.nbytes(), 3u);
  const std::vector<double> v = {-8, 7, 0, -1, 3};
  for (int i = 0; i < 5; ++i) q.set(i, v[i]);
  EXPECT_EQ(q.to_vector(), v);
  EXPECT_EQ(static_cast<uint8_t*>(q.raw())[0], 0x78);  // low nibble first: -8 -> 0x8, 7 -> 0x7
  EXPECT_THROW(q.set(0, 8), Error);
}

TEST(Tensor, ShapeChecksNameTheTensor) {
  Tensor t = Tensor::zeros({2, 3}, DType::F32, "w");
  try {
    check_shape(t, {2, 4}, "w_up");
    FAIL();
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "tensor 'w_up': expected shape (2, 4), got (2, 3)");
  }
  EXPECT_NO_THROW(check_shape(t, {-1, 3}, "w_up"));
  t.set(4, NAN);
  EXPECT_THROW(check_finite(t, "w"), Error);
  EXPECT_THROW(Tensor::empty({2, -1}), Error);
}

// Sizes from hostile files or flags: an element count that overflows int64, or that exceeds what a
// tensor may hold, is a moe::Error naming the shape before anything is allocated.
TEST(Tensor, HugeShapesAreErrorsNotOverflows) {
  const int64_t big = int64_t{1} << 62;
  auto expect_msg = [](const std::function<void()>& f, const std::string& part) {
    try {
      f();
      ADD_FAILURE() << "no error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    }
  };
  expect_msg([&] { Tensor::empty({big, 8}); }, "overflows int64");
  expect_msg([&] { Tensor::zeros({int64_t{1} << 21, int64_t{1} << 20}); }, "more than a tensor may hold");
  expect_msg([&] { shape_numel({big, big}); }, "overflows int64");
  EXPECT_EQ(shape_numel({big, big, 0}), 0);
  EXPECT_EQ(shape_numel({int64_t{1} << 20, int64_t{1} << 20}), int64_t{1} << 40);
}

// The tensor buffer cache: freed buffers of >= 1 MiB come back to the next tensor of their size
// class, zeros() still zeroes them, the limit evicts the oldest, and release empties it.
TEST(TensorCache, ReusesFreedBuffersWithinItsLimit) {
  const TensorCacheStats before = tensor_cache_stats();
  set_tensor_cache_limit(size_t{64} << 20);
  void* first = nullptr;
  {
    Tensor a = Tensor::full({1 << 18}, 3.0, DType::F32, "a");  // 1 MiB
    first = a.data<float>();
    EXPECT_EQ(reinterpret_cast<uintptr_t>(first) % 64, 0u);
  }
  TensorCacheStats s = tensor_cache_stats();
  EXPECT_EQ(s.held_blocks, 1u);
  EXPECT_EQ(s.held_bytes, size_t{1} << 20);
  {
    // Same size class (1 MiB + 4 KiB rounds to 1 MiB + 64 KiB: another class, so not this block).
    Tensor other = Tensor::empty({(1 << 18) + 1024}, DType::F32, "other");
    EXPECT_NE(other.data<float>(), first);
    const TensorCacheStats before_b = tensor_cache_stats();
    Tensor b = Tensor::zeros({1 << 18}, DType::F32, "b");
    EXPECT_EQ(tensor_cache_stats().reused, before_b.reused + 1);
    EXPECT_EQ(tensor_cache_stats().fresh, before_b.fresh);
    EXPECT_EQ(b.data<float>(), first);  // the kept block, zeroed again
    for (int64_t i = 0; i < b.numel(); ++i) ASSERT_EQ(b.data<float>()[i], 0.0f) << i;
    EXPECT_EQ(tensor_cache_stats().held_blocks, 0u);
  }
  EXPECT_EQ(tensor_cache_stats().held_blocks, 2u);
  // Huge-page classes (>= 8 MiB) are 2 MiB aligned, cached the same way.
  {
    Tensor big = Tensor::empty({(size_t{9} << 20) / 4}, DType::F32, "big");
    EXPECT_EQ(reinterpret_cast<uintptr_t>(big.data<float>()) % (size_t{2} << 20), 0u);
  }
  s = tensor_cache_stats();
  EXPECT_EQ(s.held_blocks, 3u);
  EXPECT_EQ(s.held_bytes, (size_t{1} << 20) + (size_t{1088} << 10) + (size_t{10} << 20));
  // Over the limit the blocks freed longest ago go first.
  set_tensor_cache_limit(size_t{12} << 20);
  EXPECT_EQ(tensor_cache_stats().held_blocks, 0u);  // a new limit releases what is held
  { Tensor a = Tensor::empty({1 << 18}, DType::F32, "a"); }
  { Tensor big = Tensor::empty({(size_t{10} << 20) / 4}, DType::F32, "big"); }
  { Tensor c = Tensor::empty({(size_t{2} << 20) / 4}, DType::F32, "c"); }  // 1 + 10 + 2 > 12: the 1 MiB goes
  s = tensor_cache_stats();
  EXPECT_EQ(s.held_blocks, 2u);
  EXPECT_EQ(s.held_bytes, size_t{12} << 20);
  // Below 1 MiB nothing is kept; a block over the whole limit is not kept either.
  { Tensor small = Tensor::empty({1000}, DType::F32, "small"); }
  { Tensor huge = Tensor::empty({(size_t{14} << 20) / 4}, DType::F32, "huge"); }
  EXPECT_EQ(tensor_cache_stats().held_bytes, size_t{12} << 20);
  tensor_cache_release();
  EXPECT_EQ(tensor_cache_stats().held_bytes, 0u);
  // Off: nothing kept.
  set_tensor_cache_limit(0);
  { Tensor a = Tensor::empty({1 << 18}, DType::F32, "a"); }
  EXPECT_EQ(tensor_cache_stats().held_blocks, 0u);
  set_tensor_cache_limit(before.limit_bytes);
}

// The read-bandwidth probe: a positive rate for what it read, the threads it used, and clear errors.
TEST(ReadBandwidth, MeasuresAndRefusesBadSizes) {
  const ReadBandwidth r = measure_read_bandwidth((size_t{4} << 20) + 40, 2);
  EXPECT_GT(r.gb_per_s, 0.0);
  EXPECT_EQ(r.bytes, size_t{4} << 20);  // whole cache lines
  EXPECT_EQ(r.threads, num_threads());
  EXPECT_EQ(r.repeats, 2);
  EXPECT_THROW(measure_read_bandwidth(1000), Error);
  EXPECT_THROW(measure_read_bandwidth(size_t{1} << 20, 0), Error);
}

TEST(Threads, SettableAndValidated) {
  const int saved = num_threads();
  set_num_threads(3);
  EXPECT_EQ(num_threads(), 3);
  EXPECT_THROW(set_num_threads(0), Error);
  std::vector<int> hit(1000, 0);
  parallel_for(1000, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) hit[i]++;
  });
  for (int h : hit) ASSERT_EQ(h, 1);
  set_num_threads(saved);
}

// The worker pool (moe/core/parallel.h): every chunk and item exactly once with the documented bounds,
// nested calls inline, exceptions rethrown in the caller after the rest ran, several calling threads
// at once (a pool each), thread-count changes, and more items than one job's word counts.
TEST(Threads, PoolRunsEveryChunkOnceAndRethrows) {
  const int saved = num_threads();
  for (int t : {2, 3, 7}) {
    set_num_threads(t);
    for (int rep = 0; rep < 200; ++rep) {
      const int64_t n = 1 + rep * 13 % 97;
      std::vector<std::atomic<int>> hit(static_cast<size_t>(n));
      std::atomic<int> calls{0};
      parallel_for(n, 1, [&](int64_t b, int64_t e) {
        const int64_t chunks = std::min<int64_t>(n, t);
        int64_t c = 0;  // the chunk whose first item is b
        while (c < chunks && n * c / chunks != b) ++c;
        ASSERT_LT(c, chunks) << "b " << b;
        EXPECT_EQ(e, n * (c + 1) / chunks);
        EXPECT_EQ(in_parallel(), chunks > 1);
        parallel_for(4, 1, [&](int64_t, int64_t) { ++calls; });  // nested: inline, one call
        for (int64_t i = b; i < e; ++i) hit[static_cast<size_t>(i)]++;
      });
      for (auto& h : hit) ASSERT_EQ(h.load(), 1) << "n " << n << " threads " << t;
      // (one outer chunk runs inline without the pool: its nested call then uses the pool)
      EXPECT_EQ(calls.load(), n == 1 ? std::min(4, t) : static_cast<int>(std::min<int64_t>(n, t)));
      std::vector<std::atomic<int>> items(static_cast<size_t>(n));
      parallel_items(n, [&](int64_t i) { items[static_cast<size_t>(i)]++; });
      for (auto& h : items) ASSERT_EQ(h.load(), 1);
    }
    EXPECT_FALSE(in_parallel());
    std::atomic<int> ran{0};
    try {
      parallel_items(50, [&](int64_t i) {
        ++ran;
        if (i == 7) throw Error("item 7");
      });
      ADD_FAILURE() << "no exception";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("item 7"), std::string::npos);
    }
    EXPECT_EQ(ran.load(), 50);  // the other items still ran
    EXPECT_FALSE(in_parallel());
  }
  set_num_threads(2);
  std::vector<std::thread> callers;
  std::atomic<int64_t> total{0};
  for (int c = 0; c < 3; ++c)
    callers.emplace_back([&] {
      for (int rep = 0; rep < 300; ++rep) parallel_for(64, 1, [&](int64_t b, int64_t e) { total += e - b; });
    });
  for (std::thread& th : callers) th.join();
  EXPECT_EQ(total.load(), 3 * 300 * 64);
  const int64_t many = (int64_t{1} << 20) + 5;  // more items than one job counts
  std::vector<uint8_t> seen(static_cast<size_t>(many), 0);
  parallel_items(many, [&](int64_t i) { seen[static_cast<size_t>(i)]++; });
  EXPECT_EQ(std::count(seen.begin(), seen.end(), uint8_t{1}), many);
  set_num_threads(saved);
}

TEST(Rng, PhiloxKnownAnswer) {
  // Known-answer vectors of Philox-4x32-10 (Random123 kat_vectors).
  auto r = philox4x32({0, 0, 0, 0}, 0);
  EXPECT_EQ(r[0], 0x6627e8d5u);
  EXPECT_EQ(r[1], 0xe169c58du);
  EXPECT_EQ(r[2], 0xbc57ac4cu);
  EXPECT_EQ(r[3], 0x9b00dbd8u);
  r = philox4x32({0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}, 0xffffffffffffffffull);
  EXPECT_EQ(r[0], 0x408f276du);
  EXPECT_EQ(r[1], 0x41c83b0eu);
  EXPECT_EQ(r[2], 0xa20bc7c6u);
  EXPECT_EQ(r[3], 0x6d5451fdu);
}

TEST(Rng, IndependentOfThreadCount) {
  const int saved = num_threads();
  Tensor a = Tensor::empty({10001}), b = Tensor::empty({10001});
  set_num_threads(1);
  Rng(42).fill_normal(a, 0, 1);
  set_num_threads(4);
  Rng(42).fill_normal(b, 0, 1);
  set_num_threads(saved);
  EXPECT_EQ(std::memcmp(a.raw(), b.raw(), a.nbytes()), 0);
  // Moments of the normal draws.
  double m = 0, v = 0;
  for (int64_t i = 0; i < a.numel(); ++i) m += a.get(i);
  m /= static_cast<double>(a.numel());
  for (int64_t i = 0; i < a.numel(); ++i) v += (a.get(i) - m) * (a.get(i) - m);
  v /= static_cast<double>(a.numel());
  EXPECT_NEAR(m, 0.0, 0.05);
  EXPECT_NEAR(v, 1.0, 0.05);
  EXPECT_NE(Rng(42).uniform(0), Rng(43).uniform(0));
  EXPECT_NE(Rng(42).fork(1).uniform(0), Rng(42).fork(2).uniform(0));
}

}  // namespace
}  // namespace moe
