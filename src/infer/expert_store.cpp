// The expert store: resident slots, cache policies, pre-gated prefetch on a loader thread, and the
// executors the MoE layers call (see moe/infer/expert_store.h).
#include "moe/infer/expert_store.h"

#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <iterator>
#include <limits>
#include <mutex>
#include <set>
#include <unordered_map>
#include <utility>
#include <vector>

#include "expert_io.h"
#include "expert_store_internal.h"
#include "moe/core/error.h"

namespace moe::infer {

using detail::ExpertSource;
using detail::ExpertView;
using detail::Format;

CachePolicy cache_policy_from_name(const std::string& s) {
  if (s == "lru") return CachePolicy::Lru;
  if (s == "lfu") return CachePolicy::Lfu;
  if (s == "activation") return CachePolicy::Activation;
  throw Error(cat("unknown cache policy '", s, "' (lru, lfu, activation)"));
}
const char* cache_policy_name(CachePolicy p) {
  return p == CachePolicy::Lru ? "lru" : p == CachePolicy::Lfu ? "lfu" : "activation";
}
ExpertIo expert_io_from_name(const std::string& s) {
  if (s == "mmap") return ExpertIo::Mmap;
  if (s == "direct") return ExpertIo::Direct;
  throw Error(cat("unknown expert io '", s, "' (mmap, direct)"));
}
const char* expert_io_name(ExpertIo io) { return io == ExpertIo::Mmap ? "mmap" : "direct"; }
MissMode miss_mode_from_name(const std::string& s) {
  if (s == "load") return MissMode::Load;
  if (s == "compute") return MissMode::Compute;
  if (s == "auto") return MissMode::Auto;
  throw Error(cat("unknown miss mode '", s, "' (load, compute, auto)"));
}
const char* miss_mode_name(MissMode m) {
  return m == MissMode::Load ? "load" : m == MissMode::Compute ? "compute" : "auto";
}

namespace detail {

namespace {
using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }
}  // namespace

StoreImpl::StoreImpl(StoreSetup setup, const ExpertStoreOptions& opt) : S_(std::move(setup)), opt_(opt) {
  const int64_t n = static_cast<int64_t>(S_.src.size());
  entries_.resize(static_cast<size_t>(n));
  uint64_t sb = 0;
  for (const ExpertSource& s : S_.src) sb = std::max(sb, slot_bytes(s, S_.fmt));
  slot_bytes_ = sb;
  const int64_t held = S_.n_held();
  int64_t cap = held;
  if (opt.cache_gb > 0) {
    cap = static_cast<int64_t>(opt.cache_gb * 1073741824.0 / static_cast<double>(sb));
  } else if (opt.resident_experts >= 0) {
    cap = opt.resident_experts;
  }
  cap = std::min(cap, held);
  MOE_CHECK(cap >= std::min<int64_t>(3, held), "expert store: the budget holds ", cap, " expert(s) of ", sb,
            " bytes; at least 3 are needed (one computing, one loading, one prefetching)");
  capacity_ = cap;
  MOE_CHECK(sb == 0 || static_cast<uint64_t>(cap) <= (uint64_t{1} << 62) / sb,
            "expert store: budget too large");
  pool_ = static_cast<uint8_t*>(
      std::aligned_alloc(4096, std::max<uint64_t>(4096, (cap * sb + 4095) / 4096 * 4096)));
  MOE_CHECK(pool_, "expert store: cannot allocate ", cap * sb, " bytes for ", cap, " resident experts");
  for (int64_t i = cap - 1; i >= 0; --i) free_.push_back(static_cast<int>(i));
  const int64_t L = static_cast<int64_t>(S_.layers.size()), E = S_.E;
  freq_.assign(static_cast<size_t>(n), static_cast<double>(S_.top_k) / static_cast<double>(E));
  trans_.assign(static_cast<size_t>(std::max<int64_t>(L - 1, 0) * E * E), 0.0);
  predicted_.assign(static_cast<size_t>(n), 0);
  last_active_.assign(static_cast<size_t>(L), {});
  stats_.layers = S_.layers;
  stats_.layer_hits.assign(static_cast<size_t>(L), std::vector<int64_t>(static_cast<size_t>(E), 0));
  stats_.layer_uses = stats_.layer_hits;
  if (opt.warm) warm();
  if (opt.miss == MissMode::Auto) measure_costs();
  if (cap < held || !opt.warm)
    for (int i = 0; i < opt.io_threads; ++i) loaders_.emplace_back([this] { loader_loop(); });
}

StoreImpl::~StoreImpl() {
  {
    std::lock_guard<std::mutex> g(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (std::thread& t : loaders_) t.join();
  std::free(pool_);
}

void StoreImpl::warm() {
  const int64_t n = static_cast<int64_t>(entries_.size());
  for (int64_t id = 0; id < n && !free_.empty(); ++id) {
    if (!S_.held(id)) continue;
    Entry& e = entries_[id];
    e.slot = free_.back();
    free_.pop_back();
    e.view = load_expert(*S_.files, S_.src[id], S_.fmt, slot_ptr(e.slot), scratch_fwd_);
    e.state = Entry::Ready;
  }
}

// The cost model of MissMode::Auto, measured on the first expert: the time of one load, and how much
// longer one row takes computed from the mapped checkpoint than from a slot.
void StoreImpl::measure_costs() {
  if (S_.n_held() == 0) return;
  const ExpertSource& first = S_.src[S_.first];  // the first expert held (layer 0)
  ExpertView mapped;
  if (!view_in_place(*S_.files, first, S_.fmt, &mapped)) return;
  Buffer slot;
  auto t0 = Clock::now();
  const ExpertView loaded = load_expert(*S_.files, first, S_.fmt, slot.ensure(slot_bytes_), scratch_fwd_);
  load_s_ = seconds_since(t0);
  std::vector<float> x(static_cast<size_t>(S_.d), 0.5f), out(static_cast<size_t>(S_.d));
  std::vector<float> G(static_cast<size_t>(S_.F)), U(G.size()), H(G.size());
  auto time_one = [&](const ExpertView& v) {
    ExpertCall c;
    c.w = &v;
    c.act = S_.act;
    c.m = 1;
    c.d = S_.d;
    c.F = S_.F;
    c.x = x.data();
    c.out = out.data();
    c.G = G.data();
    c.U = U.data();
    c.H = H.data();
    double best = 1e30;
    for (int r = 0; r < 3; ++r) {
      const auto t = Clock::now();
      compute_expert(S_.backend, c);
      best = std::min(best, seconds_since(t));
    }
    return best;
  };
  inplace_extra_s_ = std::max(0.0, time_one(mapped) - time_one(loaded));
}

// Expected layers until expert `id` is used next: the layers until its layer comes round, plus a
// whole pass for every pass it is expected to sit out (a geometric number with success p).
double StoreImpl::expected_wait(int64_t id) const {
  const int64_t L = static_cast<int64_t>(S_.layers.size()), E = S_.E;
  const int64_t li = id / E;
  const int64_t dist = ((li - cur_layer_ - 1) % L + L) % L;
  double p = freq_[id];
  if (predicted_[id]) p = 1.0;
  if (li == cur_layer_ + 1 && !active_now_.empty() && li >= 1) {
    const double* T = &trans_[static_cast<size_t>((li - 1) * E * E)];
    double num = 0, den = 0;
    for (int32_t i : active_now_) {
      num += T[i * E + id % E];
      for (int64_t j = 0; j < E; ++j) den += T[i * E + j];
    }
    if (den > 0) p = std::max(p, std::min(1.0, static_cast<double>(S_.top_k) * num / den));
  }
  return static_cast<double>(dist) + static_cast<double>(L) * (1.0 / std::max(p, 1e-3) - 1.0);
}

// The resident, unpinned expert to evict under the policy, or -1. Call with mu_ held.
int64_t StoreImpl::victim(double* wait_out) const {
  int64_t best = -1;
  double best_key = 0;
  for (int64_t id = 0; id < static_cast<int64_t>(entries_.size()); ++id) {
    const Entry& e = entries_[id];
    if (e.state != Entry::Ready || e.pins > 0) continue;
    double key;  // larger: evict first
    switch (opt_.policy) {
      case CachePolicy::Lru:
        key = -static_cast<double>(e.last_use);
        break;
      case CachePolicy::Lfu:
        key = -static_cast<double>(e.uses) - static_cast<double>(e.last_use) * 1e-12;
        break;
      default:
        key = expected_wait(id) - static_cast<double>(e.last_use) * 1e-12;
        break;
    }
    if (best < 0 || key > best_key) best = id, best_key = key;
  }
  if (wait_out && best >= 0) *wait_out = opt_.policy == CachePolicy::Activation ? expected_wait(best) : 0;
  return best;
}

// A slot for a load: a free one, or one taken from the policy's victim; -1 when every slot is pinned
// or loading. Call with mu_ held.
int StoreImpl::take_slot() {
  if (!free_.empty()) {
    const int s = free_.back();
    free_.pop_back();
    return s;
  }
  const int64_t v = victim(nullptr);
  if (v < 0) return -1;
  Entry& e = entries_[v];
  if (e.prefetched) ++stats_.prefetch_wasted;
  ++stats_.evictions;
  e.state = Entry::Absent;
  e.prefetched = false;
  const int s = e.slot;
  e.slot = -1;
  return s;
}

void StoreImpl::loader_loop() {
  Buffer scratch;  // this thread's O_DIRECT bounce buffer
  // Signals go to the application's threads, never to this library thread (a server that waits for
  // SIGTERM with sigwait must not be killed because the signal landed here).
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, nullptr);
  std::unique_lock<std::mutex> lk(mu_);
  while (true) {
    cv_.wait(lk, [&] { return stop_ || !demand_q_.empty() || !prefetch_q_.empty(); });
    if (stop_) return;
    int64_t id;
    bool demand = !demand_q_.empty();
    if (demand) {
      id = demand_q_.front();
      demand_q_.pop_front();
    } else {
      id = prefetch_q_.front();
      prefetch_q_.pop_front();
      Entry& e = entries_[id];
      if (e.state != Entry::Absent) continue;
      if (opt_.policy == CachePolicy::Activation && free_.empty()) {
        // admit only if the victim is expected to be needed later than the candidate
        double vw = 0;
        if (victim(&vw) < 0 || vw <= expected_wait(id)) continue;
      }
      e.state = Entry::Loading;
      e.loading_prefetch = true;
      ++stats_.prefetch_issued;
    }
    Entry& e = entries_[id];
    int slot;
    while ((slot = take_slot()) < 0) {
      if (!demand) break;
      cv_.wait(lk);
      if (stop_) return;
    }
    if (slot < 0) {  // a prefetch with no slot to take: drop it
      e.state = Entry::Absent;
      e.loading_prefetch = false;
      --stats_.prefetch_issued;
      continue;
    }
    e.slot = slot;
    lk.unlock();
    const auto t0 = Clock::now();
    ExpertView v;
    std::string err;
    try {
      v = load_expert(*S_.files, S_.src[id], S_.fmt, slot_ptr(slot), scratch);
    } catch (const std::exception& ex) {
      err = ex.what();
    }
    const double dt = seconds_since(t0);
    lk.lock();
    stats_.load_seconds += dt;
    if (!err.empty()) {
      e.state = Entry::Absent;
      free_.push_back(e.slot);
      e.slot = -1;
      e.error = err;
    } else {
      e.view = v;
      e.state = Entry::Ready;
      e.prefetched = e.loading_prefetch;
      e.last_use = ++tick_;
      ++stats_.loads;
      stats_.bytes_moved += S_.src[id].source_bytes();
    }
    e.loading_prefetch = false;
    cv_.notify_all();
  }
}

// The experts the next `depth` MoE layers are expected to route to (wrapping into the next token's
// first layers where the learned predictor has such pairs), from this layer's input x (n, d) and
// choices (the learned predictor where it has weights for the pair, else pre-gating): each token
// votes for its predicted top-k. Marks them predicted and queues them, nearest layer first.
void StoreImpl::predict(int64_t li, const float* x, int64_t n, const std::vector<int32_t>& chosen) {
  const int64_t L = static_cast<int64_t>(S_.layers.size()), E = S_.E, d = S_.d, tk = S_.top_k;
  const int64_t k = opt_.prefetch_experts > 0 ? opt_.prefetch_experts : S_.top_k;
  const int64_t cap =
      std::max<int64_t>(k, std::min<int64_t>(E, (capacity_ - 2) / (2 * std::max(1, opt_.prefetch_depth))));
  std::vector<std::pair<int64_t, int64_t>> order;  // (layer, expert) to queue, nearest layer first
  std::vector<float> s(static_cast<size_t>(E));
  std::vector<int64_t> idx(static_cast<size_t>(E));
  for (int64_t dl = 1; dl <= opt_.prefetch_depth && li + dl < 2 * L; ++dl) {
    // a pair into the next token (the first layers of the next decode step) predicts from the last
    // token's row only, and only the learned predictor has such pairs
    const int64_t tl = predicted_layer(li, dl, L);
    const bool next = predicted_token_offset(li, dl, L) > 0;
    if (next && !(S_.learned && S_.learned->has(li, dl))) continue;
    std::vector<int64_t> votes(static_cast<size_t>(E), 0);
    bool any = false;
    for (int64_t t = next ? n - 1 : 0; t < n; ++t) {
      const float* xt = x + t * d;
      const int32_t* ct = chosen.data() + t * tk;
      if (!(S_.learned && S_.learned->score(li, dl, xt, ct, tk, s.data())) &&
          !S_.pregate->score(li, dl, xt, ct, tk, s.data()))
        break;
      any = true;
      for (int64_t e = 0; e < E; ++e) idx[e] = e;
      std::partial_sort(idx.begin(), idx.begin() + std::min(k, E), idx.end(),
                        [&](int64_t a, int64_t b) { return s[a] > s[b] || (s[a] == s[b] && a < b); });
      for (int64_t j = 0; j < std::min(k, E); ++j) ++votes[idx[j]];
    }
    if (!any) continue;
    for (int64_t e = 0; e < E; ++e) idx[e] = e;
    std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return votes[a] > votes[b]; });
    for (int64_t j = 0; j < std::min(cap, E) && votes[idx[j]] > 0; ++j) order.emplace_back(tl, idx[j]);
  }
  std::lock_guard<std::mutex> g(mu_);
  std::fill(predicted_.begin(), predicted_.end(), 0);
  prefetch_q_.clear();
  for (const auto& [l, e] : order) {
    const int64_t id = l * E + e;
    if (!S_.held(id)) continue;  // another rank's expert
    predicted_[id] = 1;
    if (entries_[id].state == Entry::Absent) prefetch_q_.push_back(id);
  }
  if (!prefetch_q_.empty()) cv_.notify_all();
}

}  // namespace detail
OptimalCacheResult simulate_optimal_cache(const std::vector<int64_t>& uses,
                                          const std::vector<uint8_t>& counted, int64_t capacity,
                                          const std::vector<int64_t>& initial) {
  MOE_CHECK(capacity >= 1, "optimal cache: capacity must be >= 1, got ", capacity);
  MOE_CHECK(counted.empty() || counted.size() == uses.size(), "optimal cache: ", counted.size(),
            " counted flags for ", uses.size(), " uses");
  MOE_CHECK(static_cast<int64_t>(initial.size()) <= capacity, "optimal cache: ", initial.size(),
            " experts resident at the start exceed the capacity ", capacity);
  const int64_t n = static_cast<int64_t>(uses.size());
  constexpr int64_t kNever = std::numeric_limits<int64_t>::max();
  // next[i]: the position of the next use of uses[i] after i (kNever: none).
  std::vector<int64_t> next(static_cast<size_t>(n), kNever);
  std::unordered_map<int64_t, int64_t> seen;  // id -> its next position, scanning backwards
  for (int64_t i = n - 1; i >= 0; --i) {
    auto it = seen.find(uses[i]);
    if (it != seen.end()) next[i] = it->second;
    seen[uses[i]] = i;
  }
  // Resident experts keyed by their next use (ties: the larger id first, so the replay is fixed).
  std::set<std::pair<int64_t, int64_t>> by_next;
  std::unordered_map<int64_t, int64_t> key_of;  // id -> its next use in by_next
  for (int64_t id : initial) {
    if (key_of.count(id)) continue;
    auto it = seen.find(id);
    const int64_t first = it == seen.end() ? kNever : it->second;
    by_next.insert({first, id});
    key_of[id] = first;
  }
  OptimalCacheResult r;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t id = uses[i];
    const bool count = counted.empty() || counted[i] != 0;
    auto k = key_of.find(id);
    if (k != key_of.end()) {
      r.hits += count ? 1 : 0;
      by_next.erase({k->second, id});
    } else {
      r.misses += count ? 1 : 0;
      if (static_cast<int64_t>(by_next.size()) >= capacity) {
        const auto victim = std::prev(by_next.end());  // next use farthest ahead
        key_of.erase(victim->second);
        by_next.erase(victim);
      }
    }
    by_next.insert({next[i], id});
    key_of[id] = next[i];
  }
  return r;
}

}  // namespace moe::infer
