// pybind11 glue for the quantization math of cpp/include/paramkit/quant.hpp (array-level entry
// points used by paramkit.fake_quantize / quant_error on the cpu backend and by the tests), and the GGML
// block dequantizers of cpp/include/paramkit/ggml_blocks.hpp (array in, float32 values out).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "paramkit/ggml_blocks.hpp"
#include "paramkit/quant.hpp"
#include "kernels.hpp"
#include "result_records.hpp"   // sums_dict, checked_array_quant

namespace py = pybind11;
using namespace paramkit;

namespace {

// Validates the arguments and returns the float32 data of x (C-contiguous, rows*row_len values).
const float* checked_input(const py::array& x, int kind, int group, int64_t rows, int64_t row_len,
                           const py::object& tensor_absmax, QuantSpec& spec) {
  if (!py::isinstance<py::array_t<float>>(x) || x.dtype().kind() != 'f' || x.itemsize() != 4)
    throw py::type_error("x must be a float32 numpy array, got dtype " + std::string(py::str(x.dtype())));
  if (!(x.flags() & py::array::c_style)) throw py::type_error("x must be C-contiguous");
  spec = checked_array_quant(kind, group, rows, row_len, uint64_t(x.size()), tensor_absmax);
  return static_cast<const float*>(x.data());
}

// The loop over the whole array, as the reference shapes it; GIL released by the caller.
void run_all(QuantSpec spec, const float* x, int64_t rows, int64_t row_len, float* out, QuantSums& s) {
  int64_t numel = rows * row_len;
  if (numel == 0) return;
  if (quant_kind_needs_tensor_absmax(spec.kind)) {
    if (spec.tensor_absmax < 0) spec.tensor_absmax = quant_finite_absmax(x, numel);
    quant_group(spec, x, numel, out, s);
  } else if (spec.kind == Q_NF4) {
    quant_group(spec, x, numel, out, s);  // blocks over the flattened tensor
  } else {
    for (int64_t r = 0; r < rows; ++r)     // one channel, or one row of groups
      quant_group(spec, x + r * row_len, row_len, out ? out + r * row_len : nullptr, s);
  }
}

py::tuple fake_quantize(const py::array& x, int kind, int group, int64_t rows, int64_t row_len,
                        const py::object& tensor_absmax) {
  QuantSpec spec{};
  const float* px = checked_input(x, kind, group, rows, row_len, tensor_absmax, spec);
  std::vector<py::ssize_t> shape(x.shape(), x.shape() + x.ndim());
  py::array out(py::dtype::of<float>(), py::array::ShapeContainer(shape), py::array::StridesContainer{});
  float* po = static_cast<float*>(out.mutable_data());
  QuantSums s{};
  {
    py::gil_scoped_release nogil;
    run_all(spec, px, rows, row_len, po, s);
  }
  return py::make_tuple(out, sums_dict(s));
}

py::dict quant_error_sums(const py::array& x, int kind, int group, int64_t rows, int64_t row_len,
                          const py::object& tensor_absmax) {
  QuantSpec spec{};
  const float* px = checked_input(x, kind, group, rows, row_len, tensor_absmax, spec);
  QuantSums s{};
  {
    py::gil_scoped_release nogil;
    // the engine's kernel (AVX2 where the CPU has it, PARAMKIT_ISA=generic for the baseline), so
    // that the tests compare the vector code with fake_quantize's element-by-element sums
    uint64_t rl = uint64_t(row_len > 0 ? row_len : 1);
    if (quant_kind_needs_tensor_absmax(spec.kind) && spec.tensor_absmax < 0)
      spec.tensor_absmax = quant_finite_absmax(px, rows * row_len);
    select_kernels().quant(spec, rl, rl, px, uint64_t(rows * row_len), nullptr, s);
  }
  return sums_dict(s);
}

// The one merge of error sums (quant.hpp merge_quant_sums, used by the cpu and cuda engines) on two
// sums dicts, so that the tests can hold paramkit.quant.merge_error to the same rule.
QuantSums sums_of(const py::dict& d) {
  QuantSums s{};
  s.sse = d["sse"].cast<double>(); s.sum_w2 = d["sum_w2"].cast<double>();
  s.sum_q2 = d["sum_q2"].cast<double>(); s.sum_wq = d["sum_wq"].cast<double>();
  s.max_abs_err = d["max_abs_err"].cast<double>();
  s.n = d["n"].cast<uint64_t>(); s.nonfinite = d["nonfinite"].cast<uint64_t>();
  s.clipped = d["clipped"].cast<uint64_t>(); s.scale_clamped = d["scale_clamped"].cast<uint64_t>();
  return s;
}

py::dict merge_sums(const py::dict& a, const py::dict& b) {
  QuantSums s = sums_of(a);
  merge_quant_sums(s, sums_of(b));
  return sums_dict(s);
}

}  // namespace

// The float32 values of whole GGML blocks of type `ggml_type` (raw: their bytes, a uint8 array).
py::array_t<float> ggml_dequantize(const py::array_t<uint8_t, py::array::c_style>& raw, int ggml_type) {
  const GgmlBlock blk = ggml_block(ggml_type);
  const int be = blk.elements, bb = blk.bytes;
  if (be == 0) throw py::value_error("GGML type " + std::to_string(ggml_type) + " has no native dequantizer");
  const uint64_t n = uint64_t(raw.size());
  if (n % uint64_t(bb)) throw py::value_error(std::to_string(n) + " bytes are not whole " + std::to_string(bb) +
                                              "-byte blocks");
  const uint64_t blocks = n / uint64_t(bb);
  py::array_t<float> out(py::ssize_t(blocks * uint64_t(be)));
  const uint8_t* src = raw.data();
  float* dst = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    for (uint64_t b = 0; b < blocks; ++b) ggml_dequantize_block(ggml_type, src + b * bb, dst + b * be);
  }
  return out;
}

void register_quant(py::module_& m) {
  m.def("ggml_dequantize", &ggml_dequantize, py::arg("raw"), py::arg("ggml_type"),
        "float32 values of whole GGML blocks (raw: uint8 array of their bytes) of a type with a native "
        "dequantizer (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K, IQ4_NL, IQ4_XS, MXFP4); ValueError otherwise.");
  const char* args_doc =
      "x: float32 C-contiguous array of rows*row_len values (any shape, kept for the output). "
      "kind: QUANT_KINDS value. group: elements per group (32 for q8_0/q4_0, 64 for nf4, N for "
      "int*_gN; ignored otherwise). rows, row_len: the logical [rows, row_len] view (groups run "
      "along each row with a short last group; int8_channel: rows = shape[0], one scale per row; "
      "nf4: blocks over the flattened array; q8_0/q4_0: row_len % 32 == 0 or ValueError). "
      "tensor_absmax: finite max |x| of the whole tensor for int8_tensor / fp8_e4m3 (None: "
      "computed from x). The GIL is released during the loop.";
  m.def("fake_quantize", &fake_quantize, py::arg("x"), py::arg("kind"), py::arg("group"), py::arg("rows"),
        py::arg("row_len"), py::arg("tensor_absmax") = py::none(),
        (std::string("dequantize(quantize(x)) -> (float32 array of x's shape, error-sums dict), "
                     "bit-identical to paramkit.quant.fake_quantize. ") + args_doc).c_str());
  m.def("quant_error_sums", &quant_error_sums, py::arg("x"), py::arg("kind"), py::arg("group"),
        py::arg("rows"), py::arg("row_len"), py::arg("tensor_absmax") = py::none(),
        (std::string("The error-sums dict of fake_quantize without producing the values, computed by the engine's "
                     "kernel (the active ISA: vector lanes, so float64 sums may differ from fake_quantize's in the last bits). ") + args_doc).c_str());
  m.def("merge_quant_sums", &merge_sums, py::arg("a"), py::arg("b"),
        "The error-sums dict of two disjoint parts, merged by the engines' one merge (quant.hpp "
        "merge_quant_sums): counts and sums add, max_abs_err takes the max, a NaN winning.");
  py::dict kinds;
  for (int k = 0; k < Q_KIND_COUNT; ++k) kinds[quant_kind_name(k)] = k;
  m.attr("QUANT_KINDS") = kinds;
}
