#include "core/io_util.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "core/error.h"

namespace dfssm {

void* map_readonly(const std::string& path, uint64_t min_size, const char* kind, uint64_t* size) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  DFSSM_CHECK(fd >= 0, path, ": cannot open (", std::strerror(errno), ")");
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(str(path, ": not a regular file"));
  }
  *size = uint64_t(st.st_size);
  if (*size < min_size) {
    ::close(fd);
    throw Error(str(path, ": ", *size, " bytes is too short for a ", kind, " (truncated?)"));
  }
  void* m = mmap(nullptr, *size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  DFSSM_CHECK(m != MAP_FAILED, path, ": mmap failed (", std::strerror(errno), ")");
  return m;
}

namespace {
const char* kAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
}

std::string base64_encode(const uint8_t* p, size_t n) {
  std::string o;
  o.reserve((n + 2) / 3 * 4);
  for (size_t i = 0; i < n; i += 3) {
    const uint32_t v = uint32_t(p[i]) << 16 | (i + 1 < n ? uint32_t(p[i + 1]) << 8 : 0) | (i + 2 < n ? p[i + 2] : 0);
    o += kAlphabet[(v >> 18) & 63];
    o += kAlphabet[(v >> 12) & 63];
    o += i + 1 < n ? kAlphabet[(v >> 6) & 63] : '=';
    o += i + 2 < n ? kAlphabet[v & 63] : '=';
  }
  return o;
}

std::vector<uint8_t> base64_decode(const std::string& s) {
  std::vector<uint8_t> o;
  uint32_t acc = 0;
  int bits = 0;
  for (char c : s) {
    const char* at = c ? std::strchr(kAlphabet, c) : nullptr;
    if (!at) continue;
    acc = acc << 6 | uint32_t(at - kAlphabet);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      o.push_back(uint8_t(acc >> bits));
    }
  }
  return o;
}

}  // namespace dfssm
