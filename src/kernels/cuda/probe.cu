// Launch-floor probe (probe.h): a CUDA graph of K empty dependent kernels. Each kernel does what
// every decode kernel does around its body (griddepcontrol.launch_dependents, then
// griddepcontrol.wait) and one thread writes a word, so that the chain is not empty work.
#include <algorithm>
#include <vector>

#include "kernels/cuda/probe.h"

namespace dfssm::kernels::cuda {
namespace {
__global__ void empty_chain_kernel(int* flag) {
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
  asm volatile("griddepcontrol.wait;" ::: "memory");
  if (blockIdx.x == 0 && threadIdx.x == 0) flag[0] += 1;
}
}  // namespace

cudaError_t launch_floor_ms(int kernels, int blocks, int threads, bool pdl, int reps, float* ms_per_chain) {
  if (kernels < 1 || blocks < 1 || threads < 1 || reps < 1 || !ms_per_chain) return cudaErrorInvalidValue;
  int* flag = nullptr;
  cudaStream_t s = nullptr;
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  cudaEvent_t e0 = nullptr, e1 = nullptr;
  cudaError_t err = cudaMalloc(&flag, sizeof(int));
  if (err == cudaSuccess) err = cudaMemset(flag, 0, sizeof(int));
  if (err == cudaSuccess) err = cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
  if (err == cudaSuccess) err = cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal);
  if (err == cudaSuccess) {
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(unsigned(blocks));
    cfg.blockDim = dim3(unsigned(threads));
    cfg.stream = s;
    cfg.attrs = at;
    cfg.numAttrs = pdl ? 1 : 0;
    for (int k = 0; k < kernels && err == cudaSuccess; ++k) err = cudaLaunchKernelEx(&cfg, empty_chain_kernel, flag);
    const cudaError_t e2 = cudaStreamEndCapture(s, &graph);
    if (err == cudaSuccess) err = e2;
  }
  if (err == cudaSuccess) err = cudaGraphInstantiate(&exec, graph, 0);
  if (err == cudaSuccess) err = cudaEventCreate(&e0);
  if (err == cudaSuccess) err = cudaEventCreate(&e1);
  std::vector<float> t;
  for (int b = 0; b < 6 && err == cudaSuccess; ++b) {  // batch 0 warms up
    err = cudaEventRecord(e0, s);
    for (int r = 0; r < reps && err == cudaSuccess; ++r) err = cudaGraphLaunch(exec, s);
    if (err == cudaSuccess) err = cudaEventRecord(e1, s);
    if (err == cudaSuccess) err = cudaEventSynchronize(e1);
    float ms = 0;
    if (err == cudaSuccess) err = cudaEventElapsedTime(&ms, e0, e1);
    if (b > 0) t.push_back(ms / float(reps));
  }
  if (err == cudaSuccess) {
    std::sort(t.begin(), t.end());
    *ms_per_chain = t[t.size() / 2];
  }
  if (e0) cudaEventDestroy(e0);
  if (e1) cudaEventDestroy(e1);
  if (exec) cudaGraphExecDestroy(exec);
  if (graph) cudaGraphDestroy(graph);
  if (s) cudaStreamDestroy(s);
  if (flag) cudaFree(flag);
  return err;
}

}  // namespace dfssm::kernels::cuda
