// Fast path of the safetensors header reader (issue 13): parses the header JSON straight into columns.
// It accepts only headers that python/paramkit/formats/safetensors.py accepts too, and gives the same
// tensors; on anything else (an error, or valid JSON it does not handle) it declines, and the Python
// reader runs and raises the exact FormatError. No Python here: header_bindings.cpp makes the objects.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace paramkit {

// A JSON string of the header, decoded: bytes [off, off + len) of the raw header (no escapes) or of
// HeaderColumns::decoded (it had escapes); valid UTF-8 either way.
struct HeaderString {
  uint32_t off = 0;       // headers are < 4 GiB (parse_safetensors_header declines larger ones)
  uint32_t len = 0;
  bool decoded = false;   // bytes live in HeaderColumns::decoded
  bool ascii = true;      // every byte < 0x80
};

struct HeaderColumns {
  std::vector<HeaderString> names;      // tensor names, header order
  std::vector<uint8_t> dtype;           // index into the dtype table given to parse_safetensors_header
  std::vector<uint64_t> begin, end;     // data_offsets, relative to the data buffer
  std::vector<uint32_t> ndim;           // len(shape)
  std::vector<uint64_t> dims;           // the shapes, concatenated
  std::vector<uint64_t> numel;          // product of the shape (1 for a scalar)
  std::vector<HeaderString> metadata;   // key, value, key, value, ... in header order
  std::string decoded;                  // storage of the strings that had escapes
};

struct HeaderDecline {
  std::string reason;                   // empty: the header was parsed
  size_t pos = 0;                       // byte of the header where it was declined
};

// One dtype of the table the caller passes (paramkit.dtypes.DTYPES order): its name and bit width.
struct HeaderDtype {
  std::string name;
  unsigned bits;
};

// Parses `n` header bytes (the JSON after the 8-byte length; trailing JSON whitespace allowed) into
// `out`. Returns an empty reason when every rule of the Python reader holds for each entry (known dtype,
// shape of integers < 2**64, element count < 2**64, whole bytes, END - BEGIN = the byte size) and the
// header has no duplicate key; the tiling of the data buffer is not checked here.
HeaderDecline parse_safetensors_header(const char* data, size_t n, const std::vector<HeaderDtype>& dtypes,
                                       HeaderColumns& out);

}  // namespace paramkit
