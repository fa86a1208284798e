// The op consistency harness: poisoning, running a case on a backend (with device copies for
// Cuda), comparing with the reference, and the MoE routing used by the cases.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <sstream>
#include <vector>

#include "moe/core/error.h"
#include "op_cases.h"
#ifdef MOE_HAVE_CUDA
#include "kernels/cuda/cuda.h"
#endif

namespace moe::ops_test {

double Buffer::get(int64_t i) const {
  const unsigned char* p = bytes.data() + static_cast<size_t>(i) * elem_size(elem);
  switch (elem) {
    case Elem::F32: {
      float v;
      std::memcpy(&v, p, sizeof v);
      return v;
    }
    case Elem::F64: {
      double v;
      std::memcpy(&v, p, sizeof v);
      return v;
    }
    case Elem::I32: {
      int32_t v;
      std::memcpy(&v, p, sizeof v);
      return v;
    }
    case Elem::U8:
      return *p;
    case Elem::U16: {
      uint16_t v;
      std::memcpy(&v, p, sizeof v);
      return v;
    }
  }
  return 0;
}

void poison_outputs(Buffers& bufs) {
  for (int id = 0; id < bufs.size(); ++id) {
    Buffer& b = bufs[id];
    if (b.role != Role::Out) continue;
    if (b.elem == Elem::F32) {
      std::fill_n(bufs.host<float>(id), b.count, std::numeric_limits<float>::quiet_NaN());
    } else if (b.elem == Elem::F64) {
      std::fill_n(bufs.host<double>(id), b.count, std::numeric_limits<double>::quiet_NaN());
    } else {
      std::fill(b.bytes.begin(), b.bytes.end(), static_cast<unsigned char>(0xAB));
    }
  }
}

bool have_gpu() { return kernels::backend_available(Backend::Cuda); }

DeviceCopies::DeviceCopies(Buffers& bufs, Backend b) : bufs_(bufs), active_(b == Backend::Cuda) {
  if (!active_) return;
#ifdef MOE_HAVE_CUDA
  for (int id = 0; id < bufs_.size(); ++id) {
    Buffer& x = bufs_[id];
    if (x.bytes.empty()) continue;
    x.device = kernels::cuda::device_alloc(x.bytes.size());
    kernels::cuda::copy_to_device(x.device, x.bytes.data(), x.bytes.size());
  }
#else
  throw Error("DeviceCopies: this build has no CUDA support");
#endif
}

DeviceCopies::~DeviceCopies() {
#ifdef MOE_HAVE_CUDA
  for (int id = 0; active_ && id < bufs_.size(); ++id) {
    if (bufs_[id].device) kernels::cuda::device_free(bufs_[id].device);
    bufs_[id].device = nullptr;
  }
#endif
}

void DeviceCopies::synchronize() {
#ifdef MOE_HAVE_CUDA
  if (active_) kernels::cuda::synchronize();
#endif
}

void DeviceCopies::fetch_outputs() {
  synchronize();
#ifdef MOE_HAVE_CUDA
  for (int id = 0; active_ && id < bufs_.size(); ++id) {
    Buffer& x = bufs_[id];
    if (x.device && x.role != Role::In) kernels::cuda::copy_to_host(x.bytes.data(), x.device, x.bytes.size());
  }
#endif
}

Buffers run_case(const OpCase& c, Backend b, const Buffers& in) {
  Buffers bufs = in;
  poison_outputs(bufs);
  DeviceCopies dev(bufs, b);
  c.run(b, bufs);
  dev.fetch_outputs();
  return bufs;
}

testing::AssertionResult compare_outputs(const OpCase& c, const Buffers& in, const Buffers& ref,
                                         const Buffers& got) {
  std::ostringstream err;
  int64_t bad = 0;
  for (int id = 0; id < ref.size(); ++id) {
    const Buffer& r = ref[id];
    if (r.role == Role::In) continue;
    const Buffer& g = got[id];
    const int64_t n = c.compare_count(ref, id);
    const std::vector<double> tol = r.is_float() ? c.tolerance(in, id) : std::vector<double>();
    for (int64_t i = 0; i < n; ++i) {
      const double x = g.get(i), y = r.get(i);
      const double t = r.is_float() ? tol[static_cast<size_t>(i)] : 0.0;
      if (t == kNotCompared) continue;
      // Written so that NaN in either value fails.
      const bool ok = std::fabs(x - y) <= t || (x == y && std::isfinite(x));
      if (ok) continue;
      if (bad < 5) {
        err << "\n  " << r.name << "[" << i << "]: got " << x << ", expected " << y << " (|diff| "
            << std::fabs(x - y) << " > tolerance " << t << ")";
      }
      ++bad;
    }
  }
  if (bad == 0) return testing::AssertionSuccess();
  return testing::AssertionFailure() << c.name() << ": " << bad << " mismatching elements" << err.str();
}

// ---- routing ----

const char* pattern_name(Pattern p) {
  switch (p) {
    case Pattern::Random:
      return "random";
    case Pattern::AllToOne:
      return "all_to_one";
    case Pattern::EvenOnly:
      return "even_only";
  }
  return "?";
}

Routing make_routing(const Rng& rng, int64_t T, int64_t E, int64_t k, Pattern pattern, double drop) {
  Routing r;
  r.T = T;
  r.E = E;
  r.k = k;
  const Rng pick = rng.fork(1), drops = rng.fork(2);
  // Candidate experts for a token, then k distinct ones drawn by a partial Fisher-Yates shuffle.
  std::vector<int32_t> pool;
  for (int32_t e = 0; e < E; ++e) {
    if (pattern != Pattern::EvenOnly || e % 2 == 0) pool.push_back(e);
  }
  MOE_CHECK(static_cast<int64_t>(pool.size()) >= k, "make_routing: k = ", k, " > usable experts");
  r.expert.resize(static_cast<size_t>(T * k));
  uint64_t draw = 0;
  for (int64_t t = 0; t < T; ++t) {
    std::vector<int32_t> cand = pool;
    int64_t j0 = 0;
    if (pattern == Pattern::AllToOne) {  // expert 0 first, the rest from the others
      r.expert[static_cast<size_t>(t * k)] = 0;
      cand.erase(cand.begin());
      j0 = 1;
    }
    for (int64_t j = j0; j < k; ++j) {
      const size_t left = cand.size() - static_cast<size_t>(j - j0);
      const size_t pickj = static_cast<size_t>(j - j0) + static_cast<size_t>(pick.below(draw++, left));
      std::swap(cand[static_cast<size_t>(j - j0)], cand[pickj]);
      r.expert[static_cast<size_t>(t * k + j)] = cand[static_cast<size_t>(j - j0)];
    }
  }
  r.kept.resize(r.expert.size());
  for (size_t a = 0; a < r.kept.size(); ++a) r.kept[a] = drops.uniform(a) < drop ? 0 : 1;
  r.offsets.resize(static_cast<size_t>(E + 1));
  r.perm.assign(r.expert.size(), -1);
  r.pos.assign(r.expert.size(), -1);
  kernels::PermuteArgs p;
  p.N = T * k;
  p.E = E;
  p.expert = r.expert.data();
  p.kept = r.kept.data();
  p.offsets = r.offsets.data();
  p.perm = r.perm.data();
  p.pos = r.pos.data();
  kernels::permute(Backend::Ref, p);
  return r;
}

}  // namespace moe::ops_test
