// Walking past GGUF metadata string arrays without decoding them (a 262,144-entry tokenizer takes ~0.5 us
// per string in Python): each item is a u64 length in the file's byte order, then that many bytes.
#pragma once
#include <cstdint>
#include <cstring>

namespace paramkit {

struct StringWalk { uint64_t done; uint64_t pos; };

// Walks at most `count` strings of buf[pos, len): stops before the first one that does not lie wholly inside
// the buffer (its length prefix or its bytes), so the caller can refill and go on, or report the truncation.
inline StringWalk walk_gguf_strings(const uint8_t* buf, uint64_t len, uint64_t pos, uint64_t count, bool big_endian) {
  uint64_t done = 0;
  while (done < count && pos <= len && len - pos >= 8) {
    uint64_t n;
    std::memcpy(&n, buf + pos, 8);
    if (big_endian) n = __builtin_bswap64(n);
    if (n > len - pos - 8) break;
    pos += 8 + n;
    ++done;
  }
  return {done, pos};
}

}  // namespace paramkit
