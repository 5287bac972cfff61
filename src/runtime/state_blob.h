// The session-state blob shared by the CPU and CUDA sessions (docs/runtime.md, "State"): a 72-byte
// header (magic DFSSMST1, then int64 n_layer, conv_dim, d_conv, nheads, headdim, d_state, fp16
// flag, position) followed by the caches. Both sessions lay the caches out identically, so a
// blob saved by one restores into the other.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "core/error.h"
#include "model/config.h"

namespace dfssm::runtime {

struct StateHeader {
  char magic[8];
  int64_t n_layer, conv_dim, d_conv, nheads, headdim, d_state, f16, position;
};
inline constexpr char kStateMagic[8] = {'D', 'F', 'S', 'S', 'M', 'S', 'T', '1'};

// A blob of header + `cache_bytes` bytes, the caches left for the caller to fill.
inline std::vector<uint8_t> new_state_blob(const Mamba2Config& c, bool f16, int64_t position, uint64_t cache_bytes) {
  StateHeader h = {{}, c.n_layer, c.conv_dim(), c.d_conv, c.nheads(), c.headdim, c.d_state, f16 ? 1 : 0, position};
  std::memcpy(h.magic, kStateMagic, 8);
  std::vector<uint8_t> out(sizeof h + cache_bytes);
  std::memcpy(out.data(), &h, sizeof h);
  return out;
}

// Checks that `blob` fits a session of geometry `c`, state dtype and cache size; returns its
// header (the caches start at blob.data() + sizeof(StateHeader)). Throws dfssm::Error otherwise.
inline StateHeader check_state_blob(const std::vector<uint8_t>& blob, const Mamba2Config& c, bool f16,
                                    uint64_t cache_bytes) {
  DFSSM_CHECK(blob.size() >= sizeof(StateHeader) && std::memcmp(blob.data(), kStateMagic, 8) == 0,
              "not a dfssm session state (bad magic or too short)");
  StateHeader h;
  std::memcpy(&h, blob.data(), sizeof h);
  DFSSM_CHECK(h.n_layer == c.n_layer && h.conv_dim == c.conv_dim() && h.d_conv == c.d_conv && h.nheads == c.nheads() &&
                  h.headdim == c.headdim && h.d_state == c.d_state,
              "session state is for another geometry (n_layer ", h.n_layer, ", conv_dim ", h.conv_dim, ", nheads ",
              h.nheads, ", headdim ", h.headdim, ", d_state ", h.d_state, ")");
  DFSSM_CHECK(h.f16 == (f16 ? 1 : 0), "session state was saved with state dtype ", h.f16 ? "f16" : "f32",
              ", this session uses ", f16 ? "f16" : "f32");
  DFSSM_CHECK(blob.size() == sizeof h + cache_bytes, "session state has ", blob.size() - sizeof h,
              " bytes of caches, expected ", cache_bytes);
  DFSSM_CHECK(h.position >= 0, "session state has a negative position");
  return h;
}

}  // namespace dfssm::runtime
