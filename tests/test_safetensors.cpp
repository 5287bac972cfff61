// safetensors reader/writer: round trip and every class of malformed file.
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <unistd.h>

#include "catch_compat.h"
#include "core/safetensors.h"
#include "test_util.h"

using namespace dfssm;
using dfssm::test::contains;
using dfssm::test::error_of;
namespace fs = std::filesystem;

namespace {

std::string tmp_path(const std::string& name) {
  const auto dir = fs::temp_directory_path() / ("dfssm_test_st_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  return (dir / name).string();
}

void write_raw(const std::string& path, const std::string& header, const std::string& data) {
  std::ofstream f(path, std::ios::binary);
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) f.put(char((n >> (8 * i)) & 0xff));
  f << header << data;
}

std::string read_all(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), {});
}

}  // namespace

TEST_CASE("safetensors round trip is exact", "[safetensors]") {
  std::mt19937 rng(42);
  std::normal_distribution<float> nd;
  std::vector<float> a(6 * 7);
  for (auto& v : a) v = nd(rng);
  std::vector<uint16_t> b(5);
  for (auto& v : b) v = float_to_half(nd(rng));
  std::vector<int8_t> c = {-128, -1, 0, 1, 127};
  const std::string path = tmp_path("rt.safetensors");
  write_safetensors(path,
                    {{"w.a", DType::F32, {6, 7}, a.data(), a.size() * 4},
                     {"w.b", DType::F16, {5}, b.data(), b.size() * 2},
                     {"empty", DType::F32, {0, 3}, nullptr, 0},
                     {"w.c", DType::I8, {5}, c.data(), c.size()}},
                    {{"format", "pt"}, {"note", "hello"}});
  const auto f = SafeTensorsFile::open(path);
  REQUIRE(f.tensors().size() == 4);
  REQUIRE(f.metadata().at("note") == "hello");
  const auto& ta = f.require("w.a", {6, 7}, DType::F32);
  REQUIRE(std::memcmp(f.data(ta), a.data(), a.size() * 4) == 0);
  const auto& tb = f.get("w.b");
  REQUIRE(tb.dtype == DType::F16);
  REQUIRE(std::memcmp(f.data(tb), b.data(), b.size() * 2) == 0);
  REQUIRE(std::memcmp(f.data(f.get("w.c")), c.data(), 5) == 0);
  REQUIRE(f.get("empty").nbytes() == 0);
  // No temp file is left behind by the atomic write.
  for (const auto& e : fs::directory_iterator(fs::path(path).parent_path()))
    REQUIRE(e.path().string().find(".tmp.") == std::string::npos);
}

TEST_CASE("half and bfloat16 conversions round to nearest even", "[dtype]") {
  REQUIRE(float_to_half(1.0f) == 0x3c00);
  REQUIRE(half_to_float(0x3c00) == 1.0f);
  REQUIRE(float_to_half(65504.0f) == 0x7bff);
  REQUIRE(float_to_half(1e6f) == 0x7c00);                 // overflow -> inf
  REQUIRE(half_to_float(0x0001) == std::ldexp(1.0f, -24));  // smallest subnormal
  REQUIRE(float_to_half(1.0f + std::ldexp(1.0f, -11)) == 0x3c00);  // tie -> even
  REQUIRE(float_to_bf16(1.0f) == 0x3f80);
  REQUIRE(bf16_to_float(0x3f80) == 1.0f);
  // Every half value survives half -> float -> half.
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const uint16_t x = uint16_t(h);
    if ((x & 0x7c00) == 0x7c00 && (x & 0x3ff)) continue;  // NaN payloads
    REQUIRE(float_to_half(half_to_float(x)) == x);
  }
}

TEST_CASE("malformed safetensors files give clear errors", "[safetensors][errors]") {
  const std::string ok_header = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  const std::string data(8, '\0');
  const std::string p = tmp_path("bad.safetensors");

  SECTION("a valid file opens") {
    write_raw(p, ok_header, data);
    REQUIRE(SafeTensorsFile::open(p).tensors().size() == 1);
  }
  SECTION("missing file") {
    REQUIRE(contains(error_of([&] { SafeTensorsFile::open(tmp_path("nope.safetensors")); }), "cannot open"));
  }
  SECTION("truncated data region") {
    write_raw(p, ok_header, data.substr(0, 5));
    REQUIRE(contains(error_of([&] { SafeTensorsFile::open(p); }), "past the data region"));
  }
  SECTION("file shorter than the length prefix") {
    std::ofstream(p, std::ios::binary) << "abc";
    REQUIRE(contains(error_of([&] { SafeTensorsFile::open(p); }), "too short"));
  }
  SECTION("header length past EOF") {
    write_raw(p, ok_header, data);
    std::string raw = read_all(p);
    raw[0] = char(0xff);
    raw[1] = char(0x7f);
    std::ofstream(p, std::ios::binary) << raw;
    REQUIRE(contains(error_of([&] { SafeTensorsFile::open(p); }), "past the end of the file"));
  }
  SECTION("overlapping offsets") {
    write_raw(p,
              R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
              std::string(12, '\0'));
    REQUIRE(contains(error_of([&] { SafeTensorsFile::open(p); }), "overlap"));
  }
  SECTION("gap between tensors") {
    write_raw(p,
              R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
              std::string(12, '\0'));
    REQUIRE(contains(error_of([&] { SafeTensorsFile::open(p); }), "gap"));
  }
  SECTION("out-of-range offsets") {
    write_raw(p, R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,800]}})", data);
    REQUIRE(contains(error_of([&] { SafeTensorsFile::open(p); }), "past the data region"));
  }
  SECTION("byte count that does not match the shape") {
    write_raw(p, R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", data);
    REQUIRE(contains(error_of([&] { SafeTensorsFile::open(p); }), "expected 12"));
  }
  SECTION("unknown dtype") {
    write_raw(p, R"({"a":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}})", data);
    REQUIRE(contains(error_of([&] { SafeTensorsFile::open(p); }), "unknown dtype \"F33\""));
  }
  SECTION("non-JSON header") {
    write_raw(p, "{this is not json", data);
    REQUIRE(contains(error_of([&] { SafeTensorsFile::open(p); }), "not valid JSON"));
  }
  SECTION("negative shape") {
    write_raw(p, R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", data);
    REQUIRE(contains(error_of([&] { SafeTensorsFile::open(p); }), "non-negative"));
  }
  SECTION("missing tensor and wrong shape on lookup") {
    write_raw(p, ok_header, data);
    const auto f = SafeTensorsFile::open(p);
    REQUIRE(contains(error_of([&] { f.get("b"); }), "missing tensor 'b'"));
    REQUIRE(contains(error_of([&] { f.require("a", {3}); }), "has shape [2], expected [3]"));
  }
  SECTION("random garbage never crashes") {
    std::mt19937 rng(7);
    for (int trial = 0; trial < 200; ++trial) {
      write_raw(p, ok_header, data);
      std::string raw = read_all(p);
      const int flips = 1 + int(rng() % 4);
      for (int k = 0; k < flips; ++k) raw[rng() % raw.size()] = char(rng());
      if (trial % 3 == 0) raw.resize(rng() % raw.size());
      std::ofstream(p, std::ios::binary | std::ios::trunc) << raw;
      try {
        SafeTensorsFile::open(p);
      } catch (const Error&) {
      }
    }
  }
}
