// The expert store's executor (what a MoE layer's forward calls), attaching a store to a model, and
// loading a model for inference with or without one.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <map>

#include "expert_store_internal.h"
#include "moe/core/error.h"
#include "moe/model/quantized.h"

namespace moe::infer {

namespace detail {

namespace {
using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

class LayerExecutor : public ExpertExecutor {
 public:
  // layer: the MoE layer that owns this executor (so outlives it); its backend is read per run.
  LayerExecutor(std::shared_ptr<StoreImpl> s, int64_t li, const MoELayer* layer)
      : s_(std::move(s)), li_(li), layer_(layer) {}
  void run(const ExpertRows& rows) override { s_->run(li_, rows, layer_->backend()); }

 private:
  std::shared_ptr<StoreImpl> s_;
  int64_t li_;
  const MoELayer* layer_;
};
}  // namespace

void StoreImpl::learn(int64_t li, const std::vector<int32_t>& active) {
  const int64_t E = S_.E;
  for (int64_t e = 0; e < E; ++e) {
    double& f = freq_[li * E + e];
    f = 0.9 * f + (std::find(active.begin(), active.end(), e) != active.end() ? 0.1 : 0.0);
  }
  if (li >= 1 && last_layer_run_ == li - 1) {
    double* T = &trans_[static_cast<size_t>((li - 1) * E * E)];
    for (int32_t i : last_active_[li - 1])
      for (int32_t j : active) T[i * E + j] += 1.0;
  }
  last_active_[li] = active;
  last_layer_run_ = li;
}

bool StoreImpl::acquire(int64_t id, ExpertView* view, bool* hit) {
  std::unique_lock<std::mutex> lk(mu_);
  Entry& e = entries_[id];
  *hit = e.state == Entry::Ready;
  if (e.state == Entry::Absent && opt_.miss != MissMode::Load) {
    ExpertView v;
    if (view_in_place(*S_.files, S_.src[id], S_.fmt, &v)) {
      bool in_place = opt_.miss == MissMode::Compute;
      if (opt_.miss == MissMode::Auto) {  // the cost model: extra compute now vs loads saved later
        const double p = predicted_[id] ? 1.0 : freq_[id];
        in_place = inplace_extra_s_ < (1.0 - p) * load_s_;
      }
      if (in_place) {
        *view = v;
        ++stats_.computed_in_place;
        return false;
      }
    }
  }
  ++e.pins;
  if (e.state == Entry::Absent) {
    e.state = Entry::Loading;
    e.error.clear();
    demand_q_.push_back(id);
    cv_.notify_all();
  }
  if (e.state == Entry::Loading) {
    if (e.loading_prefetch) ++stats_.late_prefetches;
    const auto t0 = Clock::now();
    cv_.wait(lk, [&] { return e.state == Entry::Ready || (e.state == Entry::Absent && !e.error.empty()); });
    stats_.stall_seconds += seconds_since(t0);
    if (e.state != Entry::Ready) {
      --e.pins;
      throw Error(
          cat("expert store: loading expert ", id % S_.E, " of layer ", S_.layers[id / S_.E], ": ", e.error));
    }
  }
  if (e.prefetched) ++stats_.prefetch_used, e.prefetched = false;
  *view = e.view;
  return true;
}

void StoreImpl::run(int64_t li, const ExpertRows& rows, kernels::Backend be) {
  const int64_t E = S_.E, d = S_.d, F = S_.F;
  MOE_CHECK(rows.n_experts == E && rows.d_model == d && rows.d_ff == F, "expert store: layer shape (E ",
            rows.n_experts, ", d ", rows.d_model, ", F ", rows.d_ff, ") differs from the checkpoint's (", E,
            ", ", d, ", ", F, ")");
  std::vector<int32_t> active;
  int64_t max_rows = 0;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t m = rows.offsets[e + 1] - rows.offsets[e];
    if (m > 0) active.push_back(static_cast<int32_t>(e)), max_rows = std::max(max_rows, m);
    MOE_CHECK(m == 0 || S_.held(e), "expert store: layer ", S_.layers[li], " asks for expert ", e,
              ", which this store does not hold (experts ", S_.first, "..", S_.first + S_.count - 1, ")");
  }
  const bool prefetch = opt_.prefetch && capacity_ < S_.n_held();
  bool recording;
  {
    std::lock_guard<std::mutex> g(mu_);
    cur_layer_ = li;
    active_now_ = active;
    learn(li, active);
    recording = record_routing_;
  }
  if (prefetch || recording) {
    // each token's chosen experts, in expert order (-1 where it chose fewer than top-k)
    const int64_t n = rows.n_tokens, tk = S_.top_k;
    std::vector<int32_t> chosen(static_cast<size_t>(n * tk), -1);
    std::vector<int32_t> count(static_cast<size_t>(n), 0);
    for (int64_t e = 0; e < E; ++e)
      for (int32_t r = rows.offsets[e]; r < rows.offsets[e + 1]; ++r) {
        const int64_t t = rows.gather ? rows.gather[r] : r;
        if (t >= 0 && t < n && count[t] < tk) chosen[t * tk + count[t]++] = static_cast<int32_t>(e);
      }
    if (recording) {
      std::lock_guard<std::mutex> g(mu_);
      routing_.x[li].insert(routing_.x[li].end(), rows.x, rows.x + n * d);
      routing_.experts[li].insert(routing_.experts[li].end(), chosen.begin(), chosen.end());
    }
    if (prefetch) predict(li, rows.x, n, chosen);
  }
  // Resident experts first: their compute overlaps the loads of the others.
  const bool upfront = static_cast<int64_t>(active.size()) <= capacity_ - 2;
  if (upfront) {
    std::lock_guard<std::mutex> g(mu_);
    std::stable_sort(active.begin(), active.end(), [&](int32_t a, int32_t b) {
      return (entries_[li * E + a].state == Entry::Ready) > (entries_[li * E + b].state == Entry::Ready);
    });
    // Pin the resident ones and those a prefetch is loading (no load may evict them before they
    // are computed) and queue the misses now, in the order they will be computed.
    for (int32_t e : active) {
      Entry& en = entries_[li * E + e];
      if (en.state == Entry::Ready || en.state == Entry::Loading) {
        ++en.pins;
        en.queued_pin = true;
        continue;
      }
      if (en.state != Entry::Absent || opt_.miss != MissMode::Load) continue;
      ++en.pins;
      en.state = Entry::Loading;
      en.error.clear();
      demand_q_.push_back(li * E + e);
      en.queued_pin = true;
      en.queued_miss = true;
    }
    cv_.notify_all();
  }
  // On an error (a failed load, a kernel error) the pins this layer still holds are released, so the
  // store stays usable for the next forward.
  struct ReleaseOnError {
    StoreImpl* s;
    int64_t base;
    const std::vector<int32_t>* active;
    bool armed = true;
    ~ReleaseOnError() {
      if (!armed) return;
      std::lock_guard<std::mutex> g(s->mu_);
      for (int32_t e : *active) {
        Entry& en = s->entries_[base + e];
        if (en.queued_pin) --en.pins, en.queued_pin = false;
        en.queued_miss = false;
      }
      s->cv_.notify_all();
    }
  } release{this, li * E, &active};
  const size_t scratch = static_cast<size_t>(max_rows * F);
  if (G_.size() < scratch) G_.resize(scratch), U_.resize(scratch), H_.resize(scratch);
  for (int32_t e : active) {
    const int64_t id = li * E + e;
    ExpertView v;
    bool hit = false;
    // a pin taken above (queued_pin) is held already; acquire adds one more unless computed in place
    const bool pinned = acquire(id, &v, &hit);
    if (upfront) {
      std::lock_guard<std::mutex> g(mu_);
      Entry& en = entries_[id];
      if (en.queued_pin) --en.pins, en.queued_pin = false;
      if (en.queued_miss) hit = false, en.queued_miss = false;
    }
    detail::ExpertCall c;
    c.w = &v;
    c.act = S_.act;
    c.m = rows.offsets[e + 1] - rows.offsets[e];
    c.d = d;
    c.F = F;
    c.x = rows.x;
    c.gather = rows.gather ? rows.gather + rows.offsets[e] : nullptr;
    c.out = rows.out + static_cast<int64_t>(rows.offsets[e]) * d;
    c.G = G_.data();
    c.U = U_.data();
    c.H = H_.data();
    if (!rows.gather) c.x = rows.x + static_cast<int64_t>(rows.offsets[e]) * d;
    try {
      compute_expert(be, c);
    } catch (...) {
      if (pinned) {
        std::lock_guard<std::mutex> g(mu_);
        --entries_[id].pins;
      }
      cv_.notify_all();
      throw;
    }
    std::lock_guard<std::mutex> g(mu_);
    Entry& en = entries_[id];
    if (pinned) --en.pins;
    en.last_use = ++tick_;
    ++en.uses;
    (hit ? stats_.hits : stats_.misses) += 1;
    stats_.layer_hits[li][e] += hit ? 1 : 0;
    ++stats_.layer_uses[li][e];
    if (record_) uses_.push_back(id);
    cv_.notify_all();
  }
  release.armed = false;
}

ExpertStoreStats StoreImpl::stats() const {
  std::lock_guard<std::mutex> g(mu_);
  ExpertStoreStats s = stats_;
  s.capacity = capacity_;
  s.expert_bytes = slot_bytes_;
  s.resident = 0;
  for (const Entry& e : entries_) s.resident += e.state == Entry::Ready ? 1 : 0;
  return s;
}

void StoreImpl::record_uses(bool on) {
  std::lock_guard<std::mutex> g(mu_);
  record_ = on;
}

std::vector<int64_t> StoreImpl::take_uses() {
  std::lock_guard<std::mutex> g(mu_);
  std::vector<int64_t> out;
  out.swap(uses_);
  return out;
}

void StoreImpl::record_routing(bool on) {
  std::lock_guard<std::mutex> g(mu_);
  record_routing_ = on;
  const size_t L = S_.layers.size();
  if (routing_.x.size() != L) routing_.x.assign(L, {}), routing_.experts.assign(L, {});
}

RoutingSamples StoreImpl::take_routing() {
  std::lock_guard<std::mutex> g(mu_);
  RoutingSamples out;
  out.d = S_.d;
  out.E = S_.E;
  out.top_k = S_.top_k;
  out.x.swap(routing_.x);
  out.experts.swap(routing_.experts);
  const size_t L = S_.layers.size();
  routing_.x.assign(L, {});
  routing_.experts.assign(L, {});
  if (out.x.size() != L) out.x.assign(L, {}), out.experts.assign(L, {});
  return out;
}

void StoreImpl::reset_stats() {
  std::lock_guard<std::mutex> g(mu_);
  ExpertStoreStats s;
  s.layers = stats_.layers;
  s.layer_hits.assign(stats_.layer_hits.size(), std::vector<int64_t>(static_cast<size_t>(S_.E), 0));
  s.layer_uses = s.layer_hits;
  stats_ = std::move(s);
}

std::string StoreImpl::describe() const {
  const int64_t n = S_.n_held();
  return cat(
      "experts ", S_.fmt_name, ", ", capacity_, " of ", n, " resident (",
      static_cast<double>(capacity_ * slot_bytes_) / 1048576.0, " MiB), policy ",
      cache_policy_name(opt_.policy), ", prefetch ",
      opt_.prefetch ? cat("depth ", opt_.prefetch_depth, " by ", S_.predictor_name) : std::string("off"),
      ", io ", expert_io_name(opt_.io), ", miss ", miss_mode_name(opt_.miss));
}

}  // namespace detail

namespace {
// Where expert tensors of the checkpoint lie, checked against the expected shapes.
class ExpertLocator {
 public:
  ExpertLocator(const std::string& dir, const model::QuantConfig& qc) : dir_(dir), qc_(qc) {
    locs_ = model::checkpoint_locations(dir);
    for (const auto& [name, loc] : locs_)
      if (!file_index_.count(loc.file))
        file_index_[loc.file] = static_cast<int>(paths_.size()), paths_.push_back(loc.file);
  }
  const std::vector<std::string>& paths() const { return paths_; }

  detail::MatrixSource matrix(const std::string& weight_name, int64_t N, int64_t K) const {
    detail::MatrixSource m;
    m.N = N;
    m.K = K;
    const std::string base = weight_name.substr(0, weight_name.size() - std::string(".weight").size());
    if (locs_.count(base + ".qweight")) {
      MOE_CHECK(qc_.bits > 0, dir_, ": tensor '", base,
                ".qweight' but config.json has no quantization_config");
      const model::TensorLocation& q = get(base + ".qweight");
      m.bits = q.dtype == DType::I8 ? 8 : 4;
      m.group = qc_.group;
      MOE_CHECK(q.dtype == DType::I8 || q.dtype == DType::U8, where(q), ": tensor '", base,
                ".qweight' has dtype ", dtype_name(q.dtype), "; expected I8 (int8) or U8 (int4)");
      MOE_CHECK(K % m.group == 0, dir_, ": group size ", m.group, " does not divide ", K, " for '", base,
                "'");
      expect(base + ".qweight", q, {N, m.bits == 8 ? K : K / 2});
      m.q = span(q);
      const model::TensorLocation& s = get(base + ".scales");
      expect(base + ".scales", s, {N, K / m.group}, DType::F16);
      m.scales = span(s);
      if (m.bits == 4) {
        const model::TensorLocation& mn = get(base + ".mins");
        expect(base + ".mins", mn, {N, K / m.group}, DType::F16);
        m.mins = span(mn);
      }
      return m;
    }
    const model::TensorLocation& w = get(weight_name);
    MOE_CHECK(w.dtype == DType::F32 || w.dtype == DType::BF16 || w.dtype == DType::F16, where(w),
              ": tensor '", weight_name, "' has dtype ", dtype_name(w.dtype), "; expected a float type");
    expect(weight_name, w, {N, K});
    m.w = span(w);
    return m;
  }

 private:
  const model::TensorLocation& get(const std::string& name) const {
    auto it = locs_.find(name);
    MOE_CHECK(it != locs_.end(), "checkpoint ", dir_, ": missing expert tensor '", name, "'");
    return it->second;
  }
  std::string where(const model::TensorLocation& l) const { return cat("checkpoint ", l.file); }
  void expect(const std::string& name, const model::TensorLocation& l, const Shape& s,
              DType dt = DType::F32) const {
    MOE_CHECK(l.shape == s, where(l), ": tensor '", name, "': expected shape ", shape_str(s), ", got ",
              shape_str(l.shape));
    if (dt != DType::F32)
      MOE_CHECK(l.dtype == dt, where(l), ": tensor '", name, "' has dtype ", dtype_name(l.dtype),
                "; expected ", dtype_name(dt));
  }
  detail::Span span(const model::TensorLocation& l) const {
    detail::Span s;
    s.file = file_index_.at(l.file);
    s.offset = l.offset;
    s.bytes = l.bytes;
    s.dtype = l.dtype;
    return s;
  }

  std::string dir_;
  model::QuantConfig qc_;
  std::map<std::string, model::TensorLocation> locs_;
  std::map<std::string, int> file_index_;
  std::vector<std::string> paths_;
};

}  // namespace

std::shared_ptr<ExpertStore> ExpertStore::attach(model::Transformer& m, const std::string& dir,
                                                 const ExpertStoreOptions& opt) {
  MOE_CHECK(m.external_experts(),
            "expert store: the model holds its own expert weights; build it with "
            "external_experts (load_pretrained(dir, F32, true))");
  MOE_CHECK(m.dtype() == DType::F32, "expert store: the model must be f32");
  MOE_CHECK(opt.prefetch_depth >= 1, "expert store: prefetch depth must be >= 1, got ", opt.prefetch_depth);
  MOE_CHECK(opt.io_threads >= 1 && opt.io_threads <= 64, "expert store: io threads must be in [1, 64], got ",
            opt.io_threads);
  MOE_CHECK(opt.cache_gb >= 0 && std::isfinite(opt.cache_gb),
            "expert store: --expert-cache-gb must be >= 0, got ", opt.cache_gb);
  MOE_CHECK(opt.resident_experts >= -1, "expert store: --resident-experts must be >= 0, got ",
            opt.resident_experts);
  const model::ModelConfig& cfg = m.config();
  const model::QuantConfig qc = model::read_quant_config(dir);
  const ExpertLocator loc(dir, qc);
  detail::StoreSetup S;
  S.backend = m.backend();
  for (int64_t l = 0; l < cfg.num_hidden_layers; ++l)
    if (m.moe_layer(l)) S.layers.push_back(l);
  MOE_CHECK(!S.layers.empty(), "expert store: the model has no MoE layer");
  const MoEConfig& mc = m.moe_layer(S.layers[0])->config();
  S.E = mc.n_experts;
  // Expert parallelism: this rank's shard only (the model's layers hold the same one).
  S.first = m.moe_layer(S.layers[0])->first_expert();
  S.count = m.moe_layer(S.layers[0])->local_experts();
  S.d = mc.d_model;
  S.F = mc.d_ff;
  S.top_k = mc.router.top_k;
  S.act = mc.activation;
  const bool swiglu = S.act == kernels::Activation::SwiGLU;
  bool any_q = false, any_f = false;
  std::vector<int> bits_seen;
  for (int64_t l : S.layers) {
    for (int64_t e = 0; e < S.E; ++e) {
      const std::array<std::string, 3> names = model::expert_weight_names(cfg, l, e);
      detail::ExpertSource s;
      if (swiglu) s.m[0] = loc.matrix(names[0], S.F, S.d);
      s.m[1] = loc.matrix(names[1], S.F, S.d);
      s.m[2] = loc.matrix(names[2], S.d, S.F);
      for (const detail::MatrixSource& x : s.m) {
        if (x.N == 0) continue;
        (x.bits ? any_q : any_f) = true;
        if (x.bits && std::find(bits_seen.begin(), bits_seen.end(), x.bits) == bits_seen.end())
          bits_seen.push_back(x.bits);
      }
      S.src.push_back(s);
    }
  }
  MOE_CHECK(!(any_q && any_f), "checkpoint ", dir, ": some experts are quantized and some are not");
  const bool int_packed = opt.format == "w8a8" || opt.format == "w4a8";
  if (any_q && int_packed) {
    const int bits = opt.format == "w8a8" ? 8 : 4;
    MOE_CHECK(bits_seen.size() == 1 && bits_seen[0] == bits, "checkpoint ", dir, ": --expert-format ",
              opt.format, " needs int", bits, " experts (this checkpoint's are ",
              bits_seen.size() > 1 ? "mixed int4/int8"
              : bits_seen[0] == 4  ? "int4"
                                   : "int8",
              ")");
    S.fmt = bits == 8 ? detail::Format::W8A8 : detail::Format::W4A8;
    S.fmt_name = bits == 8 ? "int8 w8a8" : "int4 w4a8";
  } else if (any_q) {
    MOE_CHECK(opt.format == "auto", "checkpoint ", dir, " holds quantized experts; --expert-format ",
              opt.format,
              " cannot be used (their format is the checkpoint's; w8a8 for int8 experts, w4a8 for int4)");
    S.fmt = detail::Format::Quant;
    S.fmt_name = bits_seen.size() > 1 ? "mixed int4/int8" : bits_seen[0] == 4 ? "int4" : "int8";
  } else if (opt.format == "auto" || opt.format == "bf16") {
    S.fmt = detail::Format::BF16;
    S.fmt_name = "bf16";
  } else if (opt.format == "f32") {
    S.fmt = detail::Format::F32;
    S.fmt_name = "f32";
  } else {
    MOE_CHECK(!int_packed, "checkpoint ", dir, ": --expert-format ", opt.format, " needs an int",
              opt.format == "w8a8" ? 8 : 4, " checkpoint (written by `moe quantize --bits ",
              opt.format == "w8a8" ? 8 : 4, "`)");
    throw Error(cat("expert store: unknown expert format '", opt.format,
                    "' (auto, bf16, f32, w8a8, w4a8; int8/int4 come from a ",
                    "checkpoint written by `moe quantize`)"));
  }
  S.files = std::make_unique<detail::SourceFiles>(loc.paths(), opt.io == ExpertIo::Direct);
  S.pregate = std::make_unique<PreGating>(m, opt.prefetch_depth);
  S.predictor_name = "pre-gating";
  std::string pred_path;
  if (opt.predictor == "auto") {
    const std::filesystem::path p = std::filesystem::path(dir) / kExpertPredictorFile;
    if (std::filesystem::exists(p)) pred_path = p.string();
  } else if (opt.predictor != "pregate") {
    MOE_CHECK(std::filesystem::exists(opt.predictor), "expert store: predictor file '", opt.predictor,
              "' does not exist (or use auto, pregate)");
    pred_path = opt.predictor;
  }
  if (!pred_path.empty()) {
    S.learned = std::make_unique<ExpertPredictor>(load_expert_predictor(pred_path));
    S.learned->check_matches(m, pred_path);
    S.predictor_name = pred_path;
  }
  const int64_t L = static_cast<int64_t>(S.layers.size());
  auto impl = std::make_shared<detail::StoreImpl>(std::move(S), opt);
  for (int64_t li = 0; li < L; ++li) {
    MoELayer* layer = m.mutable_moe_layer(impl->layer_index(li));
    layer->set_expert_executor(std::make_shared<detail::LayerExecutor>(impl, li, layer));
  }
  return impl;
}

}  // namespace moe::infer
