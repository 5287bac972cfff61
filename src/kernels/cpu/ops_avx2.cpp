// avx2 kernels (see ops.h). STUB: points at the scalar references until the vector versions land.
#include "kernels/cpu/ops.h"

namespace dfssm::kernels::cpu {

const KernelTable& kernel_table_avx2() {
  static const KernelTable t = {Isa::Avx2,      sign_gemm_ref,     sign_gemm_i8_ref, quantize_rows_i8_ref,
                                lowrank_down_ref,  lowrank_up_ref,    i8_rows_gemm_ref, f16_rows_gemm_ref,
                                conv_step_silu_ref, ssm_step_ref,     gated_rmsnorm_ref, add_rmsnorm_ref};
  return t;
}

}  // namespace dfssm::kernels::cpu
