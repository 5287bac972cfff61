// SHA-256 (FIPS 180-4), small and dependency-free. Used for the tokenizer identity and the
// shard checksums recorded in manifest.json.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

namespace dfssm::data {

class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t n);
  void update(const std::string& s) { update(s.data(), s.size()); }
  std::array<uint8_t, 32> digest();  // finalises; the object must not be updated afterwards
  std::string hex_digest();          // lowercase hex of digest()

 private:
  void block(const uint8_t* p);
  uint32_t h_[8];
  uint8_t buf_[64];
  size_t buf_len_ = 0;
  uint64_t total_ = 0;
};

std::string sha256_hex(const void* data, size_t n);
inline std::string sha256_hex(const std::string& s) { return sha256_hex(s.data(), s.size()); }
// Hashes a file in 1 MiB blocks; throws dfssm::Error naming the file if it cannot be read.
std::string sha256_file(const std::string& path);

}  // namespace dfssm::data
