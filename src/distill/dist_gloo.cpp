// The Gloo backend of Comm (CPU data parallelism): LibTorch's c10d::ProcessGroupGloo over the
// job's TCPStore. Built only when the Gloo headers are found (DFSSM_HAVE_GLOO): the torch wheel
// contains Gloo and ProcessGroupGloo but not Gloo's headers, which Debian's libgloo-dev supplies
// (only the headers are used; nothing links libgloo).
//
// Every collective works on one contiguous fp32 CPU buffer. Gloo runs it on its own worker
// threads, so a gradient bucket's all-reduce overlaps the rest of the backward pass.
// Determinism: with 2 ranks every element is a + b, the same on both ranks and for any bucket
// layout; with more ranks the ring's summation order depends on the buffer's chunking, so bucket
// layouts may differ in the last bit (the store backend is order-exact for any world size).

// ProcessGroupGloo.hpp declares its class only under this macro (set by torch's own build).
#ifndef USE_C10D_GLOO
#define USE_C10D_GLOO 1
#endif
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>

#include <chrono>
#include <cstdlib>

#include "core/error.h"
#include "distill/dist.h"

namespace dfssm::distill {

namespace {

bool is_loopback(const std::string& a) { return a == "localhost" || a.rfind("127.", 0) == 0 || a == "::1"; }

class GlooComm : public Comm {
 public:
  GlooComm(int rank, int world, int local_rank, c10::intrusive_ptr<c10d::Store> store, const std::string& master) {
    rank_ = rank, world_ = world, local_rank_ = local_rank;
    auto opts = c10d::ProcessGroupGloo::Options::create(std::chrono::minutes(10));
    // All ranks on this host (MASTER_ADDR is loopback): bind loopback, which always resolves.
    // Otherwise GLOO_SOCKET_IFNAME picks the interface, else the hostname's address (as torch).
    const char* ifname = std::getenv("GLOO_SOCKET_IFNAME");
    if (ifname && *ifname) opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
    else if (is_loopback(master)) opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
    else opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    opts->threads = 2;  // one per concurrently running bucket is plenty on CPU
    // Gloo's rendezvous keys under their own prefix: apart from the store backend's and barriers'.
    auto prefixed = c10::make_intrusive<c10d::PrefixStore>("gloo", std::move(store));
    pg_ = c10::make_intrusive<c10d::ProcessGroupGloo>(prefixed, rank, world, opts);
  }
  std::string backend() const override { return "gloo"; }

  void allreduce_mean(const std::vector<at::Tensor>& ts) override {
    if (ts.empty()) return;
    std::vector<at::Tensor> flat{detail::flatten_fp32_cpu(ts).contiguous()};
    pg_->allreduce(flat)->wait();
    flat[0].div_(double(world_));
    detail::unflatten_into(flat[0], ts);
  }

  std::unique_ptr<CommWork> allreduce_mean_async(const at::Tensor& flat) override {
    DFSSM_ASSERT(flat.scalar_type() == at::kFloat && flat.is_contiguous(),
                 "allreduce_mean_async: needs a contiguous fp32 tensor");
    if (!flat.is_cpu()) return Comm::allreduce_mean_async(flat);  // CUDA tensors: through a CPU copy
    std::vector<at::Tensor> v{flat};
    auto w = std::make_unique<Work>();
    w->work = pg_->allreduce(v);
    w->flat = flat;
    w->world = world_;
    return w;
  }

  void barrier() override { pg_->barrier()->wait(); }

 private:
  struct Work : CommWork {
    c10::intrusive_ptr<c10d::Work> work;
    at::Tensor flat;
    int world = 1;
    void wait() override {
      if (!work) return;
      work->wait();
      flat.div_(double(world));
      work.reset();
    }
  };
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg_;
};

}  // namespace

std::unique_ptr<Comm> make_gloo_comm(int rank, int world, int local_rank, c10::intrusive_ptr<c10d::Store> store,
                                     const std::string& master_addr) {
  return std::make_unique<GlooComm>(rank, world, local_rank, std::move(store), master_addr);
}

}  // namespace dfssm::distill
