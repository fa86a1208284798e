// moe_cpp._core: the engine from Python (pybind11). moe::Error becomes Python's ValueError with the
// engine's message; the Python-facing API is python/moe_cpp.
#include <pybind11/pybind11.h>

#include "moe/core/error.h"
#include "moe/core/parallel.h"
#include "python/bindings.h"

PYBIND11_MODULE(_core, m) {
  m.doc() = "moe.cpp engine bindings (use the moe_cpp package)";
  pybind11::register_exception<moe::Error>(m, "Error", PyExc_ValueError);
#ifdef MOE_VERSION
  m.attr("__version__") = MOE_VERSION;
#endif
  m.def("set_num_threads", &moe::set_num_threads, pybind11::arg("n"),
        "Threads of the engine's kernels (OpenMP); the default is MOE_NUM_THREADS when set, else all cores.");
  m.def("num_threads", &moe::num_threads, "Threads the engine's kernels use.");
  moe::python::bind_layer(m);
  moe::python::bind_engine(m);
}
