// pybind11 glue of the safetensors header fast path (cpp/src/safetensors_header.cpp): header bytes in,
// columns out (numpy arrays, a list of names, the __metadata__ dict), or the reason it declined.
// python/paramkit/formats/safetensors.py decides what to do with either. Also the GGUF string-array walker
// (cpp/src/gguf_strings.hpp) that python/paramkit/formats/gguf_file.py calls on its read window, and the
// name-pattern pass (cpp/src/name_patterns.hpp) behind python/paramkit/counting/patterns.py's NamePatterns.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstring>
#include <string>
#include <vector>

#include "../src/gguf_strings.hpp"
#include "../src/name_patterns.hpp"
#include "../src/safetensors_header.hpp"

namespace py = pybind11;
using namespace paramkit;

namespace {

// The vector's buffer as a numpy array that owns it (no copy).
template <typename T>
py::array_t<T> to_array(std::vector<T>&& v) {
  auto* owned = new std::vector<T>(std::move(v));
  py::capsule base(owned, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return py::array_t<T>({py::ssize_t(owned->size())}, {py::ssize_t(sizeof(T))}, owned->data(), base);
}

// A new str of the decoded (valid UTF-8) string; nullptr with a Python error set on failure.
PyObject* to_str(const HeaderColumns& c, const char* raw, const HeaderString& h) {
  const char* p = h.decoded ? c.decoded.data() + h.off : raw + h.off;
  if (!h.ascii) return PyUnicode_DecodeUTF8(p, Py_ssize_t(h.len), "strict");
  PyObject* s = PyUnicode_New(Py_ssize_t(h.len), 127);
  if (s) std::memcpy(PyUnicode_1BYTE_DATA(s), p, h.len);
  return s;
}

py::str checked_str(const HeaderColumns& c, const char* raw, const HeaderString& h) {
  PyObject* s = to_str(c, raw, h);
  if (!s) throw py::error_already_set();
  return py::reinterpret_steal<py::str>(s);
}

// (names, dtype codes uint8, begin uint64, end uint64, ndim uint32, dims uint64, numel uint64, metadata dict)
// or, when the fast path declines the header, a str saying why and where.
py::object parse_header(const py::bytes& header, const py::sequence& dtypes) {
  std::vector<HeaderDtype> table;
  table.reserve(py::len(dtypes));
  for (py::handle d : dtypes) {
    auto pair = py::reinterpret_borrow<py::tuple>(d);
    table.push_back(HeaderDtype{pair[0].cast<std::string>(), pair[1].cast<unsigned>()});
  }
  char* raw = nullptr;
  Py_ssize_t n = 0;
  if (PyBytes_AsStringAndSize(header.ptr(), &raw, &n) != 0) throw py::error_already_set();
  HeaderColumns c;
  HeaderDecline r;
  {
    py::gil_scoped_release nogil;   // bytes are immutable and `header` holds a reference
    r = parse_safetensors_header(raw, size_t(n), table, c);
  }
  if (!r.reason.empty()) return py::str(r.reason + " at header byte " + std::to_string(r.pos));
  py::list names(c.names.size());
  for (size_t k = 0; k < c.names.size(); ++k) {
    PyObject* s = to_str(c, raw, c.names[k]);
    if (!s) throw py::error_already_set();
    PyList_SET_ITEM(names.ptr(), Py_ssize_t(k), s);
  }
  py::dict metadata;
  for (size_t k = 0; k < c.metadata.size(); k += 2)
    metadata[checked_str(c, raw, c.metadata[k])] = checked_str(c, raw, c.metadata[k + 1]);
  return py::make_tuple(names, to_array(std::move(c.dtype)), to_array(std::move(c.begin)), to_array(std::move(c.end)),
                        to_array(std::move(c.ndim)), to_array(std::move(c.dims)), to_array(std::move(c.numel)),
                        metadata);
}

// (strings walked, position after them) within the bytes-like `window`.
py::tuple walk_strings(const py::buffer& window, uint64_t pos, uint64_t count, bool big_endian) {
  py::buffer_info b = window.request();
  if (b.ndim != 1 || b.itemsize != 1) throw py::value_error("window must be a 1-D byte buffer");
  StringWalk w;
  {
    py::gil_scoped_release nogil;
    w = walk_gguf_strings(static_cast<const uint8_t*>(b.ptr), uint64_t(b.size), pos, count, big_endian);
  }
  return py::make_tuple(w.done, w.pos);
}

// NamePatterns' columns of a list of names: (code int64[n], patterns list[str], cuts [(pattern, cut)],
// masked digit positions per pattern, cum int64[n, width + 1]); None when a name is not an ASCII str without
// NUL and newline characters (the Python class then keeps digits literal).
py::object name_patterns_of(const py::list& names, int64_t max_masked) {
  std::vector<std::string_view> views;
  views.reserve(size_t(PyList_GET_SIZE(names.ptr())));
  for (py::handle h : names) {
    PyObject* s = h.ptr();
    if (!PyUnicode_CheckExact(s) || !PyUnicode_IS_ASCII(s)) return py::none();
    const char* p = reinterpret_cast<const char*>(PyUnicode_1BYTE_DATA(s));
    const size_t len = size_t(PyUnicode_GET_LENGTH(s));
    if (std::memchr(p, '\0', len) || std::memchr(p, '\n', len)) return py::none();
    views.emplace_back(p, len);
  }
  if (views.empty()) return py::none();
  NamePatternsOut out;
  name_patterns(views, max_masked, out);   // the list holds the names: the views stay valid
  py::list patterns;
  for (const auto& s : out.patterns) patterns.append(py::str(s.data(), s.size()));
  py::list cuts;
  for (const auto& c : out.cuts) cuts.append(py::make_tuple(c.first, c.second));
  py::list nul;
  for (const auto& v : out.nul) {
    py::list at;
    for (int64_t k : v) at.append(k);
    nul.append(at);
  }
  const py::ssize_t n = py::ssize_t(views.size()), w = py::ssize_t(out.width + 1);
  py::array_t<int64_t> cum({n, w});
  if (n * w) std::memcpy(cum.mutable_data(), out.cum.data(), size_t(n * w) * sizeof(int64_t));
  return py::make_tuple(to_array(std::move(out.code)), patterns, cuts, nul, out.width, cum);
}

}  // namespace

void register_header(py::module_& m) {
  m.def("name_patterns", &name_patterns_of, py::arg("names"), py::arg("max_masked"),
        "NamePatterns' pattern codes, patterns, refined patterns, masked digit positions and cumulative digit "
        "columns of a list of names (python/paramkit/counting/patterns.py is the specification), or None "
        "when a name is not ASCII or holds NUL or newline characters.");
  m.def("walk_gguf_strings", &walk_strings, py::arg("window"), py::arg("pos"), py::arg("count"),
        py::arg("big_endian"),
        "(strings walked, position after them): at most `count` GGUF strings (u64 length + bytes) of window[pos:], "
        "stopping before the first that does not lie wholly inside the window.");
  m.def("parse_safetensors_header", &parse_header, py::arg("header"), py::arg("dtypes"),
        "Columns of a safetensors header (the JSON bytes after the 8-byte length) whose entries all pass the "
        "reader's per-tensor rules, or a str saying why the fast path declined it. dtypes: (name, bits) pairs; "
        "the codes index them.");
}
