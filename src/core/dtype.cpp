#include "core/dtype.h"

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
const char* dtype_name(DType t) { return info(t).name; }

std::optional<DType> dtype_from_name(const std::string& name) {
  for (const auto& e : kTable)
    if (name == e.name) return e.type;
  return std::nullopt;
}

}  // namespace dfssm
