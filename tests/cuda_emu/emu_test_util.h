// Helpers shared by the emulator tests (test_cuda_emu_*.cpp): device-like aligned buffers, the
// relative error, and bf16 rounding. Include after cuda_emu.h (it defines __nv_bfloat16 there).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace dfssm::emu_test {

struct Buf {  // 256-byte aligned storage, as cudaMalloc gives
  void* p = nullptr;
  explicit Buf(size_t bytes) { p = std::aligned_alloc(256, (bytes + 255) / 256 * 256); }
  ~Buf() { std::free(p); }
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
  float* f() const { return static_cast<float*>(p); }
  __nv_bfloat16* h() const { return static_cast<__nv_bfloat16*>(p); }
  uint8_t* u8() const { return static_cast<uint8_t*>(p); }
};

// ‖a − b‖ / ‖b‖
inline double rel_err(const std::vector<float>& a, const std::vector<float>& b) {
  double d = 0, r = 0;
  for (size_t i = 0; i < a.size(); ++i) d += double(a[i] - b[i]) * (a[i] - b[i]), r += double(b[i]) * b[i];
  return std::sqrt(d / r);
}

inline float bf(float v) { return __bfloat162float(__float2bfloat16(v)); }

// A kernel's strided output (rows ld elements apart, es bytes each, the gaps pre-filled with 0x7f
// bytes) against the same values written contiguously (cols per row): elements that differ, and
// gap elements that were touched.
struct StridedDiff {
  size_t diff = 0, touched = 0;
};
inline StridedDiff strided_diff(const uint8_t* strided, int64_t ld, const uint8_t* dense, int64_t rows, int64_t cols,
                                size_t es) {
  StridedDiff d;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < ld; ++c) {
      const uint8_t* s = strided + size_t(r * ld + c) * es;
      if (c < cols)
        d.diff += std::memcmp(s, dense + size_t(r * cols + c) * es, es) != 0;
      else
        d.touched += s[0] != 0x7f || s[es - 1] != 0x7f;
    }
  return d;
}

}  // namespace dfssm::emu_test
