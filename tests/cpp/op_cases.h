// The op consistency harness (in the spirit of ggml's test-backend-ops).
//
// An OpCase builds the buffers of one op call from a seed (fresh random inputs per check), runs
// the op on a backend, and states a per-element tolerance derived from an error bound, plus its
// FLOP and byte counts. The harness runs a case on every available backend and compares each
// result with the Ref backend's:
//   - outputs are poisoned (NaN, or 0xAB bytes for integers) before every run; NaN never passes;
//   - Cuda runs on device copies of the buffers (pointers in the op arguments are device pointers).
// Cases live in test_ops_cases.cpp; the modes (test, grad, perf) in test_ops.cpp / test_ops_grad.cpp.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <ostream>
#include <string>
#include <type_traits>
#include <vector>

#include "moe/core/rng.h"
#include "moe/kernels/ops.h"
#include "moe/kernels/ops_bf16.h"
#include "moe/kernels/ops_quant.h"

namespace moe::ops_test {

using kernels::Backend;

// ---- buffers ----

enum class Elem { F32, F64, I32, U8, U16 };  // U16: bf16 / f16 bit patterns
enum class Role { In, Out, InOut };          // Out: poisoned before the run; Out and InOut: compared after

template <typename U>
constexpr Elem elem_of() {
  if constexpr (std::is_same_v<U, float>)
    return Elem::F32;
  else if constexpr (std::is_same_v<U, double>)
    return Elem::F64;
  else if constexpr (std::is_same_v<U, int32_t>)
    return Elem::I32;
  else if constexpr (std::is_same_v<U, uint16_t>)
    return Elem::U16;
  else
    return Elem::U8;
}
inline size_t elem_size(Elem e) { return e == Elem::F64 ? 8 : e == Elem::U8 ? 1 : e == Elem::U16 ? 2 : 4; }

struct Buffer {
  std::string name;
  Elem elem = Elem::F32;
  Role role = Role::In;
  int64_t count = 0;
  std::vector<unsigned char> bytes;  // host contents
  void* device = nullptr;            // device copy while a Cuda run is in progress

  Buffer() = default;
  Buffer(const Buffer& o) : name(o.name), elem(o.elem), role(o.role), count(o.count), bytes(o.bytes) {}
  Buffer& operator=(const Buffer& o) {
    name = o.name;
    elem = o.elem;
    role = o.role;
    count = o.count;
    bytes = o.bytes;
    device = nullptr;
    return *this;
  }
  bool is_float() const { return elem == Elem::F32 || elem == Elem::F64; }
  double get(int64_t i) const;  // any element as double
};

class Buffers {
 public:
  // Adds a zero-filled buffer and returns its id (ids are given in order: 0, 1, ...).
  template <typename U>
  int add(std::string name, int64_t count, Role role = Role::In) {
    Buffer b;
    b.name = std::move(name);
    b.elem = elem_of<U>();
    b.role = role;
    b.count = count;
    b.bytes.assign(static_cast<size_t>(count) * sizeof(U), 0);
    bufs_.push_back(std::move(b));
    return static_cast<int>(bufs_.size()) - 1;
  }
  template <typename U>
  U* host(int id) {
    return reinterpret_cast<U*>(bufs_[static_cast<size_t>(id)].bytes.data());
  }
  template <typename U>
  const U* host(int id) const {
    return reinterpret_cast<const U*>(bufs_[static_cast<size_t>(id)].bytes.data());
  }
  // The pointer an op receives: the device copy during a Cuda run, else the host contents
  // (null for an empty buffer).
  template <typename U>
  U* arg(int id) const {
    const Buffer& b = bufs_[static_cast<size_t>(id)];
    if (b.device) return static_cast<U*>(b.device);
    return b.count == 0 ? nullptr : reinterpret_cast<U*>(const_cast<unsigned char*>(b.bytes.data()));
  }
  Buffer& operator[](int id) { return bufs_[static_cast<size_t>(id)]; }
  const Buffer& operator[](int id) const { return bufs_[static_cast<size_t>(id)]; }
  int size() const { return static_cast<int>(bufs_.size()); }

 private:
  std::vector<Buffer> bufs_;
};

// ---- cases ----

// Unit roundoff u of T: 2^-24 for float, 2^-53 for double.
template <typename T>
constexpr double unit_roundoff() {
  return std::numeric_limits<T>::epsilon() / 2;
}

constexpr double kNotCompared = -1.0;

class OpCase {
 public:
  virtual ~OpCase() = default;
  virtual std::string name() const = 0;  // e.g. "gemm[f32](M=7,N=5,K=3,ta=1,tb=0,beta=0)"
  virtual std::string op() const = 0;    // e.g. "gemm"
  virtual bool is_double() const = 0;
  // The buffers of one check, inputs drawn from `seed`.
  virtual Buffers make(uint64_t seed) const = 0;
  // Runs the op (kernels::run) over `bufs` on a backend (its default context) or a Context.
  virtual void run(kernels::Exec e, Buffers& bufs) const = 0;
  // What the op table says of the op's arguments over `bufs` on backend b (kernels::supports).
  virtual kernels::Support supports(Backend b, Buffers& bufs) const = 0;
  kernels::Support supports(Backend b) const {
    Buffers bufs = make(0);
    return supports(b, bufs);
  }
  // Per-element absolute tolerance of output `id` against the reference, from the inputs `in`;
  // kNotCompared for elements that are not part of the output (row padding). The default is exact
  // equality.
  virtual std::vector<double> tolerance(const Buffers& in, int id) const {
    return std::vector<double>(static_cast<size_t>(in[id].count), 0.0);
  }
  // How many leading elements of output `id` are defined (the reference result `ref` may tell).
  virtual int64_t compare_count(const Buffers& ref, int id) const { return ref[id].count; }
  virtual double flops() const = 0;
  virtual double bytes() const = 0;  // memory traffic of one run, roughly
};

// A case defines `template <class F> decltype(auto) with_args(Buffers& b, F&& f) const`, which builds
// the op's Args over `b` and returns f(args); this macro turns it into run and supports.
#define MOE_OP_CASE_ARGS                                                                    \
  void run(kernels::Exec e, Buffers& bufs) const override {                                 \
    with_args(bufs, [e](const auto& args) { kernels::run(e, args); });                      \
  }                                                                                         \
  kernels::Support supports(Backend be, Buffers& bufs) const override {                     \
    return with_args(bufs, [be](const auto& args) { return kernels::supports(be, args); }); \
  }

using CaseList = std::vector<std::unique_ptr<OpCase>>;

// The consistency cases (small and edge-case shapes, float and double), and larger perf shapes.
CaseList consistency_cases();
CaseList perf_cases();

// ---- harness ----

// Poisons the Out buffers: NaN for floats, 0xAB bytes for integers.
void poison_outputs(Buffers& bufs);

// For a Cuda run, device copies of all buffers while alive (Buffer::device); a no-op otherwise.
class DeviceCopies {
 public:
  DeviceCopies(Buffers& bufs, Backend b);
  ~DeviceCopies();
  DeviceCopies(const DeviceCopies&) = delete;
  DeviceCopies& operator=(const DeviceCopies&) = delete;
  void synchronize();    // waits for the device
  void fetch_outputs();  // synchronizes, then copies the Out and InOut buffers back to the host

 private:
  Buffers& bufs_;
  bool active_;
};

// Runs `c` on backend b with inputs `in` (outputs poisoned first); returns the buffers after the
// run, on the host. Cuda copies everything to the device and the outputs back.
Buffers run_case(const OpCase& c, Backend b, const Buffers& in);

// Compares every Out/InOut buffer of `got` with `ref` within the case's tolerance.
testing::AssertionResult compare_outputs(const OpCase& c, const Buffers& in, const Buffers& ref,
                                         const Buffers& got);

// Whether Cuda is built and a GPU is present.
bool have_gpu();

// ---- MoE routing for the cases ----

enum class Pattern {
  Random,    // each token picks k distinct experts uniformly
  AllToOne,  // every token's first pick is expert 0 (k = 1: expert 0 gets all rows)
  EvenOnly,  // only even experts are picked: odd experts get no rows
};

// Assignment a = t * k + j is token t's j-th pick; drop is the probability that an assignment is
// dropped (kept[a] = 0). offsets, perm and pos come from the Ref permute.
struct Routing {
  int64_t T = 0, E = 0, k = 0;
  std::vector<int32_t> expert;   // (T * k)
  std::vector<uint8_t> kept;     // (T * k)
  std::vector<int32_t> offsets;  // (E + 1)
  std::vector<int32_t> perm;     // (T * k), first rows() entries valid
  std::vector<int32_t> pos;      // (T * k)
  int64_t rows() const { return offsets[static_cast<size_t>(E)]; }
};
Routing make_routing(const Rng& rng, int64_t T, int64_t E, int64_t k, Pattern pattern, double drop);
const char* pattern_name(Pattern p);

// Fills a float buffer with N(0, 1) values, or with integers in [-r, r] when int_range r > 0.
template <typename U>
void fill_values(const Rng& rng, U* x, int64_t n, int int_range = 0) {
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t u = static_cast<uint64_t>(i);
    x[i] = int_range > 0 ? static_cast<U>(static_cast<int64_t>(rng.below(u, 2 * int_range + 1)) - int_range)
                         : static_cast<U>(rng.normal(u));
  }
}

}  // namespace moe::ops_test

namespace moe::kernels {
// Lets GoogleTest print a backend parameter by name ("cuda") instead of its bytes.
inline void PrintTo(Backend b, std::ostream* os) { *os << backend_name(b); }
}  // namespace moe::kernels
