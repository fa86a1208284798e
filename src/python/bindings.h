// The parts of the moe_cpp._core Python module (src/python/module.cpp).
#pragma once

#include <pybind11/pybind11.h>

namespace moe::python {

void bind_layer(pybind11::module_& m);   // layer.cpp: Layer, Forward
void bind_engine(pybind11::module_& m);  // engine.cpp: models, tokenizers, generation, training

}  // namespace moe::python
