// Small helpers of the data pipeline: platform-independent hashing and shuffling, UTF-8
// validation, line-aligned text chunking, file globs (*, ?, **), whole-file reads.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace dfssm::data {

// ---- Deterministic hashing and random numbers ------------------------------------------------
// Everything the data pipeline randomises (validation split, training sample, epoch order)
// goes through these, never through std:: distributions, whose output differs between
// standard libraries: the same seed gives the same data on every machine.
inline uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}
uint64_t fnv1a64(std::string_view s);
inline uint64_t hash_combine(uint64_t a, uint64_t b) { return splitmix64(a ^ splitmix64(b)); }
// A uniform number in [0, 1) from a 64-bit hash.
inline double unit_interval(uint64_t h) { return double(h >> 11) * (1.0 / 9007199254740992.0); }

class Rng {
 public:
  explicit Rng(uint64_t seed) : s_(seed) {}
  uint64_t next() {  // the SplitMix64 sequence
    const uint64_t r = splitmix64(s_);
    s_ += 0x9E3779B97F4A7C15ull;
    return r;
  }
  uint64_t below(uint64_t n);  // uniform in [0, n), n > 0 (Lemire's method, unbiased)

 private:
  uint64_t s_;
};

// Fisher-Yates permutation of 0..n-1, identical on every platform for a given seed.
std::vector<uint32_t> permutation(uint64_t n, uint64_t seed);

// ---- Text --------------------------------------------------------------------------------------
// True if `s` is well-formed UTF-8 (no overlongs, surrogates or code points past U+10FFFF).
// On failure *bad_offset is the byte offset of the first bad sequence.
bool valid_utf8(std::string_view s, size_t* bad_offset = nullptr);

// Splits `text` into consecutive pieces of at most max_bytes that together are `text`. Each
// piece ends after a '\n' where there is one in range, else at a UTF-8 character boundary.
std::vector<std::string_view> split_chunks(std::string_view text, size_t max_bytes);

// ---- Files -------------------------------------------------------------------------------------
bool has_glob_chars(std::string_view s);
// Matches a '/'-separated path against a pattern: `*` (any run of characters within one path
// component), `?` (one character), and a whole component `**` (zero or more components).
bool glob_match(std::string_view pattern, std::string_view path);

struct FoundFile {
  std::string path;  // path on disk
  std::string rel;   // path relative to the walk root ('/'-separated), stable across machines
};
// Expands `spec` to regular files, sorted by path: a file; a directory (all files below it); or
// a glob such as `data/**/*.txt`. `exclude` holds globs relative to the directory / the glob's
// fixed prefix; a directory that matches one is skipped with all of its contents.
// Throws dfssm::Error if `spec` does not exist (a glob that matches nothing returns {}).
std::vector<FoundFile> expand_path(const std::string& spec, const std::vector<std::string>& exclude);

// Reads a whole file; throws dfssm::Error naming it on failure.
std::string read_file(const std::string& path);

std::string human_bytes(uint64_t bytes);
std::string with_commas(uint64_t v);

}  // namespace dfssm::data
