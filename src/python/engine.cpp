// moe_cpp._core engine bindings: filled in by the engine part of the package.
#include "python/bindings.h"

namespace moe::python {

void bind_engine(pybind11::module_& /*m*/) {}

}  // namespace moe::python
