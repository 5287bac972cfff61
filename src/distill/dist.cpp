#include "distill/dist.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <thread>
#include <cstdlib>
#include <cstring>

#include "core/error.h"

namespace dfssm::distill {

#ifdef DFSSM_HAVE_NCCL
std::unique_ptr<Comm> make_nccl_comm(int rank, int world, int local_rank, c10::intrusive_ptr<c10d::Store> store);
#endif
#ifdef DFSSM_HAVE_GLOO
std::unique_ptr<Comm> make_gloo_comm(int rank, int world, int local_rank, c10::intrusive_ptr<c10d::Store> store,
                                     const std::string& master_addr);
#endif

namespace detail {

at::Tensor flatten_fp32_cpu(const std::vector<at::Tensor>& ts) {
  std::vector<at::Tensor> parts;
  for (const auto& t : ts) parts.push_back(t.detach().to(at::kCPU, at::kFloat).reshape({-1}));
  return parts.empty() ? at::empty({0}, at::kFloat) : at::cat(parts);
}

void unflatten_into(const at::Tensor& flat, const std::vector<at::Tensor>& ts) {
  int64_t off = 0;
  for (const auto& t : ts) {
    const int64_t n = t.numel();
    t.detach().copy_(flat.narrow(0, off, n).view(t.sizes()));
    off += n;
  }
}

}  // namespace detail

namespace {
struct DoneWork : CommWork {
  void wait() override {}
};
}  // namespace

std::unique_ptr<CommWork> Comm::allreduce_mean_async(const at::Tensor& flat) {
  allreduce_mean({flat});
  return std::make_unique<DoneWork>();
}

namespace {

class SingleComm : public Comm {
 public:
  std::string backend() const override { return "single"; }
  void allreduce_mean(const std::vector<at::Tensor>&) override {}
  void barrier() override {}
};

class StoreComm : public Comm {
 public:
  StoreComm(int rank, int world, int local_rank, c10::intrusive_ptr<c10d::Store> store) : store_(std::move(store)) {
    rank_ = rank, world_ = world, local_rank_ = local_rank;
  }
  std::string backend() const override { return "store"; }

  void allreduce_mean(const std::vector<at::Tensor>& ts) override {
    const auto flat = detail::flatten_fp32_cpu(ts).contiguous();
    const auto* p = reinterpret_cast<const uint8_t*>(flat.data_ptr());
    const std::string tag = "ar/" + std::to_string(call_) + "/";
    store_->set(tag + std::to_string(rank_), std::vector<uint8_t>(p, p + flat.nbytes()));
    // Sum in rank order on every rank: identical results everywhere.
    auto sum = at::zeros_like(flat);
    for (int r = 0; r < world_; ++r) {
      auto bytes = store_->get(tag + std::to_string(r));
      DFSSM_ASSERT(bytes.size() == size_t(flat.nbytes()), "rank ", r, " sent ", bytes.size(), " bytes, expected ",
                   flat.nbytes(), " (do all ranks have the same model?)");
      sum += at::from_blob(bytes.data(), flat.sizes(), at::kFloat);
    }
    detail::unflatten_into(sum / double(world_), ts);
    // Every rank has read all keys of call n-1 before it could finish call n: drop ours of n-1.
    if (call_ >= 1) store_->deleteKey("ar/" + std::to_string(call_ - 1) + "/" + std::to_string(rank_));
    ++call_;
  }

  void barrier() override {
    const std::string key = "barrier/" + std::to_string(barriers_++);
    auto wait_for = [&](const std::string& k) {
      while (store_->add(k, 0) < world_) std::this_thread::sleep_for(std::chrono::milliseconds(2));
    };
    store_->add(key, 1);
    wait_for(key);
    // Rank 0 hosts the store: it leaves last, once every rank has stopped polling it.
    store_->add(key + "/out", 1);
    if (rank_ == 0) wait_for(key + "/out");
  }

 private:
  c10::intrusive_ptr<c10d::Store> store_;
  int64_t call_ = 0, barriers_ = 0;
};

int env_int(const char* name, int def) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoi(v) : def;
}

int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof a;
  DFSSM_CHECK(fd >= 0 && ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0,
              "--nproc: cannot find a free local port for the rendezvous");
  ::close(fd);
  return ntohs(a.sin_port);
}

}  // namespace

std::string Comm::backends_built() {
  std::string s;
#ifdef DFSSM_HAVE_NCCL
  s += "nccl ";
#endif
#ifdef DFSSM_HAVE_GLOO
  s += "gloo ";
#endif
  return s + "store";
}

std::string Comm::backend_problem(const std::string& backend, bool cuda) {
  if (backend == "nccl" && !cuda) return "dp_backend nccl needs device: cuda";
  const std::string built = " " + backends_built() + " ";
  if (backend == "auto" || built.find(" " + backend + " ") != std::string::npos) return "";
  return str("dp_backend ", backend, " is not in this build (it has:", built, ")",
             backend == "gloo"  ? "; install the Gloo headers (Debian: libgloo-dev) and re-run cmake"
             : backend == "nccl" ? "; build with CUDA and NCCL"
                                 : "; use auto, nccl, gloo or store");
}

std::unique_ptr<Comm> Comm::from_env(bool cuda, const std::string& backend) {
  const int world = env_int("WORLD_SIZE", 1);
  if (world <= 1) return std::make_unique<SingleComm>();
  const std::string problem = backend_problem(backend, cuda);
  DFSSM_CHECK(problem.empty(), problem);
  const int rank = env_int("RANK", -1), local = env_int("LOCAL_RANK", rank);
  const int local_world = env_int("LOCAL_WORLD_SIZE", world);
  DFSSM_CHECK(rank >= 0 && rank < world, "RANK must be in [0, WORLD_SIZE) (got RANK=", rank, ", WORLD_SIZE=", world, ")");
  const char* addr = std::getenv("MASTER_ADDR");
  const int port = env_int("MASTER_PORT", 29500);
  c10d::TCPStoreOptions o;
  o.port = uint16_t(port);
  o.isServer = rank == 0;
  o.numWorkers = size_t(world);
  o.waitWorkers = true;
  o.timeout = std::chrono::minutes(10);
  auto store = c10::make_intrusive<c10d::TCPStore>(addr ? addr : "127.0.0.1", o);
  std::unique_ptr<Comm> c;
#ifdef DFSSM_HAVE_NCCL
  if (cuda && (backend == "auto" || backend == "nccl")) c = make_nccl_comm(rank, world, local, store);
#endif
#ifdef DFSSM_HAVE_GLOO
  // auto on CUDA without NCCL takes the store: Gloo here is built for CPU tensors only.
  if (!c && ((backend == "auto" && !cuda) || backend == "gloo"))
    c = make_gloo_comm(rank, world, local, store, addr ? addr : "127.0.0.1");
#endif
  if (!c) c = std::make_unique<StoreComm>(rank, world, local, store);
  c->local_world_ = std::max(1, local_world);
  return c;
}

int launch_local(int nproc, const std::vector<std::string>& args) {
  DFSSM_CHECK(nproc >= 1, "--nproc must be >= 1");
  const int port = free_port();
  std::vector<pid_t> pids;
  for (int r = 0; r < nproc; ++r) {
    const pid_t pid = ::fork();
    DFSSM_CHECK(pid >= 0, "--nproc: fork failed");
    if (pid == 0) {
      ::setenv("RANK", std::to_string(r).c_str(), 1);
      ::setenv("LOCAL_RANK", std::to_string(r).c_str(), 1);
      ::setenv("WORLD_SIZE", std::to_string(nproc).c_str(), 1);
      ::setenv("LOCAL_WORLD_SIZE", std::to_string(nproc).c_str(), 1);
      ::setenv("MASTER_ADDR", "127.0.0.1", 1);
      ::setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
      std::vector<char*> argv;
      for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      ::execv("/proc/self/exe", argv.data());
      std::perror("execv");
      ::_exit(127);
    }
    pids.push_back(pid);
  }
  int rc = 0;
  for (size_t left = pids.size(); left > 0; --left) {
    int status = 0;
    const pid_t done = ::wait(&status);
    const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (code != 0 && rc == 0) {
      rc = code;
      for (pid_t p : pids)
        if (p != done) ::kill(p, SIGTERM);  // one rank failed: the others would wait forever
    }
  }
  return rc;
}

}  // namespace dfssm::distill
