// The NCCL backend of Comm (CUDA data parallelism). Built only when NCCL is found.
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <nccl.h>

#include <optional>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include "core/error.h"
#include "distill/dist.h"

namespace dfssm::distill {

namespace {

#define NCCL_OK(x)                                                                              \
  do {                                                                                          \
    const ncclResult_t r_ = (x);                                                                \
    DFSSM_CHECK(r_ == ncclSuccess, "NCCL error in ", #x, ": ", ncclGetErrorString(r_));        \
  } while (0)

class NcclComm : public Comm {
 public:
  NcclComm(int rank, int world, int local_rank, c10::intrusive_ptr<c10d::Store> store) : store_(std::move(store)) {
    rank_ = rank, world_ = world, local_rank_ = local_rank;
    c10::cuda::set_device(c10::DeviceIndex(local_rank));
    ncclUniqueId id;
    if (rank == 0) {
      NCCL_OK(ncclGetUniqueId(&id));
      const auto* p = reinterpret_cast<const uint8_t*>(&id);
      store_->set("nccl_id", std::vector<uint8_t>(p, p + sizeof id));
    }
    const auto bytes = store_->get("nccl_id");
    DFSSM_ASSERT(bytes.size() == sizeof id, "bad ncclUniqueId from the store");
    std::memcpy(&id, bytes.data(), sizeof id);
    NCCL_OK(ncclCommInitRank(&comm_, world, id, rank));
  }
  ~NcclComm() override { ncclCommDestroy(comm_); }
  std::string backend() const override { return "nccl"; }

  void allreduce_mean(const std::vector<at::Tensor>& ts) override {
    if (ts.empty()) return;
    std::vector<at::Tensor> parts;
    const at::Device dev(at::kCUDA, c10::DeviceIndex(local_rank_));  // small CPU tensors (stats) go along
    for (const auto& t : ts) parts.push_back(t.detach().to(dev, at::kFloat).reshape({-1}));
    auto flat = at::cat(parts);
    const auto stream = at::cuda::getCurrentCUDAStream().stream();
    NCCL_OK(ncclAllReduce(flat.data_ptr(), flat.data_ptr(), size_t(flat.numel()), ncclFloat, ncclSum, comm_, stream));
    flat.div_(double(world_));
    int64_t off = 0;
    for (const auto& t : ts) {
      t.detach().copy_(flat.narrow(0, off, t.numel()).view(t.sizes()));
      off += t.numel();
    }
  }

  // On comm_stream_, after everything already queued on the caller's stream; the returned work
  // makes the caller's (then) current stream wait for it.
  std::unique_ptr<CommWork> allreduce_mean_async(const at::Tensor& flat) override {
    DFSSM_ASSERT(flat.is_cuda() && flat.scalar_type() == at::kFloat && flat.is_contiguous(),
                 "allreduce_mean_async: needs a contiguous fp32 CUDA tensor");
    if (!comm_stream_) comm_stream_ = at::cuda::getStreamFromPool(/*isHighPriority=*/true, c10::DeviceIndex(local_rank_));
    const auto cur = at::cuda::getCurrentCUDAStream(c10::DeviceIndex(local_rank_));
    at::cuda::CUDAEvent ready;
    ready.record(cur);
    ready.block(*comm_stream_);
    NCCL_OK(ncclAllReduce(flat.data_ptr(), flat.data_ptr(), size_t(flat.numel()), ncclFloat, ncclSum, comm_,
                          comm_stream_->stream()));
    {
      c10::cuda::CUDAStreamGuard g(*comm_stream_);
      flat.div_(double(world_));
    }
    c10::cuda::CUDACachingAllocator::recordStream(flat.storage().data_ptr(), *comm_stream_);
    auto w = std::make_unique<Work>();
    w->done.record(*comm_stream_);
    w->device = c10::DeviceIndex(local_rank_);
    return w;
  }

  void barrier() override {
    auto one = at::ones({1}, at::TensorOptions().device(at::kCUDA, local_rank_));
    allreduce_mean({one});
    at::cuda::getCurrentCUDAStream().synchronize();
  }

 private:
  struct Work : CommWork {
    at::cuda::CUDAEvent done;
    c10::DeviceIndex device = 0;
    void wait() override { done.block(at::cuda::getCurrentCUDAStream(device)); }
  };
  c10::intrusive_ptr<c10d::Store> store_;
  ncclComm_t comm_ = nullptr;
  std::optional<at::cuda::CUDAStream> comm_stream_;
};

}  // namespace

std::unique_ptr<Comm> make_nccl_comm(int rank, int world, int local_rank, c10::intrusive_ptr<c10d::Store> store) {
  return std::make_unique<NcclComm>(rank, world, local_rank, std::move(store));
}

}  // namespace dfssm::distill
