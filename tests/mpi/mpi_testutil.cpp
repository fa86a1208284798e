#include <cmath>
#include <cstring>

#include "mpi_testutil.h"

namespace moe::test {

std::vector<int64_t> CountMatrix::row(int s) const {
  std::vector<int64_t> r(static_cast<size_t>(size));
  for (int d = 0; d < size; ++d) r[d] = at(s, d);
  return r;
}

std::vector<int64_t> CountMatrix::column(int d) const {
  std::vector<int64_t> c(static_cast<size_t>(size));
  for (int s = 0; s < size; ++s) c[s] = at(s, d);
  return c;
}

CountMatrix random_counts(int size, uint64_t seed, int64_t max_count) {
  std::mt19937_64 rng(seed);
  CountMatrix m;
  m.size = size;
  m.counts.resize(static_cast<size_t>(size) * size);
  for (int s = 0; s < size; ++s) {
    for (int d = 0; d < size; ++d) {
      const bool empty = rng() % 3 == 0 || (size > 1 && s == 1) || (size > 2 && d == size - 1);
      m.counts[static_cast<size_t>(s) * size + d] = empty ? 0 : 1 + static_cast<int64_t>(rng() % max_count);
    }
  }
  return m;
}

namespace {

void store(DType t, unsigned char* p, double v) {
  switch (t) {
    case DType::F32: {
      const float x = static_cast<float>(v);
      std::memcpy(p, &x, 4);
      break;
    }
    case DType::F64:
      std::memcpy(p, &v, 8);
      break;
    case DType::I64: {
      const int64_t x = static_cast<int64_t>(v);
      std::memcpy(p, &x, 8);
      break;
    }
    case DType::I32: {
      const int32_t x = static_cast<int32_t>(v);
      std::memcpy(p, &x, 4);
      break;
    }
    case DType::U8:
      *p = static_cast<unsigned char>(static_cast<int64_t>(v) % 251);
      break;  // never the poison 255
    case DType::BF16: {
      const uint16_t x = f32_to_bf16(static_cast<float>(v));
      std::memcpy(p, &x, 2);
      break;
    }
    default:
      FAIL() << "run_alltoallv: dtype " << dtype_name(t) << " not covered";
  }
}

}  // namespace

std::vector<unsigned char> send_bytes(int me, const std::vector<int64_t>& counts, DType dtype) {
  const size_t elem = static_cast<size_t>(dtype_bits(dtype) / 8);
  int64_t n = 0;
  for (int64_t c : counts) n += c;
  std::vector<unsigned char> send(static_cast<size_t>(n) * elem);
  int64_t pos = 0;
  for (size_t d = 0; d < counts.size(); ++d) {
    for (int64_t i = 0; i < counts[d]; ++i, ++pos)
      store(dtype, send.data() + pos * elem, block_value(me, static_cast<int>(d), i));
  }
  return send;
}

std::vector<unsigned char> run_alltoallv(dist::Communicator& comm, const CountMatrix& m, DType dtype) {
  const int me = comm.rank(), p = comm.size();
  const size_t elem = static_cast<size_t>(dtype_bits(dtype) / 8);
  const std::vector<int64_t> sc = m.row(me), rc = m.column(me);
  EXPECT_EQ(comm.exchange_counts(sc), rc) << "exchange_counts on rank " << me;
  int64_t ns = 0, nr = 0;
  for (int j = 0; j < p; ++j) ns += sc[j], nr += rc[j];
  const std::vector<unsigned char> send = send_bytes(me, sc, dtype);
  // Poison: all-ones bytes are NaN in f32/f64/bf16 and -1 / 255 in the integers (never a block value);
  // one byte more to catch writes past the end.
  std::vector<unsigned char> recv(static_cast<size_t>(nr) * elem + 1, 0xff);
  comm.alltoallv(ns ? send.data() : nullptr, sc, nr ? recv.data() : nullptr, rc, dtype);
  std::vector<unsigned char> want(elem);
  int64_t pos = 0;
  int64_t bad = 0;
  for (int s = 0; s < p; ++s) {
    for (int64_t i = 0; i < rc[s]; ++i, ++pos) {
      store(dtype, want.data(), block_value(s, me, i));
      if (std::memcmp(want.data(), recv.data() + pos * elem, elem) != 0 && bad++ < 5) {
        ADD_FAILURE() << "rank " << me << " of " << p << " (" << comm.backend() << ", " << dtype_name(dtype)
                      << "): element " << i << " of the block from rank " << s << " is wrong";
      }
    }
  }
  EXPECT_EQ(bad, 0) << "wrong elements on rank " << me;
  EXPECT_EQ(recv.back(), 0xff) << "alltoallv wrote past the end of recv on rank " << me;
  recv.pop_back();
  return recv;
}

}  // namespace moe::test
