#include "train/parallel.h"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "moe/core/error.h"
#include "moe/core/file_io.h"
#include "moe/model/safetensors.h"

namespace moe::train::par {

namespace fs = std::filesystem;

namespace {

std::string shard_name(const char* stem, int i, int n) {
  char buf[96];
  std::snprintf(buf, sizeof buf, "%s-%05d-of-%05d.safetensors", stem, i + 1, n);
  return buf;
}

// The MoE layer index of a stacked expert parameter "model.layers.<l>.<...>.experts.w_x" and which
// of gate (0), up (1), down (2) it is.
std::pair<int64_t, int> expert_param_slot(const std::string& name) {
  const std::string pre = "model.layers.";
  MOE_CHECK(name.compare(0, pre.size(), pre) == 0, "not a layer parameter: '", name, "'");
  const int64_t l = std::stoll(name.substr(pre.size()));
  const int w = name.size() >= 6 && name.compare(name.size() - 6, 6, "w_gate") == 0 ? 0
                : name.size() >= 4 && name.compare(name.size() - 4, 4, "w_up") == 0 ? 1
                                                                                    : 2;
  return {l, w};
}

}  // namespace

void on_root(const dist::ParallelGroups* g, const std::string& what, const std::function<void()>& fn) {
  if (!active(g)) return fn();
  dist::Communicator& w = *g->world;
  std::string err;
  if (w.rank() == 0) {
    try {
      fn();
    } catch (const std::exception& e) {
      err = e.what();
      if (err.empty()) err = "unknown error";
    }
  }
  int64_t len = static_cast<int64_t>(err.size());
  w.broadcast(&len, 1, DType::I64, 0);
  if (len == 0) return;
  err.resize(static_cast<size_t>(len));
  w.broadcast(err.data(), len, DType::U8, 0);
  if (w.rank() == 0) throw Error(err);
  throw Error(cat(what, " failed on rank 0: ", err));
}

void all_ok(const dist::ParallelGroups* g, bool ok, const std::string& what) {
  if (!active(g)) {
    MOE_CHECK(ok, what, " failed");
    return;
  }
  int64_t first_bad = ok ? std::numeric_limits<int64_t>::max() : g->world->rank();
  g->world->allreduce(&first_bad, 1, DType::I64, dist::ReduceOp::Min);
  MOE_CHECK(first_bad == std::numeric_limits<int64_t>::max(), what, " failed on rank ", first_bad);
}

void allreduce_grads(const dist::ParallelGroups& g, std::vector<ParamRef>& refs) {
  // One flat buffer per group: replicated gradients over the world, expert shards over dp.
  for (int pass = 0; pass < 2; ++pass) {
    const bool experts = pass == 1;
    dist::Communicator& c = experts ? *g.dp : *g.world;
    if (c.size() == 1) continue;
    int64_t n = 0;
    for (const ParamRef& p : refs)
      if (model::Transformer::is_expert_param(p.name) == experts) n += p.grad->numel();
    std::vector<float> buf(static_cast<size_t>(n));
    int64_t o = 0;
    for (const ParamRef& p : refs)
      if (model::Transformer::is_expert_param(p.name) == experts) {
        std::copy_n(p.grad->data<float>(), p.grad->numel(), buf.data() + o);
        o += p.grad->numel();
      }
    c.allreduce(buf.data(), n, DType::F32, dist::ReduceOp::Sum);
    o = 0;
    for (ParamRef& p : refs)
      if (model::Transformer::is_expert_param(p.name) == experts) {
        std::copy_n(buf.data() + o, p.grad->numel(), p.grad->data<float>());
        o += p.grad->numel();
      }
  }
}

double global_grad_norm(const dist::ParallelGroups& g, const std::vector<ParamRef>& refs) {
  std::vector<ParamRef> dense, experts;
  for (const ParamRef& p : refs) (model::Transformer::is_expert_param(p.name) ? experts : dense).push_back(p);
  const double nd = grad_norm(dense);
  double ne2 = grad_norm(experts);
  ne2 *= ne2;
  g.ep->allreduce(&ne2, 1, DType::F64, dist::ReduceOp::Sum);
  return std::sqrt(nd * nd + ne2);
}

void allreduce_step(const dist::ParallelGroups& g, double& loss_sum, int64_t& count, double& aux,
                    std::vector<MoEStats>& stats) {
  std::vector<double> v = {loss_sum, static_cast<double>(count), aux};
  for (const MoEStats& s : stats)
    for (int64_t c : s.routed_per_expert) v.push_back(static_cast<double>(c));
  g.world->allreduce(v.data(), static_cast<int64_t>(v.size()), DType::F64, dist::ReduceOp::Sum);
  loss_sum = v[0];
  count = static_cast<int64_t>(v[1]);
  aux = v[2] / g.world->size();  // the mean of the ranks' balancing losses
  size_t i = 3;
  for (MoEStats& s : stats)
    for (int64_t& c : s.routed_per_expert) c = static_cast<int64_t>(v[i++]);
}

void save_sharded(const dist::ParallelGroups& g, const model::Transformer& m, const AdamW& adam,
                  const std::string& dir) {
  const model::ModelConfig& cfg = m.config();
  const int ep = g.ep->size(), er = g.ep->rank();
  std::string error;
  if (g.dp->rank() == 0) {
    try {
      // Expert tensors of this rank (global names), and which stacked parameter each comes from.
      std::map<std::string, Tensor> sd = m.hf_state_dict();
      std::set<std::string> expert_names;
      int64_t El = 0, first = 0;
      for (int64_t l = 0; l < cfg.num_hidden_layers; ++l) {
        const MoELayer* L = m.moe_layer(l);
        if (!L) continue;
        El = L->local_experts(), first = L->first_expert();
        for (int64_t e = first; e < first + El; ++e)
          for (const std::string& n : model::expert_weight_names(cfg, l, e)) expert_names.insert(n);
      }
      if (er != 0)
        for (auto it = sd.begin(); it != sd.end();)
          it = expert_names.count(it->first) ? std::next(it) : sd.erase(it);
      save_safetensors((fs::path(dir) / shard_name("model", er, ep)).string(), sd, {{"format", "pt"}});

      // Optimizer: stacked expert moments split into one entry per expert under its global name.
      std::map<std::string, Tensor> st = adam.export_state(), out;
      for (auto& [name, t] : st) {
        std::string pname;
        for (const char* pre : {"adamw.m.", "adamw.v."})
          if (name.compare(0, 8, pre) == 0) pname = name.substr(8);
        if (!pname.empty() && model::Transformer::is_expert_param(pname)) {
          const auto [l, w] = expert_param_slot(pname);
          for (int64_t i = 0; i < t.size(0); ++i)
            out[name.substr(0, 8) + model::expert_weight_names(cfg, l, first + i)[w]] =
                t.slice(0, i, i + 1).reshape({t.size(1), t.size(2)}).contiguous();
        } else if (er == 0) {
          out[name] = t;
        }
      }
      save_safetensors((fs::path(dir) / shard_name("optimizer", er, ep)).string(), out);

      if (er == 0) {  // the index of the model shards, and config.json
        nlohmann::json wm = nlohmann::json::object();
        uint64_t total = 0;
        for (const auto& [name, t] : sd)
          if (!expert_names.count(name)) {
            wm[name] = shard_name("model", 0, ep);
            total += static_cast<uint64_t>(t.numel()) * 4;
          }
        for (int64_t l = 0; l < cfg.num_hidden_layers; ++l) {
          if (!m.moe_layer(l)) continue;
          for (int64_t e = 0; e < cfg.num_experts; ++e)
            for (const std::string& n : model::expert_weight_names(cfg, l, e)) {
              wm[n] = shard_name("model", static_cast<int>(e / El), ep);
              total += static_cast<uint64_t>(sd.at(model::expert_weight_names(cfg, l, first)[0]).numel()) * 4;
            }
        }
        const nlohmann::json index = {{"metadata", {{"total_size", total}}}, {"weight_map", wm}};
        io::write_file_atomic((fs::path(dir) / "model.safetensors.index.json").string(), "checkpoint index",
                              [&](std::ostream& f) { f << index.dump(2) << "\n"; });
        io::write_file_atomic((fs::path(dir) / "config.json").string(), "config.json",
                              [&](std::ostream& f) { f << model::to_json(cfg) << "\n"; });
      }
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
  all_ok(&g, error.empty(),
         error.empty() ? "writing the checkpoint shards" : "writing the checkpoint shards (" + error + ")");
}

std::map<std::string, Tensor> load_optimizer_state(const std::string& dir, const model::Transformer& m) {
  std::map<std::string, Tensor> st;
  const fs::path single = fs::path(dir) / "optimizer.safetensors";
  if (fs::exists(single)) {
    st = load_safetensors(single.string());
  } else {
    bool any = false;
    for (const auto& ent : fs::directory_iterator(dir)) {
      const std::string f = ent.path().filename().string();
      if (f.rfind("optimizer-", 0) != 0 || ent.path().extension() != ".safetensors") continue;
      any = true;
      for (auto& [name, t] : load_safetensors(ent.path().string())) {
        MOE_CHECK(!st.count(name), dir, ": optimizer tensor '", name, "' is in two shards");
        st[name] = std::move(t);
      }
    }
    MOE_CHECK(any, dir, ": no optimizer.safetensors and no optimizer-*-of-*.safetensors");
  }
  // This process's stacked expert moments: a slice of a stacked tensor, or assembled from experts.
  const model::ModelConfig& cfg = m.config();
  std::map<std::string, Tensor> out;
  for (auto& [name, t] : st)
    if (name.compare(0, 6, "adamw.") != 0 || name == "adamw.step") out[name] = t;
  for (const model::NamedParam& p : m.parameters()) {
    for (const std::string pre : {"adamw.m.", "adamw.v."}) {
      const std::string key = pre + p.name;
      if (!model::Transformer::is_expert_param(p.name)) {
        if (st.count(key)) out[key] = st.at(key);
        continue;
      }
      const auto [l, w] = expert_param_slot(p.name);
      const MoELayer* L = m.moe_layer(l);
      const int64_t first = L->first_expert(), El = L->local_experts();
      if (st.count(key)) {  // stacked over all experts
        const Tensor& full = st.at(key);
        MOE_CHECK(full.dim() == 3 && full.size(0) == cfg.num_experts, dir, ": optimizer tensor '", key,
                  "' has shape ", shape_str(full.shape()), ", expected ", cfg.num_experts, " experts");
        out[key] = full.slice(0, first, first + El).contiguous();
        continue;
      }
      const std::string e0 = pre + model::expert_weight_names(cfg, l, first)[w];
      if (!st.count(e0)) continue;  // no state (import_state reports it when one is needed)
      Tensor stacked = Tensor::empty(p.value.shape(), DType::F32, key);
      for (int64_t i = 0; i < El; ++i) {
        const std::string ek = pre + model::expert_weight_names(cfg, l, first + i)[w];
        MOE_CHECK(st.count(ek), dir, ": optimizer state lacks '", ek, "'");
        const Tensor& src = st.at(ek);
        MOE_CHECK(src.shape() == Shape({p.value.size(1), p.value.size(2)}), dir, ": optimizer tensor '", ek,
                  "' has shape ", shape_str(src.shape()));
        Tensor dst = stacked.slice(0, i, i + 1).reshape({p.value.size(1), p.value.size(2)});
        dst.copy_from(src);
      }
      out[key] = stacked;
    }
  }
  return out;
}

}  // namespace moe::train::par
