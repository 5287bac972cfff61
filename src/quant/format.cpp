#include "quant/format.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/dtype.h"
#include "core/error.h"

namespace dfssm::quant {

const std::vector<QuantFormat>& formats() {
  static const std::vector<QuantFormat> table = {
      {FormatId::Binary, "binary", 1, -1, 1, true, false,
       "sign bits with a rank-1 magnitude field diag(a) S diag(b) (OneBit)"},
      {FormatId::BinaryLowRank, "binary_lowrank", 1, -1, 1, true, true,
       "binary + an int8 low-rank correction U V^T (DF-SSM, the default)"},
      {FormatId::Ternary, "ternary", 2, -1, 1, false, false,
       "{-1,0,+1} codes with an absmean scale per row or per tensor (BitNet b1.58)"},
      {FormatId::Int4, "int4", 4, -7, 7, false, false, "symmetric 4-bit codes with an fp16 scale per group of inputs"},
  };
  return table;
}

const QuantFormat& format(FormatId id) {
  for (const auto& f : formats())
    if (f.id == id) return f;
  DFSSM_ASSERT(false, "unknown format id ", int(id));
  throw;  // unreachable
}

const QuantFormat& format_by_name(const std::string& name) {
  std::string known;
  for (const auto& f : formats()) {
    if (name == f.name) return f;
    known += (known.empty() ? "" : ", ") + std::string(f.name);
  }
  throw Error(str("unknown quant format '", name, "' (known: ", known, ")"));
}

namespace {
// The unsigned field of `bits` bits that encodes `code` (two's complement; binary maps -1 -> 0).
uint8_t encode(const QuantFormat& f, int8_t code) {
  if (f.bits == 1) return code >= 0 ? 1 : 0;
  return uint8_t(code) & uint8_t((1u << f.bits) - 1);
}

int8_t decode(const QuantFormat& f, uint8_t field) {
  if (f.bits == 1) return field ? 1 : -1;
  const int shift = 8 - f.bits;  // sign-extend the field
  return int8_t(int8_t(field << shift) >> shift);
}
}  // namespace

void pack_codes(const QuantFormat& f, const int8_t* codes, int64_t rows, int64_t cols, uint8_t* packed) {
  const int64_t rb = f.row_bytes(cols);
  std::memset(packed, 0, size_t(rows * rb));
  for (int64_t r = 0; r < rows; ++r) {
    uint8_t* out = packed + r * rb;
    const int8_t* in = codes + r * cols;
    for (int64_t c = 0; c < cols; ++c) {
      const int64_t bit = c * f.bits;
      out[bit / 8] |= uint8_t(encode(f, in[c]) << (bit % 8));
    }
  }
}

void unpack_codes(const QuantFormat& f, const uint8_t* packed, int64_t rows, int64_t cols, int8_t* codes) {
  const int64_t rb = f.row_bytes(cols);
  const uint8_t mask = uint8_t((1u << f.bits) - 1);
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* in = packed + r * rb;
    for (int64_t c = 0; c < cols; ++c) {
      const int64_t bit = c * f.bits;
      codes[r * cols + c] = decode(f, uint8_t((in[bit / 8] >> (bit % 8)) & mask));
    }
  }
}

int64_t count_invalid_codes(const QuantFormat& f, const uint8_t* packed, int64_t rows, int64_t cols) {
  const int64_t rb = f.row_bytes(cols);
  const uint8_t mask = uint8_t((1u << f.bits) - 1);
  int64_t bad = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* in = packed + r * rb;
    for (int64_t bit = 0; bit < rb * 8; bit += f.bits) {
      const uint8_t v = uint8_t((in[bit / 8] >> (bit % 8)) & mask);
      if (bit >= cols * f.bits) bad += v != 0;                     // padding must be zero
      else if (f.id == FormatId::Ternary) bad += v == 0b10;        // undefined trit
    }
  }
  return bad;
}

void pack_signs(const float* w, int64_t rows, int64_t cols, uint8_t* packed) {
  const auto& f = format(FormatId::Binary);
  std::vector<int8_t> codes(size_t(rows * cols));
  for (int64_t i = 0; i < rows * cols; ++i) codes[size_t(i)] = w[i] >= 0.f ? 1 : -1;
  pack_codes(f, codes.data(), rows, cols, packed);
}

void unpack_signs(const uint8_t* packed, int64_t rows, int64_t cols, float* pm1) {
  std::vector<int8_t> codes(size_t(rows * cols));
  unpack_codes(format(FormatId::Binary), packed, rows, cols, codes.data());
  for (int64_t i = 0; i < rows * cols; ++i) pm1[i] = float(codes[size_t(i)]);
}

float round_half_even(float x) { return std::nearbyint(x); }  // default FE_TONEAREST

void quantize_int8_rows(const float* x, int64_t rows, int64_t cols, int8_t* q, uint16_t* scales_f16) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = x + r * cols;
    float amax = 0.f;
    for (int64_t c = 0; c < cols; ++c) amax = std::max(amax, std::fabs(row[c]));
    uint16_t s16 = float_to_half(amax > 0.f ? amax / 127.f : 1.f);
    if (half_to_float(s16) == 0.f) s16 = float_to_half(1.f);  // underflow: keep the row exact-zero
    const float s = half_to_float(s16);
    scales_f16[r] = s16;
    for (int64_t c = 0; c < cols; ++c)
      q[r * cols + c] = int8_t(std::clamp(round_half_even(row[c] / s), -127.f, 127.f));
  }
}

}  // namespace dfssm::quant
