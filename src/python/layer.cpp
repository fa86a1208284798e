// moe_cpp._core.Layer: the engine's MoE layer (moe/moe/layer.h) over tensors owned by Python.
// Every call names the parameter tensors it runs on (DLPack capsules, no copies), so a framework's
// optimizer may update or replace them between calls; the layer keeps no weights of its own.
#include <pybind11/stl.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "moe/core/error.h"
#include "moe/moe/layer.h"
#include "python/bindings.h"
#include "python/dlpack.h"

namespace moe::python {

namespace py = pybind11;

namespace {

// The parameters of MoEParams by name (the names of docs/MOE_LAYER.md and the PyTorch oracle).
const std::vector<std::string>& param_names() {
  static const std::vector<std::string> names = {"router_w",    "router_bias",   "w_gate",
                                                 "w_up",        "w_down",        "shared_w_gate",
                                                 "shared_w_up", "shared_w_down", "shared_gate_w"};
  return names;
}

Tensor* field(MoEParams& p, const std::string& n) {
  if (n == "router_w") return &p.router_w;
  if (n == "router_bias") return &p.router_bias;
  if (n == "w_gate") return &p.w_gate;
  if (n == "w_up") return &p.w_up;
  if (n == "w_down") return &p.w_down;
  if (n == "shared_w_gate") return &p.shared_w_gate;
  if (n == "shared_w_up") return &p.shared_w_up;
  if (n == "shared_w_down") return &p.shared_w_down;
  if (n == "shared_gate_w") return &p.shared_gate_w;
  return nullptr;
}

Tensor* field(MoEGrads& g, const std::string& n) {
  if (n == "router_w") return &g.router_w;
  if (n == "w_gate") return &g.w_gate;
  if (n == "w_up") return &g.w_up;
  if (n == "w_down") return &g.w_down;
  if (n == "shared_w_gate") return &g.shared_w_gate;
  if (n == "shared_w_up") return &g.shared_w_up;
  if (n == "shared_w_down") return &g.shared_w_down;
  if (n == "shared_gate_w") return &g.shared_gate_w;
  return nullptr;
}

py::dict stats_dict(const MoEStats& s) {
  py::dict d;
  d["routed_per_expert"] = s.routed_per_expert;
  d["routed_weight_per_expert"] = s.routed_weight_per_expert;
  d["tokens_per_expert"] = s.tokens_per_expert;
  d["dropped"] = s.dropped;
  d["skipped"] = s.skipped;
  d["imbalance"] = s.imbalance;
  d["aux_loss"] = s.aux_loss;
  d["seq_aux_loss"] = s.seq_aux_loss;
  d["z_loss"] = s.z_loss;
  d["entropy_loss"] = s.entropy_loss;
  d["mean_k"] = s.mean_k;
  d["total_loss"] = s.total_loss();
  return d;
}

// One forward's result: y, the routing, the statistics and what its backward needs.
struct Forward {
  MoEForward f;
  bool backward_done = false;
};

class Layer {
 public:
  Layer(const std::string& config_json, const std::string& dtype)
      : layer_(moe_config_from_json(config_json), dtype_from_name(dtype)) {
    for (const auto& n : param_names())
      if (const Tensor* t = field(layer_.params(), n); t->defined()) shapes_.emplace_back(n, t->shape());
    layer_.params() = MoEParams{};  // the caller's tensors come with each call
  }

  // Every parameter this config has, with its shape: {name: [dims]}.
  py::dict param_shapes() const {
    py::dict d;
    for (const auto& [n, s] : shapes_) d[n.c_str()] = std::vector<int64_t>(s);
    return d;
  }

  // The engine's own initialisation (MoELayer::init_params) as new tensors {name: capsule}.
  py::dict init_params(uint64_t seed) {
    MoELayer fresh(layer_.config(), layer_.dtype());
    fresh.init_params(seed);
    py::dict d;
    for (const auto& n : param_names())
      if (const Tensor* t = field(fresh.params(), n); t->defined()) d[n.c_str()] = to_dlpack(*t);
    return d;
  }

  // The bf16 copies are made by the next forward (the layer holds no weights between calls).
  void set_bf16_compute(bool on) {
    MOE_CHECK(!on || layer_.dtype() == DType::F32, "bf16 compute needs an f32 layer, this one is ",
              dtype_name(layer_.dtype()));
    bf16_ = on;
    if (!on) layer_.set_bf16_compute(false);
  }
  bool bf16_compute() const { return bf16_; }
  void set_skip_threshold(double t) { layer_.set_skip_threshold(t); }

  std::shared_ptr<Forward> forward(const py::capsule& x, const py::dict& params, bool training, uint64_t step,
                                   uint64_t seed, const py::object& token_ids, bool check_finite,
                                   bool refresh_bf16) {
    set_params(params);
    const Tensor xt = from_dlpack(x, "x");
    Tensor ids;
    if (!token_ids.is_none()) ids = from_dlpack(token_ids.cast<py::capsule>(), "token_ids");
    auto out = std::make_shared<Forward>();
    {
      py::gil_scoped_release nogil;
      if (bf16_ && !layer_.bf16_compute())
        layer_.set_bf16_compute(true);  // packs the copies
      else if (refresh_bf16 && bf16_)
        layer_.refresh_bf16_compute();
      ForwardOptions opt;
      opt.training = training;
      opt.step = step;
      opt.seed = seed;
      opt.token_ids = ids.defined() ? &ids : nullptr;
      opt.check_finite = check_finite;
      out->f = layer_.forward(xt, opt);
    }
    return out;
  }

  // {"dx": capsule, parameter name: capsule} for every parameter with a gradient.
  py::dict backward(Forward& fwd, const py::capsule& dy, const py::dict& params, double aux_scale) {
    MOE_CHECK(!fwd.backward_done, "this forward's backward has already run (run the forward again)");
    set_params(params);
    const Tensor dyt = from_dlpack(dy, "dy");
    MoEGrads g;
    {
      py::gil_scoped_release nogil;
      layer_.backward_into(fwd.f, dyt, g, aux_scale);
    }
    fwd.backward_done = true;
    fwd.f.saved.reset();  // the activations go now, not with the Python object
    py::dict d;
    d["dx"] = to_dlpack(g.dx);
    for (const auto& n : param_names())
      if (const Tensor* t = field(g, n); t != nullptr && t->defined()) d[n.c_str()] = to_dlpack(*t);
    return d;
  }

  // Aux-loss-free balancing: router_bias (the tensor given) += γ · sign(mean load − load_i).
  void update_bias(const Forward& fwd, const py::capsule& bias) {
    Tensor& b = layer_.params().router_bias;
    b = from_dlpack(bias, "router_bias");
    check_shape(b, {layer_.config().n_experts}, "router_bias");
    b.check_dtype(layer_.dtype(), "router_bias");
    layer_.update_bias(fwd.f.stats);
  }

  double expert_flops(const Forward& fwd) const {
    return layer_.expert_flops(fwd.f.stats, fwd.f.routing.n_tokens);
  }

  std::string config_json() const { return to_json(layer_.config()); }
  std::string dtype() const { return dtype_name(layer_.dtype()); }

 private:
  // Points the layer at the given tensors; a parameter this config has but `params` lacks is an error,
  // as is a name it does not know.
  void set_params(const py::dict& params) {
    MoEParams p;
    for (const auto& [k, v] : params) {
      const std::string n = py::str(k);
      Tensor* t = field(p, n);
      MOE_CHECK(t != nullptr, "unknown MoE parameter '", n, "'");
      *t = from_dlpack(v.cast<py::capsule>(), n);
    }
    layer_.params() = std::move(p);
    layer_.check_params();  // names the first missing or misshapen one
  }

  MoELayer layer_;
  bool bf16_ = false;  // bf16 compute asked for (set on the layer by the first forward)
  std::vector<std::pair<std::string, Shape>> shapes_;  // every parameter this config has
};

}  // namespace

void bind_layer(py::module_& m) {
  py::class_<Forward, std::shared_ptr<Forward>>(m, "Forward",
                                                "One forward of a Layer: y, routing and statistics.")
      .def(
          "y", [](const Forward& f) { return to_dlpack(f.f.y); }, "The output (T, d) as a DLPack capsule.")
      .def(
          "release", [](Forward& f) { f.f.saved.reset(); },
          "Drops the activations kept for backward (a forward that will not be differentiated).")
      .def_property_readonly("stats", [](const Forward& f) { return stats_dict(f.f.stats); })
      .def_property_readonly("total_loss", [](const Forward& f) { return f.f.stats.total_loss(); })
      .def_property_readonly("backward_done", [](const Forward& f) { return f.backward_done; })
      .def(
          "routing",
          [](const Forward& f) {
            const Routing& r = f.f.routing;
            py::dict d;
            d["n_tokens"] = r.n_tokens;
            d["capacity"] = r.capacity;
            for (auto [name, t] : {std::pair<const char*, const Tensor*>{"token", &r.token},
                                   {"expert", &r.expert},
                                   {"weight", &r.weight},
                                   {"kept", &r.kept},
                                   {"logits", &r.logits},
                                   {"scores", &r.scores}})
              if (t->defined()) d[name] = to_dlpack(*t);
            return d;
          },
          "Assignments (token, expert, weight, kept) and router logits/scores as DLPack capsules.");

  py::class_<Layer>(m, "Layer", "The engine's MoE layer over parameters owned by the caller.")
      .def(py::init<const std::string&, const std::string&>(), py::arg("config_json"),
           py::arg("dtype") = "f32")
      .def("param_shapes", &Layer::param_shapes)
      .def("init_params", &Layer::init_params, py::arg("seed"))
      .def("set_bf16_compute", &Layer::set_bf16_compute)
      .def_property_readonly("bf16_compute", &Layer::bf16_compute)
      .def("set_skip_threshold", &Layer::set_skip_threshold)
      .def("forward", &Layer::forward, py::arg("x"), py::arg("params"), py::arg("training") = false,
           py::arg("step") = 0, py::arg("seed") = 0, py::arg("token_ids") = py::none(),
           py::arg("check_finite") = false, py::arg("refresh_bf16") = false)
      .def("backward", &Layer::backward, py::arg("forward"), py::arg("dy"), py::arg("params"),
           py::arg("aux_scale") = 1.0)
      .def("update_bias", &Layer::update_bias, py::arg("forward"), py::arg("router_bias"))
      .def("expert_flops", &Layer::expert_flops)
      .def_property_readonly("config_json", &Layer::config_json)
      .def_property_readonly("dtype", &Layer::dtype);
  m.attr("PARAM_NAMES") = param_names();
}

}  // namespace moe::python
