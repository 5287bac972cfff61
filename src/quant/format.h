// Weight formats of the student's large linears, and their exact pack/unpack references.
// LibTorch-free: the exporter, the packed-file reader and the runtime share these functions, so
// what training fake-quantizes, what export stores and what the runtime decodes are one thing.
//
// Every format stores a matrix W (rows = out features, cols = in features) as integer codes per
// weight, bit-packed row by row (docs/format.md, "Code packing"):
//   * each row starts on an 8-byte boundary: row_bytes = ceil(cols * bits / 64) * 8; pad bits 0;
//   * weight c of a row sits at bit offset c*bits, little-endian within each byte (LSB first);
//   * binary  (1 bit):  1 -> +1, 0 -> -1 (sign(0) = +1 when packing);
//   * ternary (2 bits): 0b00 -> 0, 0b01 -> +1, 0b11 -> -1 (2-bit two's complement; 0b10 invalid);
//   * int4    (4 bits): two's complement nibble; dfssm writes -7..7 (symmetric), readers accept -8.
// Scales live in separate tensors (see QuantFormat::scale_shape); the magnitude field of the
// binary formats is diag(a)·S·diag(b), plus an optional int8 low-rank term (docs/method.md).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace dfssm::quant {

enum class FormatId : uint8_t { Binary, BinaryLowRank, Ternary, Int4 };

struct QuantFormat {
  FormatId id;
  const char* name;      // as written in configs and file metadata
  int bits;              // bits per weight code
  int8_t code_min, code_max;  // the codes the writer produces
  bool field;            // carries the rank-1 magnitude field (field_a [rows], field_b [cols])
  bool needs_rank;       // low-rank correction required (rank >= 1) / forbidden for plain binary
  const char* summary;

  int64_t row_bytes(int64_t cols) const { return (cols * bits + 63) / 64 * 8; }
  int64_t code_bytes(int64_t rows, int64_t cols) const { return rows * row_bytes(cols); }
};

// The table: one entry per format.
const std::vector<QuantFormat>& formats();
const QuantFormat& format(FormatId id);
// Throws dfssm::Error listing the known names.
const QuantFormat& format_by_name(const std::string& name);

// ---- Reference packing (scalar, exact) ---------------------------------------------------------
// codes: rows*cols int8 values (row-major); packed: rows*row_bytes bytes.
void pack_codes(const QuantFormat& f, const int8_t* codes, int64_t rows, int64_t cols, uint8_t* packed);
void unpack_codes(const QuantFormat& f, const uint8_t* packed, int64_t rows, int64_t cols, int8_t* codes);
// Counts codes the format does not define (ternary 0b10) and nonzero pad bits; 0 for a valid blob.
int64_t count_invalid_codes(const QuantFormat& f, const uint8_t* packed, int64_t rows, int64_t cols);

// Binary shorthands: sign(w) with sign(0) = +1, bit-packed as above.
void pack_signs(const float* w, int64_t rows, int64_t cols, uint8_t* packed);
void unpack_signs(const uint8_t* packed, int64_t rows, int64_t cols, float* pm1);

// ---- Reference quantizers (the rounding every path shares) ------------------------------------
// Symmetric int8 over each row of a rows x cols matrix: scale = fp16(max|row| / 127) (1 when the
// row is 0), q = clamp(round_half_even(x / scale), -127, 127). scales_f16 holds fp16 bits.
void quantize_int8_rows(const float* x, int64_t rows, int64_t cols, int8_t* q, uint16_t* scales_f16);
// Round half to even, as torch.round / at::round does (so fake quant and export agree).
float round_half_even(float x);

}  // namespace dfssm::quant
