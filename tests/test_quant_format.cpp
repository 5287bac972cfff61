// The packed formats without LibTorch: bit-exact pack/unpack round trips at 1.3B shapes, the
// documented bit order, invalid-code detection, the shared int8 quantizer, the quant config's
// errors, and the layout/size accounting of the 1.3B geometry.
#include <cmath>
#include <random>

#include "catch_compat.h"
#include "core/error.h"
#include "quant/format.h"
#include "quant/layout.h"
#include "quant/quant_config.h"
#include "test_util.h"

using namespace dfssm;
using namespace dfssm::quant;
using dfssm::test::contains;
using dfssm::test::error_of;

namespace {
std::vector<int8_t> random_codes(const QuantFormat& f, int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> d(f.code_min, f.code_max);
  std::vector<int8_t> c(static_cast<size_t>(n));
  for (auto& x : c) {
    x = int8_t(d(rng));
    if (f.bits == 1 && x == 0) x = 1;  // binary codes are ±1
  }
  return c;
}
}  // namespace

TEST_CASE("pack/unpack round trip is bit-exact for every format at 1.3B shapes", "[quant][format]") {
  // in_proj (8512 x 2048) and out_proj (2048 x 4096) of Mamba-2 1.3B, plus an odd width that
  // exercises row padding.
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{8512, 2048}, {2048, 4096}, {7, 77}};
  uint32_t seed = 1;
  for (const auto& f : formats()) {
    for (auto [rows, cols] : shapes) {
      INFO(f.name << " " << rows << "x" << cols);
      const auto codes = random_codes(f, rows * cols, seed++);
      std::vector<uint8_t> packed(size_t(f.code_bytes(rows, cols)), 0xAB);
      pack_codes(f, codes.data(), rows, cols, packed.data());
      REQUIRE(f.row_bytes(cols) % 8 == 0);
      REQUIRE(f.row_bytes(cols) * 8 >= cols * f.bits);
      std::vector<int8_t> back(codes.size(), 99);
      unpack_codes(f, packed.data(), rows, cols, back.data());
      REQUIRE(back == codes);
      REQUIRE(count_invalid_codes(f, packed.data(), rows, cols) == 0);
    }
  }
}

TEST_CASE("bit order matches docs/format.md", "[quant][format]") {
  // binary: weight c at bit c%8 of byte c/8, 1 = +1.
  const std::vector<float> w = {1, -1, -1, 0, 1, -2, -3, 4, /*byte 1*/ -1, 5};
  std::vector<uint8_t> p(8);
  pack_signs(w.data(), 1, 10, p.data());
  REQUIRE(p[0] == 0b10011001);  // weights 0,3(=0 -> +1),4,7 positive
  REQUIRE(p[1] == 0b00000010);
  for (int i = 2; i < 8; ++i) REQUIRE(p[size_t(i)] == 0);  // row padding is zero
  // ternary: 2-bit two's complement, LSB first.
  const std::vector<int8_t> t = {1, -1, 0, 1};
  pack_codes(format(FormatId::Ternary), t.data(), 1, 4, p.data());
  REQUIRE(p[0] == uint8_t(0b01001101));
  // int4: low nibble first.
  const std::vector<int8_t> q = {-7, 3};
  pack_codes(format(FormatId::Int4), q.data(), 1, 2, p.data());
  REQUIRE(p[0] == 0x39);
}

TEST_CASE("invalid ternary codes and nonzero padding are detected", "[quant][format]") {
  const auto& f = format(FormatId::Ternary);
  std::vector<uint8_t> p(8, 0);
  p[0] = 0b10;  // undefined trit
  REQUIRE(count_invalid_codes(f, p.data(), 1, 4) == 1);
  p[0] = 0;
  p[7] = 0x40;  // a pad bit
  REQUIRE(count_invalid_codes(f, p.data(), 1, 4) == 1);
}

TEST_CASE("quantize_int8_rows: fp16 scales, round half to even, zero rows", "[quant][format]") {
  const std::vector<float> x = {127.f, 0.5f, -1.5f, 2.5f, /*row 1*/ 0, 0, 0, 0};
  std::vector<int8_t> q(8);
  std::vector<uint16_t> s(2);
  quantize_int8_rows(x.data(), 2, 4, q.data(), s.data());
  REQUIRE(half_to_float(s[0]) == 1.0f);
  REQUIRE(q[0] == 127);
  REQUIRE(q[1] == 0);   // 0.5 -> 0 (half to even)
  REQUIRE(q[2] == -2);  // -1.5 -> -2
  REQUIRE(q[3] == 2);   // 2.5 -> 2
  REQUIRE(half_to_float(s[1]) == 1.0f);
  for (int i = 4; i < 8; ++i) REQUIRE(q[size_t(i)] == 0);
  // Random rows: every value within half a step of the original.
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.f, 0.05f);
  std::vector<float> y(2048 * 16);
  for (auto& v : y) v = nd(rng);
  std::vector<int8_t> qy(y.size());
  std::vector<uint16_t> sy(16);
  quantize_int8_rows(y.data(), 16, 2048, qy.data(), sy.data());
  for (int64_t r = 0; r < 16; ++r)
    for (int64_t c = 0; c < 2048; ++c) {
      const float sc = half_to_float(sy[size_t(r)]);
      REQUIRE(std::fabs(float(qy[size_t(r * 2048 + c)]) * sc - y[size_t(r * 2048 + c)]) <= 0.5f * sc * 1.0001f + 1e-7f);
    }
}

TEST_CASE("quant config: parse, overrides and errors", "[quant][config]") {
  QuantConfig q;
  q.set("format", "ternary");
  q.set("rank", "0");
  q.set("ste_clip", "2");
  REQUIRE(q.ste_clip == 2.0);
  const auto back = QuantConfig::from_json(q.to_json(), "q.json");
  REQUIRE(back.to_json() == q.to_json());
  REQUIRE(contains(error_of([&] { q.set("rnak", "3"); }), "unknown quant key 'rnak'"));
  REQUIRE(contains(error_of([&] { q.set("rank", "x"); }), "must be an integer"));
  REQUIRE(contains(error_of([] { QuantConfig::from_json(R"({"format": "binary3"})", "q.json"); }),
                   "unknown quant format 'binary3'"));
  REQUIRE(contains(error_of([] { QuantConfig::from_json(R"({"format": "binary_lowrank", "rank": 0})", "q.json"); }),
                   "rank must be >= 1"));
  REQUIRE(contains(error_of([] { QuantConfig::from_json("{not json", "q.json"); }), "q.json: quant config is not valid JSON"));
}

TEST_CASE("layout of the 1.3B geometry: counts, bytes and the ~278 MB rank", "[quant][layout]") {
  const auto cfg = Mamba2Config::geometry("mamba2-1.3b");
  QuantConfig q;  // binary_lowrank, rank 19, int8 tied embedding
  const auto layout = packed_layout(cfg, q);
  int64_t weights = 0;
  for (const auto& t : layout) weights += t.weights;
  REQUIRE(weights == cfg.num_params());  // every teacher weight is represented exactly once
  // Hand count: signs 1 bit per projection weight (rows of 2048/4096 need no padding), fp16 field,
  // int8 low-rank + fp16 column scales, int8 embedding + fp16 row scales, fp16 conv/norms, fp32 SSM.
  const uint64_t L = 48, r = 19;
  const uint64_t signs = L * (8512ull * 2048 + 2048ull * 4096) / 8;
  const uint64_t field = L * 2 * (8512 + 2048 + 2048 + 4096);
  const uint64_t lowrank = L * ((8512 + 2048 + 2048 + 4096) * r + 4 * r * 2);
  const uint64_t emb = 50288ull * 2048 + 50288 * 2;
  const uint64_t conv = L * (4352 * 4 + 4352) * 2, norms = (L * (2048 + 4096) + 2048) * 2, ssm = L * 3 * 64 * 4;
  REQUIRE(packed_data_bytes(layout) == signs + field + lowrank + emb + conv + norms + ssm);
  const uint64_t total = packed_file_size(layout, basic_metadata(cfg, q));
  REQUIRE(total > 277'000'000);
  REQUIRE(total < 279'000'000);
  REQUIRE(rank_for_budget(cfg, q, 278'000'000) == 19);
}
