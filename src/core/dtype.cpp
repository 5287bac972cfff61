#include "core/dtype.h"

#include <cstring>

#include "core/error.h"

namespace dfssm {

namespace {
struct DTypeInfo {
  DType type;
  const char* name;
  size_t size;
};
constexpr DTypeInfo kTable[] = {
    {DType::F64, "F64", 8},      {DType::F32, "F32", 4},         {DType::F16, "F16", 2},
    {DType::BF16, "BF16", 2},    {DType::I64, "I64", 8},         {DType::I32, "I32", 4},
    {DType::I16, "I16", 2},      {DType::I8, "I8", 1},           {DType::U64, "U64", 8},
    {DType::U32, "U32", 4},      {DType::U16, "U16", 2},         {DType::U8, "U8", 1},
    {DType::BOOL, "BOOL", 1},    {DType::F8_E4M3, "F8_E4M3", 1}, {DType::F8_E5M2, "F8_E5M2", 1},
};

const DTypeInfo& info(DType t) {
  for (const auto& e : kTable)
    if (e.type == t) return e;
  DFSSM_ASSERT(false, "unknown DType ", int(t));
}
}  // namespace

size_t dtype_size(DType t) { return info(t).size; }

std::vector<float> floats_from(const uint8_t* p, DType t, size_t n, const std::string& what) {
  std::vector<float> out(n);
  for (size_t i = 0; i < n; ++i) {
    if (t == DType::F32) std::memcpy(&out[i], p + 4 * i, 4);
    else if (t == DType::F16) out[i] = half_to_float(uint16_t(p[2 * i] | p[2 * i + 1] << 8));
    else if (t == DType::I8) out[i] = float(int8_t(p[i]));
    else DFSSM_ASSERT(false, "floats_from() on ", what, " of dtype ", dtype_name(t));
  }
  return out;
}
const char* dtype_name(DType t) { return info(t).name; }

std::optional<DType> dtype_from_name(const std::string& name) {
  for (const auto& e : kTable)
    if (name == e.name) return e.type;
  return std::nullopt;
}

}  // namespace dfssm
