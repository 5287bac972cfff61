// Small I/O helpers shared by the file formats: read-only mapping of a whole file, and base64
// (RFC 4648, padded) for binary blobs stored in JSON metadata.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace dfssm {

// Maps `path` read-only. Throws dfssm::Error naming the file when it cannot be opened, is not a
// regular file, is shorter than `min_size` bytes ("too short for a <kind> (truncated?)") or
// cannot be mapped. The caller owns the mapping (munmap(ptr, *size)).
void* map_readonly(const std::string& path, uint64_t min_size, const char* kind, uint64_t* size);

std::string base64_encode(const uint8_t* data, size_t n);
inline std::string base64_encode(const std::string& s) {
  return base64_encode(reinterpret_cast<const uint8_t*>(s.data()), s.size());
}
// Decodes base64, skipping characters outside the alphabet (padding, whitespace).
std::vector<uint8_t> base64_decode(const std::string& s);

}  // namespace dfssm
