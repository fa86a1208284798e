// moe_cpp._core.train: the library's training run (train::train, or train::resume), set up as
// `moe train` sets it up, with a Python callback that sees every metrics record as it is written.
#include <pybind11/stl.h>

#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "moe/core/error.h"
#include "moe/core/parallel.h"
#include "moe/train/model_overrides.h"
#include "moe/train/trainer.h"
#include "python/bindings.h"

namespace moe::python {

namespace py = pybind11;

void bind_train(py::module_& m);

namespace {

// Typed reads of one option (a key of the dict given), naming the key when the type is wrong. bool is
// not accepted as an int (Python's bool is an int subclass), ints are accepted as floats.
std::string type_name(const py::handle& v) { return py::str(py::type::of(v).attr("__name__")); }

void set(const py::handle& v, const std::string& key, bool& out) {
  MOE_CHECK(py::isinstance<py::bool_>(v), "train: ", key, " must be a bool, got ", type_name(v));
  out = v.cast<bool>();
}
template <typename I>
requires std::is_integral_v<I>
void set(const py::handle& v, const std::string& key, I& out) {
  MOE_CHECK(py::isinstance<py::int_>(v) && !py::isinstance<py::bool_>(v), "train: ", key,
            " must be an int, got ", type_name(v));
  try {
    out = v.cast<I>();
  } catch (const py::cast_error&) {
    throw Error(cat("train: ", key, " = ", std::string(py::str(v)), " is out of range"));
  }
}
void set(const py::handle& v, const std::string& key, double& out) {
  MOE_CHECK((py::isinstance<py::float_>(v) || py::isinstance<py::int_>(v)) && !py::isinstance<py::bool_>(v),
            "train: ", key, " must be a number, got ", type_name(v));
  out = v.cast<double>();
}
void set(const py::handle& v, const std::string& key, std::string& out) {
  MOE_CHECK(py::isinstance<py::str>(v), "train: ", key, " must be a str, got ", type_name(v));
  out = v.cast<std::string>();
}
void set(const py::handle& v, const std::string& key, std::vector<int64_t>& out) {
  MOE_CHECK(py::isinstance<py::list>(v) || py::isinstance<py::tuple>(v), "train: ", key,
            " must be a list of ints, got ", type_name(v));
  out.clear();
  for (const py::handle& x : v) set(x, key, out.emplace_back());
}

using Setters = std::map<std::string, std::function<void(const py::handle&)>>;

template <typename T>
void field(Setters& s, const std::string& key, T& out) {
  s[key] = [key, &out](const py::handle& v) { set(v, key, out); };
}

// The setters of every option moe_cpp.train accepts: TrainOptions (the keys of train_options.json,
// plus halt_after, time_limit_s, quiet) and the model overrides (moe/train/model_overrides.h).
Setters option_setters(train::TrainOptions& o, train::ModelOverrides& f) {
  Setters s;
  field(s, "run_dir", o.run_dir), field(s, "data", o.data), field(s, "init_from", o.init_from);
  field(s, "vocab_size", o.vocab_size), field(s, "seq_len", o.seq_len), field(s, "batch_size", o.batch_size);
  field(s, "grad_accum", o.grad_accum), field(s, "steps", o.steps), field(s, "lr", o.lr);
  field(s, "min_lr_ratio", o.min_lr_ratio), field(s, "warmup_steps", o.warmup_steps);
  field(s, "weight_decay", o.weight_decay), field(s, "beta1", o.beta1), field(s, "beta2", o.beta2);
  field(s, "grad_clip", o.grad_clip), field(s, "bf16", o.bf16), field(s, "seed", o.seed);
  field(s, "log_every", o.log_every), field(s, "eval_every", o.eval_every);
  field(s, "eval_batches", o.eval_batches), field(s, "checkpoint_every", o.checkpoint_every);
  field(s, "time_limit_s", o.time_limit_s), field(s, "halt_after", o.halt_after), field(s, "quiet", o.quiet);
  field(s, "fault_nan_step", o.fault_nan_step);
  field(s, "arch", f.arch), field(s, "model_config", f.model_config);
  field(s, "model_config_json", f.model_config_json);
  field(s, "layers", f.layers), field(s, "hidden", f.hidden), field(s, "heads", f.heads);
  field(s, "kv_heads", f.kv_heads), field(s, "head_dim", f.head_dim), field(s, "experts", f.experts);
  field(s, "top_k", f.top_k), field(s, "expert_width", f.expert_width),
      field(s, "shared_width", f.shared_width);
  field(s, "dense_width", f.dense_width), field(s, "dense_layers", f.dense_layers), field(s, "tie", f.tie);
  field(s, "aux_coef", f.aux_coef), field(s, "z_coef", f.z_coef), field(s, "routing", f.routing);
  field(s, "score", f.score), field(s, "bias_update_rate", f.bias_update_rate);
  field(s, "capacity_factor", f.capacity_factor), field(s, "n_groups", f.n_groups);
  field(s, "topk_groups", f.topk_groups);
  return s;
}

py::dict summary_dict(const train::TrainSummary& s, const std::string& run_dir, bool stopped) {
  py::dict d;
  d["steps_done"] = s.steps_done;
  d["skipped"] = s.skipped;
  d["final_loss"] = s.final_loss;
  d["eval_loss"] = s.eval_loss;
  d["unigram_entropy"] = s.unigram_entropy;
  d["tokens_per_s"] = s.tokens_per_s;
  d["checkpoint"] = s.checkpoint;
  d["run_dir"] = run_dir;
  d["stopped"] = stopped;
  return d;
}

// options: {key: value} (see option_setters); resume: a run directory to continue ("" = a new run, in
// options["run_dir"]); callback(record_json: str) -> None | bool, called with the GIL held for every
// metrics record; a false result stops the run after that step (with a checkpoint), an exception
// stops it at once and propagates. Ctrl-C (a pending KeyboardInterrupt) stops it the same way.
py::dict run_train(const py::dict& options, const std::string& resume, bool overwrite, int threads,
                   const py::object& callback) {
  train::TrainOptions o;
  train::ModelOverrides f;
  bool steps_given = false;
  {
    Setters setters = option_setters(o, f);
    for (const auto& [k, v] : options) {
      const std::string key = py::str(k);
      const auto it = setters.find(key);
      MOE_CHECK(it != setters.end(), "train: unknown option '", key, "'");
      if (v.is_none()) continue;  // the default
      it->second(v);
      steps_given = steps_given || key == "steps";
    }
  }
  MOE_CHECK(threads >= 0 && threads <= kMaxThreadCount, "train: threads must be in [0, ", kMaxThreadCount,
            "], got ", threads);
  if (threads > 0) set_num_threads(threads);
  bool stopped = false;
  const std::function<bool(const std::string&)> hook = [&callback, &stopped](const std::string& line) {
    py::gil_scoped_acquire gil;
    if (PyErr_CheckSignals() != 0) throw py::error_already_set();
    if (callback.is_none()) return true;
    const py::object r = callback(line);
    if (r.is_none()) return true;
    const int truth = PyObject_IsTrue(r.ptr());
    if (truth < 0) throw py::error_already_set();
    stopped = stopped || truth == 0;
    return truth != 0;
  };
  train::TrainSummary s;
  std::string run_dir = resume.empty() ? o.run_dir : resume;
  if (!resume.empty()) {
    train::ResumeOptions ro;
    ro.override_steps = steps_given ? o.steps : 0;
    ro.halt_after = o.halt_after, ro.time_limit_s = o.time_limit_s, ro.quiet = o.quiet;
    ro.on_metrics = hook;
    py::gil_scoped_release nogil;
    s = train::resume(resume, ro);
  } else {
    o.model = train::build_model_config(f, o.seq_len);
    o.model.vocab_size = o.vocab_size;  // replaced by the tokenizer's size
    o.on_metrics = hook;
    py::gil_scoped_release nogil;
    if (overwrite) {  // as `moe train --overwrite`
      std::error_code ec;
      std::filesystem::remove_all(o.run_dir, ec);
      MOE_CHECK(!ec, "cannot remove '", o.run_dir, "': ", ec.message());
    }
    s = train::train(o);
  }
  return summary_dict(s, run_dir, stopped);
}

}  // namespace

void bind_train(py::module_& m) {
  m.def("train", &run_train, py::arg("options"), py::arg("resume") = "", py::arg("overwrite") = false,
        py::arg("threads") = 0, py::arg("callback") = py::none(),
        "Trains (or resumes) a run with the library's trainer; see moe_cpp.train.");
}

}  // namespace moe::python
