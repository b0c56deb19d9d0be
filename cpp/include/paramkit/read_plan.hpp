// The engines' read layer (host code only, shared by the cpu engine and the cuda engine): how a tensor's
// bytes are read from its file. A plain tensor is one contiguous little-endian byte range, read with one
// pread per unit. A tensor with a ReadLayout (a strided torch view or big-endian data of a stored zip
// member) is read by its ViewReader, which fills a buffer with the tensor's row-major byte range
// [begin, begin + n) in plain little-endian form: long contiguous runs are pread directly (adjacent runs
// coalesced); short or strided runs are gathered from the storage span the view touches, read once per
// tensor into a buffer its pieces share (freed when the last of its bytes was gathered). Every layout is
// validated (64-bit arithmetic, overflow checked) and its span checked against the file size before any
// read: a malformed layout raises, it never reads out of bounds.
#pragma once
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

#include "paramkit/dtype.hpp"
#include "paramkit/file_read.hpp"

namespace paramkit {

// Where a view's elements are (from python/paramkit/table.py's ViewLayout of a "stored" blob): the storage
// is storage_nbytes bytes at file offset storage_offset; element [i0, i1, ...] is storage element
// element_offset + sum(i_k * strides[k]); swap: the elements are big-endian.
struct ReadLayout {
  uint64_t storage_offset = 0, storage_nbytes = 0;
  int64_t element_offset = 0;
  bool swap = false;
  std::vector<int64_t> shape, strides;
};

// Innermost contiguous runs at least this long are pread where they are; shorter ones (and strided
// innermost dimensions) are gathered from the storage span held in memory.
constexpr uint64_t kMinRunBytes = 64 * 1024;

// A byte range of a file (path: its name, for errors), `len` bytes of host memory at `mem`, or (view set)
// the bytes [off, off + len) of a view tensor's row-major plain form.
class ViewReader;
struct ReadOp {
  int fd; const std::string* path; uint64_t off, len; uint8_t* dst; const uint8_t* mem; ViewReader* view;
};

inline void byteswap_elements(uint8_t* p, uint64_t n, int es) {
  if (es == 2) for (uint64_t i = 0; i < n; ++i) { uint16_t v; std::memcpy(&v, p + 2 * i, 2); v = __builtin_bswap16(v); std::memcpy(p + 2 * i, &v, 2); }
  else if (es == 4) for (uint64_t i = 0; i < n; ++i) { uint32_t v; std::memcpy(&v, p + 4 * i, 4); v = __builtin_bswap32(v); std::memcpy(p + 4 * i, &v, 4); }
  else if (es == 8) for (uint64_t i = 0; i < n; ++i) { uint64_t v; std::memcpy(&v, p + 8 * i, 8); v = __builtin_bswap64(v); std::memcpy(p + 8 * i, &v, 8); }
}

class ViewReader {
 public:
  // Validates `lay` for a tensor of `numel` elements of `es` bytes in a file of `file_size` bytes (path: for
  // errors): std::invalid_argument for a layout that does not describe such a tensor inside its storage,
  // std::system_error(EIO) when the span it touches lies beyond the end of the file.
  ViewReader(const ReadLayout& lay, uint64_t numel, int es, const std::string& path, uint64_t file_size)
      : es_(uint64_t(es)), swap_(lay.swap && es > 1), storage_offset_(lay.storage_offset) {
    auto bad = [&](const std::string& why) { return std::invalid_argument(path + ": bad view layout: " + why); };
    if (es != 1 && es != 2 && es != 4 && es != 8) throw bad("element size " + std::to_string(es));
    if (lay.shape.size() != lay.strides.size()) throw bad("shape and strides differ in length");
    if (lay.element_offset < 0) throw bad("negative element offset");
    // numel, and the extent of the touched storage elements: [lo, hi] relative to the element offset
    __int128 count = 1, lo = 0, hi = 0, reach = 0;
    for (size_t k = 0; k < lay.shape.size(); ++k) {
      const int64_t d = lay.shape[k], s = lay.strides[k];
      if (d < 0) throw bad("negative dimension");
      count *= d;
      if (count * es > (__int128(1) << 62)) throw bad("too many elements");
      if (d == 0) continue;
      __int128 e = __int128(d - 1) * s;
      (e < 0 ? lo : hi) += e;
      reach += __int128(d) * (s < 0 ? -__int128(s) : __int128(s));
      if (reach > (__int128(1) << 62)) throw bad("strides out of range");
    }
    empty_ = count == 0;
    if (uint64_t(count) != numel) throw bad("shape has " + std::to_string(uint64_t(count)) + " elements, the tensor " +
                                            std::to_string(numel));
    if (lay.storage_nbytes > (uint64_t(1) << 62)) throw bad("storage too large");
    nbytes_ = numel * es_;
    left_.store(nbytes_);
    if (empty_) return;
    const __int128 first = __int128(lay.element_offset) + lo, last = __int128(lay.element_offset) + hi;
    if (first < 0 || (last + 1) * __int128(es) > __int128(lay.storage_nbytes))
      throw bad("the view reaches storage elements " + std::to_string(int64_t(first)) + ".." + std::to_string(int64_t(last)) +
                " of a storage of " + std::to_string(lay.storage_nbytes / uint64_t(es)));
    span_lo_ = int64_t(first);
    span_bytes_ = uint64_t(last - first + 1) * es_;
    check_range_in_file(path, file_size, storage_offset_ + uint64_t(span_lo_) * es_, span_bytes_);
    // normalized dimensions: size-1 dimensions dropped, dimensions that step like one merged
    for (size_t k = 0; k < lay.shape.size(); ++k) {
      if (lay.shape[k] == 1) continue;
      if (!dims_.empty() && dims_.back().stride == lay.strides[k] * lay.shape[k]) {
        dims_.back().size *= lay.shape[k];
        dims_.back().stride = lay.strides[k];
      } else {
        dims_.push_back({lay.shape[k], lay.strides[k]});
      }
    }
    if (dims_.empty()) dims_.push_back({1, 1});   // a scalar: one element
    element_offset_ = lay.element_offset;
    const Dim& in = dims_.back();
    const bool contiguous = dims_.size() == 1 && in.stride == 1;
    runs_ = in.stride == 1 && (contiguous || uint64_t(in.size) * es_ >= kMinRunBytes);
  }
  ViewReader(const ViewReader&) = delete;
  ViewReader& operator=(const ViewReader&) = delete;

  // whether the view's pieces are gathered from its storage span held in memory (else pread run by run)
  bool gathers() const { return !runs_ && !empty_; }
  uint64_t span_bytes() const { return span_bytes_; }

  // Fills dst with the row-major plain bytes [begin, begin + n) of the tensor (whole elements).
  void read(int fd, const std::string& path, uint64_t begin, uint64_t n, uint8_t* dst) {
    if (n == 0) return;
    if (begin % es_ || n % es_ || begin > nbytes_ || n > nbytes_ - begin) throw std::logic_error("view read not on element boundaries");
    if (runs_) read_runs(fd, path, begin / es_, n / es_, dst);
    else gather(fd, path, begin / es_, n / es_, dst);
    if (swap_) byteswap_elements(dst, n / es_, int(es_));
  }

 private:
  struct Dim { int64_t size, stride; };

  // The multi-index of row-major element e, and its storage element.
  int64_t locate(uint64_t e, std::vector<int64_t>& idx) const {
    idx.assign(dims_.size(), 0);
    int64_t pos = element_offset_;
    for (size_t k = dims_.size(); k-- > 0;) {
      idx[k] = int64_t(e % uint64_t(dims_[k].size));
      e /= uint64_t(dims_[k].size);
      pos += idx[k] * dims_[k].stride;
    }
    return pos;
  }

  // Visits the row-major elements [e0, e0 + m) as runs along the innermost dimension: f(storage element of
  // the run's first element, run length, position in the output).
  template <class F>
  void for_runs(uint64_t e0, uint64_t m, F&& f) const {
    std::vector<int64_t> idx;
    int64_t pos = locate(e0, idx);
    const size_t last = dims_.size() - 1;
    const int64_t inner = dims_[last].size, istride = dims_[last].stride;
    uint64_t done = 0;
    while (done < m) {
      const uint64_t take = std::min<uint64_t>(uint64_t(inner - idx[last]), m - done);
      f(pos, take, done);
      done += take;
      if (done == m) break;
      // the next run: the innermost index wraps (take reached its end), carry outwards
      pos -= idx[last] * istride;
      idx[last] = 0;
      for (size_t k = last; k-- > 0;) {
        pos += dims_[k].stride;
        if (++idx[k] < dims_[k].size) break;
        pos -= idx[k] * dims_[k].stride;
        idx[k] = 0;
      }
    }
  }

  void read_runs(int fd, const std::string& path, uint64_t e0, uint64_t m, uint8_t* dst) const {
    uint64_t at = 0, len = 0, out = 0;   // the pending pread: file offset, bytes, output offset
    for_runs(e0, m, [&](int64_t pos, uint64_t take, uint64_t done) {
      const uint64_t off = storage_offset_ + uint64_t(pos) * es_;
      if (len && at + len == off) { len += take * es_; return; }
      if (len) pread_fully(fd, path, dst + out, len, at);
      at = off; len = take * es_; out = done * es_;
    });
    if (len) pread_fully(fd, path, dst + out, len, at);
  }

  std::shared_ptr<uint8_t[]> acquire(int fd, const std::string& path) {
    std::lock_guard<std::mutex> g(mu_);
    if (!storage_) {
      std::shared_ptr<uint8_t[]> s(new uint8_t[span_bytes_]);
      pread_fully(fd, path, s.get(), span_bytes_, storage_offset_ + uint64_t(span_lo_) * es_);
      storage_ = std::move(s);
    }
    return storage_;
  }

  // Rows of a 2-D view with a strided innermost dimension (a transpose): `rows` whole rows of `cols` elements
  // from the row whose element 0 is storage element pos0, in blocks of kTileRows rows gathered column by
  // column, so each storage cache line (consecutive rows of a transpose) is read once and the block's output
  // rows stay in cache.
  template <int ES>
  static void gather_rows(const uint8_t* base, int64_t pos0, int64_t s0, int64_t s1, uint64_t rows, uint64_t cols,
                          uint8_t* dst) {
    constexpr uint64_t kTileRows = 32;
    for (uint64_t rb = 0; rb < rows; rb += kTileRows) {
      const uint64_t nr = std::min(kTileRows, rows - rb);
      uint8_t* out = dst + rb * cols * ES;
      for (uint64_t c = 0; c < cols; ++c) {
        const int64_t at = pos0 + int64_t(rb) * s0 + int64_t(c) * s1;   // element (rb, c), inside the span
        for (uint64_t r = 0; r < nr; ++r)
          std::memcpy(out + (r * cols + c) * ES, base + uint64_t(at + int64_t(r) * s0) * ES, ES);
      }
    }
  }

  // Row-major elements [e0, e0 + m) from the storage held in memory (base: its element 0), run by run.
  void gather_runs(const uint8_t* base, uint64_t e0, uint64_t m, uint8_t* dst) const {
    const int64_t istride = dims_.back().stride;
    const uint64_t es = es_;
    for_runs(e0, m, [&](int64_t pos, uint64_t take, uint64_t done) {
      uint8_t* o = dst + done * es;
      const uint8_t* p = base + uint64_t(pos) * es;
      if (istride == 1) { std::memcpy(o, p, take * es); return; }
      const int64_t step = istride * int64_t(es);
      switch (es) {
        case 1: for (uint64_t i = 0; i < take; ++i) o[i] = p[int64_t(i) * step]; break;
        case 2: for (uint64_t i = 0; i < take; ++i) std::memcpy(o + 2 * i, p + int64_t(i) * step, 2); break;
        case 4: for (uint64_t i = 0; i < take; ++i) std::memcpy(o + 4 * i, p + int64_t(i) * step, 4); break;
        default: for (uint64_t i = 0; i < take; ++i) std::memcpy(o + 8 * i, p + int64_t(i) * step, 8); break;
      }
    });
  }

  void gather(int fd, const std::string& path, uint64_t e0, uint64_t m, uint8_t* dst) {
    std::shared_ptr<uint8_t[]> s = acquire(fd, path);
    const uint8_t* base = s.get() - uint64_t(span_lo_) * es_;   // storage element 0 (never dereferenced below span_lo)
    if (dims_.size() == 2 && dims_[1].stride != 1) {   // a 2-D transpose-like view: whole rows in tiles
      const uint64_t cols = uint64_t(dims_[1].size);
      const uint64_t head = std::min(m, (cols - e0 % cols) % cols);
      gather_runs(base, e0, head, dst);
      const uint64_t r0 = (e0 + head) / cols, rows = (m - head) / cols;
      const int64_t pos0 = element_offset_ + int64_t(r0) * dims_[0].stride;
      uint8_t* body = dst + head * es_;
      switch (es_) {
        case 1: gather_rows<1>(base, pos0, dims_[0].stride, dims_[1].stride, rows, cols, body); break;
        case 2: gather_rows<2>(base, pos0, dims_[0].stride, dims_[1].stride, rows, cols, body); break;
        case 4: gather_rows<4>(base, pos0, dims_[0].stride, dims_[1].stride, rows, cols, body); break;
        default: gather_rows<8>(base, pos0, dims_[0].stride, dims_[1].stride, rows, cols, body); break;
      }
      const uint64_t done = head + rows * cols;
      gather_runs(base, e0 + done, m - done, dst + done * es_);
    } else {
      gather_runs(base, e0, m, dst);
    }
    if (left_.fetch_sub(m * es_) == m * es_) {   // the tensor's last bytes: its storage is not needed any more
      std::lock_guard<std::mutex> g(mu_);
      storage_.reset();
    }
  }

  const uint64_t es_;
  const bool swap_;
  const uint64_t storage_offset_;
  bool empty_ = false, runs_ = true;
  int64_t element_offset_ = 0, span_lo_ = 0;
  uint64_t span_bytes_ = 0, nbytes_ = 0;
  std::vector<Dim> dims_;
  std::mutex mu_;
  std::shared_ptr<uint8_t[]> storage_;   // the gathered views' storage span, while pieces still need it
  std::atomic<uint64_t> left_{0};         // bytes not yet gathered
};

// One ReadOp: memcpy from host memory, a view's plain bytes, or a pread of a file range. fail_hook (a test
// aid, the CUDA emulator's): called before each file read, true makes it fail with EIO.
inline void read_op(const ReadOp& r, bool (*fail_hook)() = nullptr) {
  if (r.mem) { std::memcpy(r.dst, r.mem, r.len); return; }
  if (fail_hook && fail_hook()) throw std::system_error(EIO, std::generic_category(), "pread (emulated failure)");
  if (r.view) r.view->read(r.fd, *r.path, r.off, r.len, r.dst);
  else pread_fully(r.fd, *r.path, r.dst, r.len, r.off);
}

// The engines' ViewReaders: one per task that has a layout (null for the others), each validated and
// checked against its file's size. Task: any record with file, numel, dtype and a `layout` shared_ptr.
template <class Task>
std::vector<std::unique_ptr<ViewReader>> view_readers(const std::vector<Task>& tasks, const std::vector<std::string>& files,
                                                      const std::vector<uint64_t>& sizes) {
  std::vector<std::unique_ptr<ViewReader>> v(tasks.size());
  for (size_t i = 0; i < tasks.size(); ++i) {
    const Task& t = tasks[i];
    if (!t.layout) continue;
    if (t.file < 0 || size_t(t.file) >= files.size()) throw std::invalid_argument("task names a missing file");
    v[i].reset(new ViewReader(*t.layout, t.numel, dtype_size(t.dtype), files[size_t(t.file)], sizes[size_t(t.file)]));
  }
  return v;
}

}  // namespace paramkit
