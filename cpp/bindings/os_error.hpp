// One translation of the engines' std::system_error into Python's OSError, shared by paramkit._core and
// paramkit._cuda: the error's own errno and message (PyErr_SetFromErrno would read the thread's errno, which
// is 0 or stale once the engine's worker threads have reported the failure).
#pragma once
#include <pybind11/pybind11.h>

#include <system_error>

namespace paramkit {

// Sets OSError(e.code().value(), e.what()) (Python picks the subclass, e.g. FileNotFoundError) and throws it.
[[noreturn]] inline void raise_os_error(const std::system_error& e) {
  PyObject* args = Py_BuildValue("(is)", e.code().value(), e.what());
  if (args) {
    PyErr_SetObject(PyExc_OSError, args);
    Py_DECREF(args);
  }
  throw pybind11::error_already_set();
}

}  // namespace paramkit
