#include "kernels/cpu/isa.h"

#include <cpuid.h>

#include <cstdint>
#include <cstdlib>

#include "core/error.h"

namespace dfssm::kernels::cpu {

namespace {
struct Features {
  bool avx2 = false, fma = false, f16c = false, avx512 = false, vnni = false;
};

uint64_t xgetbv0() {
  uint32_t eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (uint64_t(edx) << 32) | eax;
}

Features read_features() {
  Features f;
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool osxsave = c & (1u << 27), avx = c & (1u << 28);
  f.fma = c & (1u << 12);
  f.f16c = c & (1u << 29);
  if (!osxsave || !avx) return f;
  const uint64_t xcr0 = xgetbv0();
  const bool ymm_os = (xcr0 & 0x6) == 0x6;      // SSE + AVX state saved by the OS
  const bool zmm_os = (xcr0 & 0xe6) == 0xe6;    // + opmask and both ZMM halves
  if (!ymm_os || __get_cpuid_max(0, nullptr) < 7) return f;
  __cpuid_count(7, 0, a, b, c, d);
  f.avx2 = (b & (1u << 5)) && f.fma && f.f16c;
  const bool avx512f = b & (1u << 16), dq = b & (1u << 17), bw = b & (1u << 30), vl = b & (1u << 31);
  f.avx512 = zmm_os && f.avx2 && avx512f && dq && bw && vl;
  f.vnni = f.avx512 && (c & (1u << 11));
  return f;
}

const Features& features() {
  static const Features f = read_features();
  return f;
}
}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return "scalar";
    case Isa::Avx2: return "avx2";
    case Isa::Avx512: return "avx512";
  }
  return "?";
}

Isa isa_from_name(const std::string& name) {
  if (name == "scalar") return Isa::Scalar;
  if (name == "avx2") return Isa::Avx2;
  if (name == "avx512") return Isa::Avx512;
  throw Error(str("unknown CPU ISA '", name, "' (expected scalar, avx2 or avx512)"));
}

bool isa_supported(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return true;
    case Isa::Avx2: return features().avx2;
    case Isa::Avx512: return features().avx512;
  }
  return false;
}

bool cpu_has_avx512_vnni() { return features().vnni; }

Isa detect_isa() {
  if (isa_supported(Isa::Avx512)) return Isa::Avx512;
  if (isa_supported(Isa::Avx2)) return Isa::Avx2;
  return Isa::Scalar;
}

std::vector<Isa> supported_isas() {
  std::vector<Isa> out;
  for (Isa i : {Isa::Scalar, Isa::Avx2, Isa::Avx512})
    if (isa_supported(i)) out.push_back(i);
  return out;
}

Isa active_isa() {
  const char* env = std::getenv("DFSSM_CPU_ISA");
  if (!env || !*env) return detect_isa();
  const Isa want = isa_from_name(env);
  DFSSM_CHECK(isa_supported(want), "DFSSM_CPU_ISA=", env, " but this CPU does not support it (best available: ",
              isa_name(detect_isa()), ")");
  return want;
}

}  // namespace dfssm::kernels::cpu
