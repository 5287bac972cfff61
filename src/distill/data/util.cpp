#include "distill/data/util.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <system_error>

#include "core/error.h"

namespace fs = std::filesystem;

namespace dfssm::data {

uint64_t fnv1a64(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

uint64_t Rng::below(uint64_t n) {
  DFSSM_ASSERT(n > 0, "Rng::below(0)");
  __uint128_t m = static_cast<__uint128_t>(next()) * n;
  uint64_t low = static_cast<uint64_t>(m);
  if (low < n) {
    const uint64_t threshold = (0 - n) % n;
    while (low < threshold) {
      m = static_cast<__uint128_t>(next()) * n;
      low = static_cast<uint64_t>(m);
    }
  }
  return static_cast<uint64_t>(m >> 64);
}

std::vector<uint32_t> permutation(uint64_t n, uint64_t seed) {
  DFSSM_ASSERT(n <= 0xFFFFFFFFull, "permutation of ", n, " elements");
  std::vector<uint32_t> p(n);
  for (uint64_t i = 0; i < n; ++i) p[i] = uint32_t(i);
  Rng rng(seed);
  for (uint64_t i = n; i > 1; --i) std::swap(p[i - 1], p[rng.below(i)]);
  return p;
}

bool valid_utf8(std::string_view s, size_t* bad_offset) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    // Fast path: 8 ASCII bytes at a time.
    if (i + 8 <= n) {
      uint64_t w;
      std::memcpy(&w, p + i, 8);
      if ((w & 0x8080808080808080ull) == 0) {
        i += 8;
        continue;
      }
    }
    const unsigned c = p[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    unsigned lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;  // no overlongs
      if (c == 0xED) hi = 0x9F;  // no surrogates
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;  // <= U+10FFFF
    } else {
      if (bad_offset) *bad_offset = i;
      return false;
    }
    if (i + len > n || p[i + 1] < lo || p[i + 1] > hi) {
      if (bad_offset) *bad_offset = i;
      return false;
    }
    for (size_t k = 2; k < len; ++k) {
      if ((p[i + k] & 0xC0) != 0x80) {
        if (bad_offset) *bad_offset = i;
        return false;
      }
    }
    i += len;
  }
  return true;
}

std::vector<std::string_view> split_chunks(std::string_view text, size_t max_bytes) {
  DFSSM_ASSERT(max_bytes >= 4, "max_bytes ", max_bytes);
  std::vector<std::string_view> out;
  size_t p = 0;
  while (p < text.size()) {
    size_t e = std::min(text.size(), p + max_bytes);
    if (e < text.size()) {
      const size_t nl = text.rfind('\n', e - 1);
      if (nl != std::string_view::npos && nl >= p) {
        e = nl + 1;
      } else {
        // No newline in range: cut at a character boundary (never inside a UTF-8 sequence).
        while (e > p + 1 && (static_cast<unsigned char>(text[e]) & 0xC0) == 0x80) --e;
      }
    }
    out.push_back(text.substr(p, e - p));
    p = e;
  }
  return out;
}

bool has_glob_chars(std::string_view s) { return s.find_first_of("*?") != std::string_view::npos; }

namespace {

// `*` and `?` within one component (no '/').
bool match_component(std::string_view p, std::string_view s) {
  size_t pi = 0, si = 0, star = std::string_view::npos, mark = 0;
  while (si < s.size()) {
    if (pi < p.size() && (p[pi] == '?' || p[pi] == s[si])) {
      ++pi;
      ++si;
    } else if (pi < p.size() && p[pi] == '*') {
      star = pi++;
      mark = si;
    } else if (star != std::string_view::npos) {
      pi = star + 1;
      si = ++mark;
    } else {
      return false;
    }
  }
  while (pi < p.size() && p[pi] == '*') ++pi;
  return pi == p.size();
}

std::vector<std::string_view> components(std::string_view s) {
  std::vector<std::string_view> out;
  size_t p = 0;
  while (p <= s.size()) {
    const size_t e = std::min(s.find('/', p), s.size());
    if (e > p) out.push_back(s.substr(p, e - p));
    p = e + 1;
  }
  return out;
}

bool match_components(const std::vector<std::string_view>& P, size_t i, const std::vector<std::string_view>& S,
                      size_t j) {
  if (i == P.size()) return j == S.size();
  if (P[i] == "**") {
    for (size_t k = j; k <= S.size(); ++k)
      if (match_components(P, i + 1, S, k)) return true;
    return false;
  }
  return j < S.size() && match_component(P[i], S[j]) && match_components(P, i + 1, S, j + 1);
}

bool excluded(const std::vector<std::string>& exclude, const std::string& rel) {
  for (const auto& e : exclude)
    if (glob_match(e, rel)) return true;
  return false;
}

}  // namespace

bool glob_match(std::string_view pattern, std::string_view path) {
  return match_components(components(pattern), 0, components(path), 0);
}

std::vector<FoundFile> expand_path(const std::string& spec, const std::vector<std::string>& exclude) {
  std::vector<FoundFile> out;
  std::string root, pattern;
  if (!has_glob_chars(spec)) {
    std::error_code ec;
    const auto st = fs::status(spec, ec);
    DFSSM_CHECK(!ec && fs::exists(st), "source path '", spec, "' does not exist");
    if (fs::is_regular_file(st)) {
      out.push_back({spec, fs::path(spec).filename().string()});
      return out;
    }
    DFSSM_CHECK(fs::is_directory(st), "source path '", spec, "' is neither a file nor a directory");
    root = spec;
    pattern = "**";
  } else {
    // The fixed prefix (components without wildcards) is the directory to walk.
    const auto comps = components(spec);
    size_t k = 0;
    std::string prefix = spec[0] == '/' ? "/" : "";
    for (; k < comps.size() && !has_glob_chars(comps[k]); ++k) {
      prefix += std::string(comps[k]);
      prefix += '/';
    }
    for (size_t i = k; i < comps.size(); ++i) {
      if (!pattern.empty()) pattern += '/';
      pattern += std::string(comps[i]);
    }
    root = prefix.empty() ? "." : prefix;
    std::error_code ec;
    DFSSM_CHECK(fs::is_directory(root, ec), "source glob '", spec, "': directory '", root, "' does not exist");
  }
  while (root.size() > 1 && root.back() == '/') root.pop_back();
  const bool any_depth = pattern.find("**") != std::string::npos;
  const size_t depth = components(pattern).size();  // files sit at this depth unless `**`

  std::error_code ec;
  fs::recursive_directory_iterator it(root, fs::directory_options::skip_permission_denied, ec), end;
  DFSSM_CHECK(!ec, "cannot list directory '", root, "': ", ec.message());
  const std::string prefix = root == "/" ? "/" : root + "/";
  for (; it != end; it.increment(ec)) {
    DFSSM_CHECK(!ec, "error while listing '", root, "': ", ec.message());
    const std::string p = it->path().string();
    const std::string rel = p.compare(0, prefix.size(), prefix) == 0 ? p.substr(prefix.size()) : p;
    std::error_code ec2;
    if (it->is_directory(ec2)) {
      if (excluded(exclude, rel) || (!any_depth && size_t(it.depth()) + 1 >= depth)) it.disable_recursion_pending();
      continue;
    }
    if (!it->is_regular_file(ec2)) continue;
    if (!glob_match(pattern, rel) || excluded(exclude, rel)) continue;
    out.push_back({p, rel});
  }
  std::sort(out.begin(), out.end(), [](const FoundFile& a, const FoundFile& b) { return a.path < b.path; });
  return out;
}

std::string read_file(const std::string& path) {
  std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "rb"), &std::fclose);
  DFSSM_CHECK(f, path, ": cannot open for reading (", std::strerror(errno), ")");
  std::string s;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f.get())) > 0) s.append(buf, n);
  DFSSM_CHECK(!std::ferror(f.get()), path, ": read error");
  return s;
}

std::string human_bytes(uint64_t b) {
  char buf[32];
  if (b >= (1ull << 30)) std::snprintf(buf, sizeof buf, "%.2f GiB", double(b) / double(1ull << 30));
  else if (b >= (1ull << 20)) std::snprintf(buf, sizeof buf, "%.2f MiB", double(b) / double(1ull << 20));
  else if (b >= 1024) std::snprintf(buf, sizeof buf, "%.1f KiB", double(b) / 1024.0);
  else std::snprintf(buf, sizeof buf, "%llu B", (unsigned long long)b);
  return buf;
}

std::string with_commas(uint64_t v) {
  std::string s = std::to_string(v);
  for (int i = int(s.size()) - 3; i > 0; i -= 3) s.insert(size_t(i), ",");
  return s;
}

}  // namespace dfssm::data
