// DLPack in one place for paramkit._core and paramkit._cuda (host C++17, no CUDA headers): the ABI structs,
// a reader that views a "dltensor"/"dltensor_versioned" capsule without consuming it, and a capsule maker.
#pragma once
#include <pybind11/pybind11.h>

#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "paramkit/dtype.hpp"

namespace paramkit {
namespace dlpack {

// ---- the DLPack ABI ------------------------------------------------------------------------------
// Declared from the DLPack specification rather than vendoring dlpack.h: C API (dlpack.h v1.1)
// https://dmlc.github.io/dlpack/latest/c_api.html and the Python protocol (capsule names, ownership)
// https://dmlc.github.io/dlpack/latest/python_spec.html. Only the fields' layout matters (C ABI).

struct DLPackVersion { uint32_t major; uint32_t minor; };
struct DLDevice { int32_t device_type; int32_t device_id; };
struct DLDataType { uint8_t code; uint8_t bits; uint16_t lanes; };
struct DLTensor {
  void* data;            // with byte_offset: the first element (device pointer for CUDA)
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;        // ndim entries
  int64_t* strides;      // in elements; nullptr = compact row-major
  uint64_t byte_offset;
};
// legacy (DLPack < 1.0) managed tensor, capsule name "dltensor"
struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor* self);
};
// DLPack >= 1.0, capsule name "dltensor_versioned"; `version` comes first so that any version can be checked
struct DLManagedTensorVersioned {
  DLPackVersion version;
  void* manager_ctx;
  void (*deleter)(DLManagedTensorVersioned* self);
  uint64_t flags;
  DLTensor dl_tensor;
};
constexpr uint64_t kFlagReadOnly = 1ull << 0, kFlagIsCopied = 1ull << 1, kFlagSubbytePadded = 1ull << 2;

// DLDataTypeCode
constexpr int kDLInt = 0, kDLUInt = 1, kDLFloat = 2, kDLOpaqueHandle = 3, kDLBfloat = 4, kDLComplex = 5,
              kDLBool = 6, kDLFloat8_e3m4 = 7, kDLFloat8_e4m3 = 8, kDLFloat8_e4m3b11fnuz = 9,
              kDLFloat8_e4m3fn = 10, kDLFloat8_e4m3fnuz = 11, kDLFloat8_e5m2 = 12, kDLFloat8_e5m2fnuz = 13,
              kDLFloat8_e8m0fnu = 14, kDLFloat6_e2m3fn = 15, kDLFloat6_e3m2fn = 16, kDLFloat4_e2m1fn = 17;
// DLDeviceType (the ones paramkit reads)
constexpr int kCPU = 1, kCUDA = 2, kCUDAHost = 3, kCUDAManaged = 13;

// ---- what a capsule holds ------------------------------------------------------------------------
struct View {
  void* data = nullptr;          // DLTensor::data + byte_offset
  int device_type = 0, device_id = 0;
  int dtype = -1;                // paramkit::DType id (cpp/include/paramkit/dtype.hpp), -1 when unsupported
  int code = 0, bits = 0, lanes = 0;   // the raw DLDataType
  std::vector<int64_t> shape;
  uint64_t numel = 0, nbytes = 0;
  bool readonly = false;
};

// paramkit dtype id of a DLDataType with lanes == 1, or -1.
inline int dtype_id(int code, int bits) {
  switch (code) {
    case kDLFloat: return bits == 64 ? F64 : bits == 32 ? F32 : bits == 16 ? F16 : -1;
    case kDLBfloat: return bits == 16 ? BF16 : -1;
    case kDLFloat8_e4m3fn: return bits == 8 ? F8_E4M3 : -1;
    case kDLFloat8_e5m2: return bits == 8 ? F8_E5M2 : -1;
    case kDLInt: return bits == 8 ? I8 : bits == 16 ? I16 : bits == 32 ? I32 : bits == 64 ? I64 : -1;
    case kDLUInt: return bits == 8 ? U8 : bits == 16 ? U16 : bits == 32 ? U32 : bits == 64 ? U64 : -1;
    case kDLBool: return bits == 8 ? BOOL : -1;
  }
  return -1;
}

// The DLDataType of a paramkit dtype id in [0, DTYPE_COUNT) (the caller checks the range).
inline DLDataType dl_dtype(int dtype) {
  static const uint8_t code[DTYPE_COUNT] = {kDLFloat, kDLFloat, kDLFloat, kDLBfloat, kDLFloat8_e4m3fn,
                                            kDLFloat8_e5m2, kDLInt, kDLUInt, kDLInt, kDLUInt, kDLInt, kDLUInt,
                                            kDLInt, kDLUInt, kDLBool};
  return DLDataType{code[dtype], uint8_t(8 * dtype_size(dtype)), 1};
}

namespace detail {

inline const char* code_name(int code) {
  static const char* names[] = {"int", "uint", "float", "opaque handle", "bfloat", "complex", "bool",
                                "float8_e3m4", "float8_e4m3", "float8_e4m3b11fnuz", "float8_e4m3fn",
                                "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "float8_e8m0fnu",
                                "float6_e2m3fn", "float6_e3m2fn", "float4_e2m1fn"};
  return code >= 0 && code < int(sizeof(names) / sizeof(names[0])) ? names[code] : "unknown";
}

inline std::string dims(const int64_t* d, int n) {
  std::string s = "[";
  for (int k = 0; k < n; ++k) s += (k ? ", " : "") + std::to_string(d[k]);
  return s + "]";
}

inline const DLTensor& open(const pybind11::capsule& cap, bool& readonly) {
  PyObject* o = cap.ptr();
  const char* name = PyCapsule_GetName(o);
  if (!name && PyErr_Occurred()) throw pybind11::error_already_set();
  std::string n = name ? name : "";
  void* p = nullptr;
  readonly = false;
  if (n == "dltensor" || n == "dltensor_versioned") {
    p = PyCapsule_GetPointer(o, name);
    if (!p) {
      if (PyErr_Occurred()) throw pybind11::error_already_set();
      throw pybind11::value_error("DLPack capsule '" + n + "' holds a null pointer");
    }
  } else if (n == "used_dltensor" || n == "used_dltensor_versioned") {
    throw pybind11::value_error("DLPack capsule already consumed (its name is '" + n +
                                "'): a capsule can be imported only once; call __dlpack__() again for a new one");
  } else {
    throw pybind11::value_error("not a DLPack capsule: its name is " + (name ? "'" + n + "'" : std::string("NULL")) +
                                ", expected 'dltensor' or 'dltensor_versioned'");
  }
  if (n == "dltensor") return static_cast<DLManagedTensor*>(p)->dl_tensor;
  auto* mv = static_cast<DLManagedTensorVersioned*>(p);
  if (mv->version.major > 1)
    throw pybind11::value_error("DLPack capsule of version " + std::to_string(mv->version.major) + "." +
                                std::to_string(mv->version.minor) + ": paramkit reads DLPack 1.x");
  readonly = (mv->flags & kFlagReadOnly) != 0;
  return mv->dl_tensor;
}

}  // namespace detail

// Reads a "dltensor" or "dltensor_versioned" capsule WITHOUT consuming it (name unchanged, deleter not
// called; the caller keeps the capsule alive while it uses data). Raises value_error for structural
// problems (wrong or consumed capsule, null pointers, negative dims, size overflow, non-C-contiguous
// strides, DLPack major version > 1) and type_error for dtypes paramkit has no id for (lanes != 1,
// complex, fp8 other than e4m3fn/e5m2, odd bit widths).
inline View view(const pybind11::capsule& cap) {
  bool readonly = false;
  const DLTensor& t = detail::open(cap, readonly);
  View v;
  v.readonly = readonly;
  v.device_type = t.device.device_type;
  v.device_id = t.device.device_id;
  v.code = t.dtype.code; v.bits = t.dtype.bits; v.lanes = t.dtype.lanes;
  const std::string dt = std::string(detail::code_name(v.code)) + " (code " + std::to_string(v.code) + ", bits " +
                         std::to_string(v.bits) + ", lanes " + std::to_string(v.lanes) + ")";
  if (v.lanes != 1) throw pybind11::type_error("DLPack dtype " + dt + ": vector dtypes (lanes != 1) are not supported");
  v.dtype = dtype_id(v.code, v.bits);
  if (v.dtype < 0)
    throw pybind11::type_error("DLPack dtype " + dt + " has no paramkit dtype (supported: float 16/32/64, bfloat16, "
                               "float8_e4m3fn, float8_e5m2, int/uint 8/16/32/64, bool)");
  if (t.ndim < 0) throw pybind11::value_error("DLPack tensor with ndim " + std::to_string(t.ndim));
  if (t.ndim > 0 && !t.shape) throw pybind11::value_error("DLPack tensor with a null shape pointer");
  v.shape.assign(t.shape, t.shape + t.ndim);
  bool empty = false;
  for (int64_t d : v.shape) {
    if (d < 0)
      throw pybind11::value_error("DLPack tensor with a negative dimension: shape " + detail::dims(t.shape, t.ndim));
    empty |= d == 0;
  }
  const uint64_t es = uint64_t(dtype_size(v.dtype));
  const uint64_t limit = uint64_t(std::numeric_limits<int64_t>::max()) / es;
  uint64_t numel = empty ? 0 : 1;
  for (int64_t d : v.shape)
    if (!empty) {
      if (uint64_t(d) > limit / numel)
        throw pybind11::value_error("DLPack tensor too large: shape " + detail::dims(t.shape, t.ndim) + " overflows");
      numel *= uint64_t(d);
    }
  v.numel = numel;
  v.nbytes = numel * es;
  if (t.strides && numel > 1) {
    int64_t expect = 1;
    for (int k = t.ndim - 1; k >= 0; --k) {
      if (t.shape[k] != 1 && t.strides[k] != expect)
        throw pybind11::value_error("DLPack tensor is not C-contiguous (shape " + detail::dims(t.shape, t.ndim) +
                                    ", strides " + detail::dims(t.strides, t.ndim) +
                                    " in elements); make it contiguous first (e.g. .contiguous())");
      expect *= t.shape[k];
    }
  }
  if (numel && !t.data)
    throw pybind11::value_error("DLPack tensor of " + std::to_string(numel) + " elements with a null data pointer");
  v.data = t.data ? static_cast<void*>(static_cast<char*>(t.data) + t.byte_offset) : nullptr;
  return v;
}

namespace detail {

// manager_ctx of the capsules make_capsule() creates: owns the shape/strides and, through free_fn, the data
struct Owned {
  DLManagedTensor managed{};
  std::vector<int64_t> shape, strides;
  void* data = nullptr;
  void (*free_fn)(void*) = nullptr;
};

inline void owned_deleter(DLManagedTensor* self) {
  auto* o = static_cast<Owned*>(self->manager_ctx);
  if (o->free_fn && o->data) o->free_fn(o->data);
  delete o;
}

// The spec's capsule destructor: a capsule still named "dltensor" was never consumed and owns the tensor;
// a consumer that renamed it to "used_dltensor" calls the deleter itself.
inline void capsule_destructor(PyObject* cap) {
  if (!PyCapsule_IsValid(cap, "dltensor")) return;
  pybind11::error_scope keep;   // a pending exception survives the destructor
  auto* m = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(cap, "dltensor"));
  if (m && m->deleter) m->deleter(m);
}

}  // namespace detail

// A new legacy "dltensor" capsule owning `data` (device or host memory; row-major, strides filled in) of
// paramkit dtype `dtype` and `shape`. The DLManagedTensor deleter calls free_fn(data) (free_fn may be nullptr:
// nothing to free) and frees its context; the capsule destructor calls the deleter only while the capsule is
// still named "dltensor". Ownership of `data` passes to make_capsule at the call: when it throws (bad dtype id,
// negative dimension, out of memory) it has already called free_fn(data), so the caller never frees it.
inline pybind11::capsule make_capsule(void* data, int device_type, int device_id, int dtype,
                                      const std::vector<int64_t>& shape, void (*free_fn)(void*)) {
  struct Guard {
    void* data; void (*free_fn)(void*);
    ~Guard() { if (data && free_fn) free_fn(data); }
  } guard{data, free_fn};
  if (dtype < 0 || dtype >= DTYPE_COUNT)
    throw pybind11::value_error("make_capsule: bad paramkit dtype id " + std::to_string(dtype));
  for (int64_t d : shape)
    if (d < 0)
      throw pybind11::value_error("make_capsule: negative dimension in shape " + detail::dims(shape.data(), int(shape.size())));
  auto o = std::make_unique<detail::Owned>();
  o->shape = shape;
  o->strides.resize(shape.size());
  for (int64_t k = int64_t(shape.size()) - 1, s = 1; k >= 0; --k) { o->strides[size_t(k)] = s; s *= shape[size_t(k)]; }
  o->data = data;
  o->free_fn = free_fn;
  DLTensor& t = o->managed.dl_tensor;
  t.data = data;
  t.device = DLDevice{int32_t(device_type), int32_t(device_id)};
  t.ndim = int32_t(shape.size());
  t.dtype = dl_dtype(dtype);
  t.shape = o->shape.data();
  t.strides = o->strides.data();
  t.byte_offset = 0;
  o->managed.manager_ctx = o.get();
  o->managed.deleter = detail::owned_deleter;
  PyObject* cap = PyCapsule_New(&o->managed, "dltensor", detail::capsule_destructor);
  if (!cap) throw pybind11::error_already_set();   // o and guard free everything
  o.release();
  guard.data = nullptr;
  return pybind11::reinterpret_steal<pybind11::capsule>(cap);
}

}  // namespace dlpack
}  // namespace paramkit
