// Opening a weight file and reading byte ranges of it, shared by the cpu and cuda engines (host code only):
// pread until a range is complete, EINTR retried; a file shorter than its header promised, found when it is
// opened or because it was truncated while it was read, is a std::system_error with EIO and a message that
// says so. Every failure names the file.
#pragma once
#include <cerrno>
#include <cstdint>
#include <string>
#include <system_error>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace paramkit {

// An open file descriptor (O_RDONLY | O_CLOEXEC, sequential read-ahead advised) and the file's size at that
// moment; throws the errno of open/fstat, closing what it opened. The caller closes `fd`.
struct OpenedFile { int fd; uint64_t size; };
inline OpenedFile open_for_reading(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw std::system_error(errno, std::generic_category(), path);
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int e = errno;
    close(fd);
    throw std::system_error(e, std::generic_category(), path);
  }
  posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  return {fd, uint64_t(st.st_size)};
}

// [offset, offset + nbytes) must lie inside a file of `size` bytes (checked before any read).
inline void check_range_in_file(const std::string& path, uint64_t size, uint64_t offset, uint64_t nbytes) {
  if (offset <= size && nbytes <= size - offset) return;
  throw std::system_error(EIO, std::generic_category(),
                          path + ": tensor bytes " + std::to_string(offset) + ".." + std::to_string(offset + nbytes) +
                              " lie beyond the end of the file (" + std::to_string(size) +
                              " bytes): it was truncated after its header was read");
}

// Reads exactly `len` bytes at `offset` into dst.
inline void pread_fully(int fd, const std::string& path, uint8_t* dst, uint64_t len, uint64_t offset) {
  uint64_t got = 0;
  while (got < len) {
    ssize_t r = pread(fd, dst + got, size_t(len - got), off_t(offset + got));
    if (r < 0) {
      if (errno == EINTR) continue;
      throw std::system_error(errno, std::generic_category(), path + ": read at byte " + std::to_string(offset + got));
    }
    if (r == 0)   // end of file: no errno is set, the file is shorter than it was when it was opened
      throw std::system_error(EIO, std::generic_category(),
                              path + ": the file ended early, at byte " + std::to_string(offset + got) +
                                  " (truncated while it was read?)");
    got += uint64_t(r);
  }
}

}  // namespace paramkit
