// moe_cpp._core engine bindings: tokenizers, models loaded for inference, step-wise generation and
// evaluation (the training run is engine_train.cpp). The Python-facing API is python/moe_cpp/engine.py,
// which checks argument types; this file calls the library as `moe generate` / `moe eval` do.
//
// Threads: every compute call releases the GIL; a model's calls are serialised by its own mutex
// (taken after the GIL is released, so two Python threads sharing a model never deadlock).
#include <pybind11/stl.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "moe/core/error.h"
#include "moe/core/parallel.h"
#include "moe/infer/evaluate.h"
#include "moe/infer/expert_store.h"
#include "moe/infer/generate.h"
#include "moe/infer/model_dir.h"
#include "moe/model/gguf_model.h"
#include "moe/text/tokenizer.h"
#include "moe/train/data.h"
#include "python/bindings.h"

namespace moe::python {

namespace py = pybind11;

void bind_train(py::module_& m);  // engine_train.cpp

namespace {

// Text the engine made (possibly cut inside a UTF-8 sequence) as a Python str, bad bytes as U+FFFD.
py::str utf8(const std::string& s) {
  PyObject* o = PyUnicode_DecodeUTF8(s.data(), static_cast<Py_ssize_t>(s.size()), "replace");
  if (o == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::str>(o);
}

// Arguments of the Tokenizer's methods, which Python code calls directly: a wrong type is moe::Error
// (moe_cpp.Error) naming the argument, as everywhere in the package, not pybind11's TypeError.
std::string type_name(const py::handle& v) { return py::str(py::type::of(v).attr("__name__")); }

std::string str_arg(const py::handle& v, const char* what) {
  MOE_CHECK(py::isinstance<py::str>(v), "tokenizer: ", what, " must be a str, got ", type_name(v));
  return v.cast<std::string>();
}

int32_t id_arg(const py::handle& v, const char* what) {
  MOE_CHECK(py::isinstance<py::int_>(v) && !py::isinstance<py::bool_>(v), "tokenizer: ", what,
            " must be an int, got ", type_name(v));
  int64_t id = -1;
  try {
    id = v.cast<int64_t>();
  } catch (const py::cast_error&) {  // beyond int64
    id = -1;
  }
  MOE_CHECK(id >= 0 && id <= std::numeric_limits<int32_t>::max(), "tokenizer: ", what, " = ",
            std::string(py::str(v)), " is not a token id");
  return static_cast<int32_t>(id);
}

std::vector<int32_t> ids_arg(const py::handle& v, const char* what) {
  MOE_CHECK(py::isinstance<py::sequence>(v) && !py::isinstance<py::str>(v) && !py::isinstance<py::bytes>(v),
            "tokenizer: ", what, " must be a list of token ids, got ", type_name(v));
  std::vector<int32_t> ids;
  for (const py::handle& x : v) ids.push_back(id_arg(x, what));
  return ids;
}

py::object id_or_none(int32_t id) { return id >= 0 ? py::object(py::int_(id)) : py::object(py::none()); }

// A tokenizer.json, a GGUF file with tokenizer metadata, or a model / run directory holding one.
text::Tokenizer tokenizer_from_file(const std::string& path) {
  namespace fs = std::filesystem;
  MOE_CHECK(fs::exists(path), "tokenizer: '", path, "' does not exist");
  std::string file = path;
  if (fs::is_directory(path) || model::is_gguf_path(path)) {
    file = model::is_gguf_path(path) ? path : infer::find_tokenizer(infer::resolve_model_dir(path));
    if (file.empty() && fs::is_directory(path)) file = infer::find_tokenizer(path);
    MOE_CHECK(!file.empty(), "tokenizer: no tokenizer.json (or GGUF tokenizer metadata) in '", path, "'");
  }
  return infer::load_tokenizer(file);
}

// A model loaded for inference (infer::load_inference_model, as `moe generate --model` loads it),
// with its tokenizer when one lies next to it. Shared by the Python Model and its open streams.
struct LoadedModel {
  infer::InferenceModel im;
  std::optional<text::Tokenizer> tok;
  std::string path;
  std::mutex mu;  // one compute call at a time
  const model::Transformer& m() const { return *im.model; }
};

struct LoadArgs {
  std::string path, dtype;
  int threads = 0;
  double skip_threshold = 0;
  double router_top_p = -1;  // adaptive-k routing (-1: the model's own)
};

std::shared_ptr<LoadedModel> load_model(const LoadArgs& a) {
  MOE_CHECK(a.threads >= 0 && a.threads <= kMaxThreadCount, "load: threads must be in [0, ", kMaxThreadCount,
            "], got ", a.threads);
  MOE_CHECK(std::isfinite(a.skip_threshold) && a.skip_threshold >= 0,
            "load: skip_threshold must be >= 0, got ", a.skip_threshold);
  infer::InferenceLoadOptions o;
  if (a.dtype == "bf16" || a.dtype == "w8a8" || a.dtype == "w4a8")
    o.bf16 = true, o.linear_format = a.dtype == "bf16" ? "bf16" : a.dtype;
  else
    MOE_CHECK(a.dtype == "f32", "load: dtype must be 'f32', 'bf16', 'w8a8' or 'w4a8', got '", a.dtype, "'");
  if (a.threads > 0) set_num_threads(a.threads);
  auto lm = std::make_shared<LoadedModel>();
  lm->path = infer::resolve_model_dir(a.path);
  lm->im = infer::load_inference_model(lm->path, o);
  lm->im.model->set_expert_skip_threshold(a.skip_threshold);
  if (a.router_top_p >= 0) {
    MOE_CHECK(a.router_top_p <= 1, "load: router_top_p must be in [0, 1], got ", a.router_top_p);
    lm->im.model->set_router_top_p(a.router_top_p);
  }
  if (const std::string tp = infer::find_tokenizer(lm->path); !tp.empty())
    lm->tok = infer::load_tokenizer(tp);
  return lm;
}

// Sampling and stopping options of one generation (keyword arguments of Model.generate/stream).
struct GenArgs {
  int64_t max_new_tokens = 64;
  infer::SamplingOptions sampling;
  bool stop_at_eos = true;
  int32_t eos_id = -1;  // -1: the tokenizer's, else the config's
};

// One generation pulled token by token (infer::Generator); holds its model alive. Like a Python
// generator, one stream is for one thread (its properties read the state without the model's lock).
class Stream {
 public:
  Stream(std::shared_ptr<LoadedModel> lm, std::vector<int32_t> prompt, const GenArgs& a)
      : lm_(std::move(lm)) {
    const model::Transformer& m = lm_->m();
    const int64_t V = m.config().vocab_size;
    for (size_t i = 0; i < prompt.size(); ++i)
      MOE_CHECK(prompt[i] >= 0 && prompt[i] < V, "generate: prompt token ", i, " = ", prompt[i],
                " is outside the vocabulary [0, ", V, ")");
    infer::GenerateOptions opt;
    opt.max_new_tokens = a.max_new_tokens;
    opt.sampling = a.sampling;
    opt.eos_id = !a.stop_at_eos  ? -1
                 : a.eos_id >= 0 ? a.eos_id
                 : lm_->tok      ? lm_->tok->eos_id()
                                 : m.config().eos_token_id;
    py::gil_scoped_release nogil;
    const std::lock_guard<std::mutex> lock(lm_->mu);
    gen_ = std::make_unique<infer::Generator>(m, std::move(prompt), opt);  // the prefill
  }

  // The next token id; StopIteration once finished.
  int32_t next() {
    std::optional<int32_t> t;
    {
      py::gil_scoped_release nogil;
      const std::lock_guard<std::mutex> lock(lm_->mu);
      t = gen_->next();
    }
    if (!t) throw py::stop_iteration();
    return *t;
  }

  void close() {
    py::gil_scoped_release nogil;
    const std::lock_guard<std::mutex> lock(lm_->mu);
    if (!gen_->done()) gen_->stop();
  }
  const infer::Generator& gen() const { return *gen_; }

 private:
  std::shared_ptr<LoadedModel> lm_;
  std::unique_ptr<infer::Generator> gen_;
};

// The prompt ids of a text as `moe generate` makes them: the post-processor's special tokens added,
// and an empty prompt started from the end-of-text token.
std::vector<int32_t> prompt_ids(const LoadedModel& lm, const std::string& text) {
  MOE_CHECK(lm.tok, "generate: a text prompt needs a tokenizer, and there is none next to '", lm.path,
            "'; give token ids");
  const text::Tokenizer& tok = *lm.tok;
  MOE_CHECK(tok.vocab_size() <= lm.m().config().vocab_size, "generate: the tokenizer has ", tok.vocab_size(),
            " tokens but the model only ", lm.m().config().vocab_size);
  std::vector<int32_t> ids = tok.encode(text, {.add_special_tokens = true});
  if (ids.empty()) {
    MOE_CHECK(tok.eos_id() >= 0,
              "generate: empty prompt and the tokenizer has no end-of-text token to start from");
    ids.push_back(tok.eos_id());  // start a new document
  }
  return ids;
}

struct EvalArgs {
  int64_t seq_len = 0;  // 0: min(context, 512), as `moe eval`
  int64_t batch = 8;
};

// Loss, perplexity, token count and mean k of `moe eval --json` (and skipped_share with a skip threshold).
py::dict eval_tokens(LoadedModel& lm, const std::vector<int32_t>& toks, const EvalArgs& a) {
  const model::Transformer& m = lm.m();
  const int64_t S = a.seq_len > 0 ? a.seq_len : std::min<int64_t>(m.config().max_position_embeddings, 512);
  infer::EvalResult r;
  {
    py::gil_scoped_release nogil;
    const std::lock_guard<std::mutex> lock(lm.mu);
    r = infer::evaluate_tokens(m, toks, S, a.batch);
  }
  py::dict d;
  d["loss"] = r.loss();
  d["ppl"] = std::exp(r.loss());
  d["tokens"] = r.tokens;
  d["skipped_share"] = static_cast<double>(r.skipped) / static_cast<double>(std::max<int64_t>(r.routed, 1));
  if (!r.routed_per_layer.empty()) {
    d["mean_k"] = r.mean_k();
    std::vector<double> per_layer;
    for (size_t l = 0; l < r.routed_per_layer.size(); ++l) per_layer.push_back(r.mean_k(l));
    d["mean_k_per_layer"] = per_layer;
  }
  return d;
}

// The ids of `text` (or, from_file, of the text file or directory it names) with the model's
// tokenizer, as `moe eval --data` encodes them (no special tokens).
std::vector<int32_t> eval_ids(const LoadedModel& lm, const std::string& text, bool from_file) {
  MOE_CHECK(lm.tok, "eval: text needs a tokenizer, and there is none next to '", lm.path,
            "'; give token ids");
  py::gil_scoped_release nogil;
  return lm.tok->encode(from_file ? train::read_text_corpus(text) : text);
}

void bind_tokenizer(py::module_& m) {
  py::class_<text::Tokenizer>(m, "Tokenizer", "A BPE tokenizer (tokenizer.json pipelines, or trained here).")
      .def_static(
          "from_file",
          [](const py::object& path) {
            MOE_CHECK(py::isinstance<py::str>(path) || py::hasattr(path, "__fspath__"),
                      "tokenizer: path must be a str or os.PathLike, got ", type_name(path));
            const std::string p = py::str(py::module_::import("os").attr("fspath")(path));
            py::gil_scoped_release nogil;
            return tokenizer_from_file(p);
          },
          py::arg("path"),
          "A tokenizer.json, a .gguf file's tokenizer, or the one of a model / run directory.")
      .def_static(
          "train_bpe",
          [](const std::string& text, int32_t vocab_size) {
            py::gil_scoped_release nogil;
            return text::Tokenizer::train_bpe(text, vocab_size);
          },
          py::arg("text"), py::arg("vocab_size"), "Byte-level BPE learned from text (as `moe train` does).")
      .def(
          "encode",
          [](const text::Tokenizer& t, const py::object& text, bool special) {
            const std::string s = str_arg(text, "text");
            py::gil_scoped_release nogil;
            return t.encode(s, {.add_special_tokens = special});
          },
          py::arg("text"), py::arg("add_special_tokens") = false)
      .def(
          "decode",
          [](const text::Tokenizer& t, const py::object& ids) { return utf8(t.decode(ids_arg(ids, "ids"))); },
          py::arg("ids"))
      .def(
          "token_bytes",
          [](const text::Tokenizer& t, const py::object& id) {
            return py::bytes(t.token_bytes(id_arg(id, "id")));
          },
          py::arg("id"), "The bytes one token stands for (for streaming output).")
      .def(
          "token_id",
          [](const text::Tokenizer& t, const py::object& s) {
            return id_or_none(t.token_id(str_arg(s, "token")));
          },
          py::arg("token"))
      .def("save", &text::Tokenizer::save, py::arg("path"))
      .def_property_readonly("vocab_size", &text::Tokenizer::vocab_size)
      .def("__len__", &text::Tokenizer::vocab_size)
      .def_property_readonly("eos_id", [](const text::Tokenizer& t) { return id_or_none(t.eos_id()); })
      .def_property_readonly("bos_id", [](const text::Tokenizer& t) { return id_or_none(t.bos_id()); });
}

void bind_model(py::module_& m) {
  py::class_<Stream, std::shared_ptr<Stream>>(m, "Stream", "One generation, token by token.")
      .def("__iter__", [](const std::shared_ptr<Stream>& s) { return s; })
      .def("__next__", &Stream::next)
      .def("close", &Stream::close, "Stops the generation (finish_reason 'stopped').")
      .def_property_readonly("done", [](const Stream& s) { return s.gen().done(); })
      .def_property_readonly("finish_reason", [](const Stream& s) { return s.gen().finish_reason(); })
      .def_property_readonly("tokens", [](const Stream& s) { return s.gen().result().tokens; })
      .def_property_readonly("prompt", [](const Stream& s) { return s.gen().prompt(); })
      .def_property_readonly("prefill_s", [](const Stream& s) { return s.gen().result().prefill_s; })
      .def_property_readonly("decode_s", [](const Stream& s) { return s.gen().result().decode_s; });

  py::class_<LoadedModel, std::shared_ptr<LoadedModel>>(m, "Model", "A model loaded for inference.")
      .def_property_readonly("path", [](const LoadedModel& lm) { return lm.path; })
      .def_property_readonly("config_json",
                             [](const LoadedModel& lm) { return model::to_json(lm.m().config()); })
      .def_property_readonly("tokenizer", [](const LoadedModel& lm) { return lm.tok; })
      .def_property_readonly("bf16", [](const LoadedModel& lm) { return lm.m().bf16_inference(); })
      .def("prompt_ids", &prompt_ids, py::arg("text"))
      .def(
          "stream",
          [](const std::shared_ptr<LoadedModel>& lm, std::vector<int32_t> prompt, const GenArgs& a) {
            return std::make_shared<Stream>(lm, std::move(prompt), a);
          },
          py::arg("prompt"), py::arg("options"))
      .def("eval_tokens", &eval_tokens, py::arg("tokens"), py::arg("options"))
      .def("eval_ids", &eval_ids, py::arg("text"), py::arg("from_file") = false);

  py::class_<GenArgs>(m, "GenerateOptions")
      .def(py::init<>())
      .def_readwrite("max_new_tokens", &GenArgs::max_new_tokens)
      .def_readwrite("stop_at_eos", &GenArgs::stop_at_eos)
      .def_readwrite("eos_id", &GenArgs::eos_id)
      .def_property(
          "temperature", [](const GenArgs& a) { return a.sampling.temperature; },
          [](GenArgs& a, double v) { a.sampling.temperature = v; })
      .def_property(
          "top_p", [](const GenArgs& a) { return a.sampling.top_p; },
          [](GenArgs& a, double v) { a.sampling.top_p = v; })
      .def_property(
          "top_k", [](const GenArgs& a) { return a.sampling.top_k; },
          [](GenArgs& a, int64_t v) { a.sampling.top_k = v; })
      .def_property(
          "seed", [](const GenArgs& a) { return a.sampling.seed; },
          [](GenArgs& a, uint64_t v) { a.sampling.seed = v; })
      .def_property(
          "repetition_penalty", [](const GenArgs& a) { return a.sampling.repetition_penalty; },
          [](GenArgs& a, double v) { a.sampling.repetition_penalty = v; })
      .def_property(
          "frequency_penalty", [](const GenArgs& a) { return a.sampling.frequency_penalty; },
          [](GenArgs& a, double v) { a.sampling.frequency_penalty = v; })
      .def_property(
          "presence_penalty", [](const GenArgs& a) { return a.sampling.presence_penalty; },
          [](GenArgs& a, double v) { a.sampling.presence_penalty = v; });

  py::class_<EvalArgs>(m, "EvalOptions")
      .def(py::init<>())
      .def_readwrite("seq_len", &EvalArgs::seq_len)
      .def_readwrite("batch", &EvalArgs::batch);

  m.def(
      "load_model",
      [](const std::string& path, const std::string& dtype, int threads, double skip_threshold,
         double router_top_p) {
        const LoadArgs a{path, dtype, threads, skip_threshold, router_top_p};
        py::gil_scoped_release nogil;
        return load_model(a);
      },
      py::arg("path"), py::arg("dtype") = "f32", py::arg("threads") = 0, py::arg("skip_threshold") = 0.0,
      py::arg("router_top_p") = -1.0);
}

}  // namespace

void bind_engine(py::module_& m) {
  bind_tokenizer(m);
  bind_model(m);
  bind_train(m);
}

}  // namespace moe::python
