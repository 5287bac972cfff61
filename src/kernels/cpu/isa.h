// CPU instruction-set dispatch for the runtime's kernels.
//
// Three paths: scalar (always works, the _ref twins), AVX2+FMA+F16C, and AVX-512
// (F, BW, VL, DQ; VNNI where the CPU has it). detect_isa() reads CPUID and checks that the OS
// saves the wide registers (XGETBV). active_isa() is what the runtime uses: the best detected
// one, or the one forced by the environment variable DFSSM_CPU_ISA=scalar|avx2|avx512 (a forced
// ISA the CPU lacks is an error, never a silent fallback, so a benchmark cannot lie).
#pragma once

#include <string>
#include <vector>

namespace dfssm::kernels::cpu {

enum class Isa { Scalar = 0, Avx2 = 1, Avx512 = 2 };

const char* isa_name(Isa isa);
// Throws dfssm::Error for an unknown name.
Isa isa_from_name(const std::string& name);

bool isa_supported(Isa isa);
// The CPU has AVX-512 VNNI (vpdpbusd): the int8 variant of the sign GEMM can run.
bool cpu_has_avx512_vnni();
Isa detect_isa();
// All supported ISAs, scalar first: what the tests iterate over.
std::vector<Isa> supported_isas();
// DFSSM_CPU_ISA if set (checked), else detect_isa().
Isa active_isa();

}  // namespace dfssm::kernels::cpu
