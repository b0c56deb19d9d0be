// The safetensors header fast path (see safetensors_header.hpp): a single-pass parser of the one JSON
// shape safetensors writes, which declines whatever it does not handle exactly as Python's json + the
// Python reader would (so its accept set is a subset of theirs, with identical results).
#include "safetensors_header.hpp"

#include <cstring>
#include <limits>
#include <unordered_set>
#include <string_view>

namespace paramkit {
namespace {

constexpr uint64_t kU64Max = std::numeric_limits<uint64_t>::max();

inline bool is_ws(unsigned char c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; }

inline int hex_value(unsigned char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Length of the valid (strict: no overlong forms, no surrogates, <= U+10FFFF) UTF-8 sequence starting
// at s[0] >= 0x80, or 0. The same rule as Python's bytes.decode("utf-8").
inline size_t utf8_sequence(const unsigned char* s, size_t avail) {
  unsigned char c = s[0];
  auto cont = [&](size_t k) { return k < avail && (s[k] & 0xC0) == 0x80; };
  if (c >= 0xC2 && c <= 0xDF) return cont(1) ? 2 : 0;
  if (c >= 0xE0 && c <= 0xEF) {
    if (avail < 2) return 0;
    unsigned char c1 = s[1];
    if (c == 0xE0 && c1 < 0xA0) return 0;         // overlong
    if (c == 0xED && c1 > 0x9F) return 0;         // U+D800..U+DFFF
    return cont(1) && cont(2) ? 3 : 0;
  }
  if (c >= 0xF0 && c <= 0xF4) {
    if (avail < 2) return 0;
    unsigned char c1 = s[1];
    if (c == 0xF0 && c1 < 0x90) return 0;         // overlong
    if (c == 0xF4 && c1 > 0x8F) return 0;         // > U+10FFFF
    return cont(1) && cont(2) && cont(3) ? 4 : 0;
  }
  return 0;
}

inline void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(char(cp));
  } else if (cp < 0x800) {
    out.push_back(char(0xC0 | (cp >> 6)));
    out.push_back(char(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(char(0xE0 | (cp >> 12)));
    out.push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(char(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(char(0xF0 | (cp >> 18)));
    out.push_back(char(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(char(0x80 | (cp & 0x3F)));
  }
}

uint64_t hash_bytes(const char* p, size_t len) {
  uint64_t h = 0x243F6A8885A308D3ull ^ len;
  size_t k = 0;
  for (; k + 8 <= len; k += 8) {
    uint64_t w;
    std::memcpy(&w, p + k, 8);
    h = (h ^ w) * 0x9E3779B97F4A7C15ull;
    h = (h << 31) | (h >> 33);
  }
  uint64_t w = 0;
  for (size_t j = 0; k + j < len; ++j) w |= uint64_t(static_cast<unsigned char>(p[k + j])) << (8 * j);
  h ^= w;
  h ^= h >> 33; h *= 0xFF51AFD7ED558CCDull;   // MurmurHash3's finalizer: every bit reaches the low ones
  h ^= h >> 33; h *= 0xC4CEB9FE1A85EC53ull;
  return h ^ (h >> 33);
}

// Index of the first byte of s[i..n) that a string scan must look at ('"', '\\', < 0x20 or >= 0x80),
// 8 bytes at a time (little-endian: the lowest flagged byte is the first; borrows in the per-byte tests
// only run upwards, so it is exact); n when there is none.
inline size_t string_stop(const unsigned char* s, size_t i, size_t n) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  constexpr uint64_t k01 = 0x0101010101010101ull, k80 = 0x8080808080808080ull;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    std::memcpy(&w, s + i, 8);
    uint64_t q = w ^ (k01 * '"'), b = w ^ (k01 * '\\');
    uint64_t m = (w | ((w - k01 * 0x20) & ~w) | ((q - k01) & ~q) | ((b - k01) & ~b)) & k80;
    if (m) return i + size_t(__builtin_ctzll(m) >> 3);
  }
#endif
  while (i < n && s[i] != '"' && s[i] != '\\' && s[i] >= 0x20 && s[i] < 0x80) ++i;
  return i;
}

enum Field : unsigned { kDtype = 1, kShape = 2, kOffsets = 4 };

class Parser {
 public:
  Parser(const char* data, size_t n, const std::vector<HeaderDtype>& dtypes, HeaderColumns& out)
      : raw_(data), s_(reinterpret_cast<const unsigned char*>(data)), n_(n), dtypes_(dtypes), out_(out) {}

  HeaderDecline run() {
    size_t guess = n_ / 64 + 1;
    out_.names.reserve(guess); out_.dtype.reserve(guess); out_.begin.reserve(guess); out_.end.reserve(guess);
    out_.ndim.reserve(guess); out_.numel.reserve(guess);
    out_.dims.reserve(2 * guess);
    if (top_object() && unique_names() && unique_metadata_keys()) return {};
    return fail_;
  }

 private:
  const char* raw_;
  const unsigned char* s_;
  size_t n_;
  size_t i_ = 0;
  const std::vector<HeaderDtype>& dtypes_;
  HeaderColumns& out_;
  HeaderDecline fail_;

  bool decline(const char* why) {
    if (fail_.reason.empty()) { fail_.reason = why; fail_.pos = i_; }
    return false;
  }
  void ws() { while (i_ < n_ && is_ws(s_[i_])) ++i_; }
  bool punct(char c, const char* why) {
    ws();
    if (i_ < n_ && s_[i_] == static_cast<unsigned char>(c)) { ++i_; return true; }
    return decline(why);
  }
  const char* bytes_of(const HeaderString& h) const { return h.decoded ? out_.decoded.data() + h.off : raw_ + h.off; }
  bool equals(const HeaderString& h, const char* lit, size_t len) const {
    return h.len == len && std::memcmp(bytes_of(h), lit, len) == 0;
  }

  // A JSON string at s_[i_] (after whitespace): escapes decoded, UTF-8 checked; declines on control
  // characters, escapes JSON lacks and unpaired surrogate escapes (which Python keeps, then rejects).
  bool string(HeaderString& h) {
    ws();
    if (i_ >= n_ || s_[i_] != '"') return decline("expected a string");
    size_t start = ++i_;
    bool ascii = true;
    while ((i_ = string_stop(s_, i_, n_)) < n_) {
      unsigned char c = s_[i_];
      if (c == '"') {
        h = HeaderString{uint32_t(start), uint32_t(i_ - start), false, ascii};
        ++i_;
        return true;
      }
      if (c == '\\') return escaped_string(h, start, ascii);
      if (c < 0x20) return decline("control character in a string");
      size_t k = utf8_sequence(s_ + i_, n_ - i_);
      if (!k) return decline("invalid UTF-8");
      ascii = false;
      i_ += k;
    }
    return decline("unterminated string");
  }

  bool escaped_string(HeaderString& h, size_t start, bool ascii) {
    std::string& d = out_.decoded;
    size_t off = d.size();
    d.append(raw_ + start, i_ - start);
    while (i_ < n_) {
      unsigned char c = s_[i_];
      if (c == '"') {
        h = HeaderString{uint32_t(off), uint32_t(d.size() - off), true, ascii};
        ++i_;
        return true;
      }
      if (c == '\\') {
        if (i_ + 1 >= n_) return decline("unterminated string");
        unsigned char e = s_[i_ + 1];
        i_ += 2;
        switch (e) {
          case '"': d.push_back('"'); break;
          case '\\': d.push_back('\\'); break;
          case '/': d.push_back('/'); break;
          case 'b': d.push_back('\b'); break;
          case 'f': d.push_back('\f'); break;
          case 'n': d.push_back('\n'); break;
          case 'r': d.push_back('\r'); break;
          case 't': d.push_back('\t'); break;
          case 'u': {
            uint32_t cp;
            if (!hex4(cp)) return false;
            if (cp >= 0xDC00 && cp <= 0xDFFF) return decline("unpaired surrogate escape");
            if (cp >= 0xD800 && cp <= 0xDBFF) {
              uint32_t lo;
              if (i_ + 1 >= n_ || s_[i_] != '\\' || s_[i_ + 1] != 'u') return decline("unpaired surrogate escape");
              i_ += 2;
              if (!hex4(lo)) return false;
              if (lo < 0xDC00 || lo > 0xDFFF) return decline("unpaired surrogate escape");
              cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            if (cp >= 0x80) ascii = false;
            append_utf8(d, cp);
            break;
          }
          default: return decline("invalid escape");
        }
        continue;
      }
      if (c < 0x20) return decline("control character in a string");
      if (c < 0x80) { d.push_back(char(c)); ++i_; continue; }
      size_t k = utf8_sequence(s_ + i_, n_ - i_);
      if (!k) return decline("invalid UTF-8");
      ascii = false;
      d.append(raw_ + i_, k);
      i_ += k;
    }
    return decline("unterminated string");
  }

  bool hex4(uint32_t& cp) {
    if (i_ + 4 > n_) return decline("invalid \\u escape");
    cp = 0;
    for (int k = 0; k < 4; ++k) {
      int v = hex_value(s_[i_ + k]);
      if (v < 0) return decline("invalid \\u escape");
      cp = cp * 16 + uint32_t(v);
    }
    i_ += 4;
    return true;
  }

  // A plain non-negative JSON integer < 2**64 (no sign, fraction or exponent).
  bool uint(uint64_t& v) {
    ws();
    if (i_ >= n_) return decline("expected an integer");
    unsigned char c = s_[i_];
    v = 0;
    if (c == '0') {
      ++i_;
    } else if (c >= '1' && c <= '9') {
      while (i_ < n_ && s_[i_] >= '0' && s_[i_] <= '9') {
        uint64_t digit = s_[i_] - '0';
        if (v > (kU64Max - digit) / 10) return decline("integer >= 2**64");
        v = v * 10 + digit;
        ++i_;
      }
    } else {
      return decline("not a non-negative integer");
    }
    if (i_ < n_) {
      unsigned char t = s_[i_];
      if (t == '.' || t == 'e' || t == 'E' || (t >= '0' && t <= '9')) return decline("number that is not a plain integer");
    }
    return true;
  }

  bool peek(char c) { ws(); return i_ < n_ && s_[i_] == static_cast<unsigned char>(c); }

  bool shape(uint32_t& ndim) {
    if (!punct('[', "shape is not a list")) return false;
    ndim = 0;
    if (peek(']')) { ++i_; return true; }
    while (true) {
      uint64_t d;
      if (!uint(d)) return false;
      out_.dims.push_back(d);
      ++ndim;
      if (peek(',')) { ++i_; continue; }
      return punct(']', "shape: expected ',' or ']'");
    }
  }

  bool offsets(uint64_t& b, uint64_t& e) {
    return punct('[', "data_offsets is not a list") && uint(b) && punct(',', "data_offsets: not two integers") &&
           uint(e) && punct(']', "data_offsets: not two integers");
  }

  bool entry() {
    if (!punct('{', "tensor entry is not an object")) return false;
    unsigned seen = 0;
    HeaderString dtype;
    uint64_t b = 0, e = 0;
    uint32_t nd = 0;
    size_t dims_at = out_.dims.size();
    if (peek('}')) return decline("tensor entry lacks fields");
    while (true) {
      HeaderString key;
      if (!string(key) || !punct(':', "expected ':'")) return false;
      unsigned f;
      if (equals(key, "dtype", 5)) f = kDtype;
      else if (equals(key, "shape", 5)) f = kShape;
      else if (equals(key, "data_offsets", 12)) f = kOffsets;
      else return decline("tensor entry field other than dtype, shape, data_offsets");
      if (seen & f) return decline("duplicate field in a tensor entry");
      seen |= f;
      bool ok = f == kDtype ? string(dtype) : f == kShape ? shape(nd) : offsets(b, e);
      if (!ok) return false;
      if (peek(',')) { ++i_; continue; }
      if (!punct('}', "tensor entry: expected ',' or '}'")) return false;
      break;
    }
    if (seen != (kDtype | kShape | kOffsets)) return decline("tensor entry lacks a field");
    int code = -1;
    for (size_t k = 0; k < dtypes_.size(); ++k) {
      const std::string& name = dtypes_[k].name;
      if (equals(dtype, name.data(), name.size())) { code = int(k); break; }
    }
    if (code < 0) return decline("unknown dtype");
    uint64_t numel = 1;
    bool zero = false, overflow = false;
    for (size_t k = dims_at; k < out_.dims.size(); ++k) {
      uint64_t d = out_.dims[k];
      if (d == 0) zero = true;
      else if (!overflow && __builtin_mul_overflow(numel, d, &numel)) overflow = true;
    }
    if (zero) numel = 0;
    else if (overflow) return decline("element count >= 2**64");
    unsigned __int128 nbits = static_cast<unsigned __int128>(numel) * dtypes_[code].bits;
    if (nbits % 8) return decline("not a whole number of bytes");
    if (e < b || static_cast<unsigned __int128>(e - b) != nbits / 8) return decline("data_offsets span != byte size");
    out_.dtype.push_back(uint8_t(code));
    out_.begin.push_back(b);
    out_.end.push_back(e);
    out_.ndim.push_back(nd);
    out_.numel.push_back(numel);
    return true;
  }

  bool metadata() {
    ws();
    if (i_ + 4 <= n_ && std::memcmp(s_ + i_, "null", 4) == 0) { i_ += 4; return true; }
    if (!punct('{', "__metadata__ is not an object")) return false;
    if (peek('}')) { ++i_; return true; }
    while (true) {
      HeaderString k, v;
      if (!string(k) || !punct(':', "expected ':'")) return false;
      if (!peek('"')) return decline("__metadata__ value that is not a string");
      if (!string(v)) return false;
      out_.metadata.push_back(k);
      out_.metadata.push_back(v);
      if (peek(',')) { ++i_; continue; }
      return punct('}', "__metadata__: expected ',' or '}'");
    }
  }

  bool top_object() {
    if (!punct('{', "header is not a JSON object")) return false;
    bool seen_metadata = false;
    if (peek('}')) {
      ++i_;
    } else {
      while (true) {
        HeaderString key;
        if (!string(key) || !punct(':', "expected ':'")) return false;
        if (equals(key, "__metadata__", 12)) {
          if (seen_metadata) return decline("duplicate __metadata__");
          seen_metadata = true;
          if (!metadata()) return false;
        } else {
          if (!entry()) return false;
          out_.names.push_back(key);
        }
        if (peek(',')) { ++i_; continue; }
        if (!punct('}', "header: expected ',' or '}'")) return false;
        break;
      }
    }
    ws();
    if (i_ != n_) return decline("bytes after the header object");
    return true;
  }

  bool unique_names() {
    const size_t count = out_.names.size();
    size_t cap = 16;
    while (cap < 2 * count) cap <<= 1;
    std::vector<uint32_t> slots(cap, 0);   // 1 + index of the name, 0 = empty
    for (size_t k = 0; k < count; ++k) {
      const HeaderString& h = out_.names[k];
      const char* p = bytes_of(h);
      size_t at = hash_bytes(p, h.len) & (cap - 1);
      while (slots[at]) {
        const HeaderString& o = out_.names[slots[at] - 1];
        if (o.len == h.len && std::memcmp(bytes_of(o), p, h.len) == 0) {
          i_ = h.decoded ? 0 : h.off;
          return decline("duplicate tensor name");
        }
        at = (at + 1) & (cap - 1);
      }
      slots[at] = uint32_t(k + 1);
    }
    return true;
  }

  bool unique_metadata_keys() {
    std::unordered_set<std::string_view> keys;
    for (size_t k = 0; k < out_.metadata.size(); k += 2) {
      const HeaderString& h = out_.metadata[k];
      if (!keys.emplace(bytes_of(h), h.len).second) return decline("duplicate __metadata__ key");
    }
    return true;
  }
};

}  // namespace

HeaderDecline parse_safetensors_header(const char* data, size_t n, const std::vector<HeaderDtype>& dtypes,
                                       HeaderColumns& out) {
  out = HeaderColumns{};
  if (dtypes.size() > 255) return {"more than 255 dtypes", 0};
  if (n > std::numeric_limits<uint32_t>::max()) return {"header larger than 4 GiB", 0};
  return Parser(data, n, dtypes, out).run();
}

}  // namespace paramkit
