// make_instances: many instances of a plain Python class from columns, in C (issue 13: a 100,000-tensor
// table's TensorInfo / TensorReport objects). python/paramkit/table.py's record_maker uses it only after
// checking, on a probe row, that it builds exactly what the class's constructor builds.
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

namespace py = pybind11;

namespace {

// [cls.__new__ + object.__setattr__(obj, names[j], columns[j][i]) for each j, for each i]: what a dataclass
// __init__ (frozen or not) does, without running Python code per attribute.
py::list make_instances(const py::type& cls, const py::tuple& names, const py::tuple& columns) {
  auto* tp = reinterpret_cast<PyTypeObject*>(cls.ptr());
  if (tp->tp_new != PyBaseObject_Type.tp_new || tp->tp_itemsize != 0)
    throw py::type_error(std::string("make_instances: ") + tp->tp_name + " has its own __new__ or variable size");
  const size_t k = names.size();
  if (columns.size() != k) throw py::value_error("make_instances: one column per name");
  std::vector<PyObject*> keys(k), cols(k);
  Py_ssize_t n = -1;
  for (size_t j = 0; j < k; ++j) {
    PyObject* name = names[j].ptr();
    PyObject* col = columns[j].ptr();
    if (!PyUnicode_CheckExact(name) || !PyList_CheckExact(col))
      throw py::type_error("make_instances: names must be str and columns lists");
    if (n < 0) n = PyList_GET_SIZE(col);
    if (PyList_GET_SIZE(col) != n) throw py::value_error("make_instances: columns of different lengths");
    keys[j] = name;
    cols[j] = col;
  }
  if (n < 0) n = 0;
  py::list out(n);
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* obj = tp->tp_alloc(tp, 0);
    if (!obj) throw py::error_already_set();
    PyList_SET_ITEM(out.ptr(), i, obj);   // owned by the list from here on
    for (size_t j = 0; j < k; ++j)
      if (PyObject_GenericSetAttr(obj, keys[j], PyList_GET_ITEM(cols[j], i)) < 0) throw py::error_already_set();
  }
  return out;
}

}  // namespace

void register_records(py::module_& m) {
  m.def("make_instances", &make_instances, py::arg("cls"), py::arg("names"), py::arg("columns"),
        "Instances of cls (object.__new__, then object.__setattr__(obj, names[j], columns[j][i])), one per row of "
        "the columns (lists of equal length).");
}
