// Single-threaded micro-benchmark of the CPU kernels at the Mamba-2 1.3B shapes (`dfssm bench
// --kernels`): the sign GEMM (in_proj 8512 x 2048 and out_proj 2048 x 4096, 1 bit per weight,
// rows of C/8 bytes) in every variant the CPU supports, at T = 1, 8 and 64 tokens, and the int8 /
// fp16 rows GEMMs (tied LM head 50288 x 2048) at T = 1. Each case streams weights from a buffer
// larger than the last-level cache (several copies, cycled) and, for the sign GEMM, also runs
// from one cache-resident copy to show compute speed. Reports ns per call, weights/s and GB/s of
// weight bytes streamed.
#pragma once

#include <string>

#include "kernels/cpu/ops.h"

namespace dfssm::kernels::cpu {

// The report (one line per case). seconds_per_case: the time spent on each case (>= 1 call).
std::string kernel_bench_report(double seconds_per_case);

// Alternative implementations, not in the kernel tables, exposed so the benchmark can compare
// them (only call after checking the ISA: isa_supported / cpu_has_avx512_vnni).
void sign_gemm_avx2_lut(const SignGemmArgs& a);        // the table entry: ±1 lookup + FMA
void sign_gemm_avx2_sllv(const SignGemmArgs& a);       // sllv sign bit + blendv(-x, x) + add
void sign_gemm_avx512(const SignGemmArgs& a);          // the table entry: maskadd at T=1, else blendfma
void sign_gemm_avx512_maskadd(const SignGemmArgs& a);  // masked add, 2P - Σx
void sign_gemm_avx512_blendfma(const SignGemmArgs& a); // blend(±1) per row + FMA per token
void sign_gemm_i8_avx512_vnni(const SignGemmI8Args& a);  // vpdpbusd (needs AVX-512 VNNI)
void sign_gemm_i8_avx512_bw(const SignGemmI8Args& a);
void sign_gemm_i16_avx512_movm(const SignGemmI16Args& a);  // vpmovm2w + vpmaddwd (slower than AVX2's; not in the table)    // vpmaddubsw + vpmaddwd (AVX-512 BW)

}  // namespace dfssm::kernels::cpu
