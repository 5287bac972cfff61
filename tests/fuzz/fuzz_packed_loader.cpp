// libFuzzer target for the runtime's packed-model loader (docs/runtime.md, "Fuzzing the loader").
//
// Each input is the whole bytes of a would-be .dfssm.safetensors file. It is written to an
// in-memory file (memfd) and loaded through the real path, runtime::Model::load -> PackedFile::open
// -> SafeTensorsFile::open (mmap included). Rejection must be a dfssm::Error; anything else is a
// finding: another exception (dfssm::InternalError = a broken invariant, a nlohmann exception =
// an unchecked JSON access), a crash, an ASan or UBSan report, a leak, or running past the RSS or
// time limit. A model that loads is then run: a 2-token prefill and one step on one thread, so
// every pointer the loader handed out is read by the kernels.
//
// The last input byte lies in the last tensor (norm_f or lm_head), so flipping its bits keeps a
// valid file valid; they pick the options, so every path gets fuzzed from the same seeds:
//   bit 0: LoadOptions::verify_codes   bit 1: the scalar (_ref) kernels instead of the CPU's best
//   bit 2: fp16 SSM state              bit 3: int8 activations (the int8 sign GEMM)
//
// DFSSM_FUZZ_VERBOSE=1 prints each input's outcome (the dfssm::Error message, or "loaded"): to
// check seeds (`fuzz_packed_loader -runs=0 SEED_DIR`) and to triage.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>
#include <string>
#include <typeinfo>

#include "core/error.h"
#include "runtime/model.h"
#include "runtime/session.h"

namespace {

// Sessions whose recurrent state + scratch would exceed this are skipped (the loader itself is
// still fuzzed). The state is n_layer * (d_conv * conv_dim + nheads * headdim * d_state) floats,
// which is not bounded by the file size alone: d_inner * d_state can be ~ (file size)^2.
constexpr double kMaxSessionBytes = 256.0 * 1024 * 1024;

bool verbose() {
  static const bool v = [] {
    const char* e = std::getenv("DFSSM_FUZZ_VERBOSE");
    return e && *e && *e != '0';
  }();
  return v;
}

int file_fd() {
  static const int fd = [] {
    const int f = memfd_create("dfssm-fuzz.dfssm.safetensors", 0);
    if (f < 0) {
      std::perror("memfd_create");
      std::abort();
    }
    return f;
  }();
  return fd;
}

void write_all(int fd, const uint8_t* data, size_t size) {
  if (ftruncate(fd, 0) != 0) {
    std::perror("ftruncate");
    std::abort();
  }
  size_t off = 0;
  while (off < size) {
    const ssize_t w = pwrite(fd, data + off, size - off, off_t(off));
    if (w <= 0) {
      std::perror("pwrite");
      std::abort();
    }
    off += size_t(w);
  }
}

double session_bytes(const dfssm::Mamba2Config& c, int64_t rows) {
  // doubles: a hostile geometry must not overflow the estimate itself.
  const double L = double(c.n_layer), d = double(c.d_model), di = double(c.d_inner());
  const double conv = double(c.d_conv) * double(c.conv_dim());
  const double ssm = double(c.nheads()) * double(c.headdim) * double(c.d_state);
  const double scratch = double(rows) * (2 * d + 3 * std::max(d, di) + double(c.d_in_proj()) +
                                         double(c.conv_dim()) + 2 * di) +
                         double(c.padded_vocab());
  return 4 * (L * (conv + ssm) + scratch);
}

void run(const std::string& path, uint8_t mode) {
  dfssm::runtime::LoadOptions lo;
  lo.verify_codes = mode & 1;
  const auto model = dfssm::runtime::Model::load(path, lo);

  dfssm::runtime::SessionOptions so;
  so.threads = 1;
  so.prefill_chunk = 2;
  if (mode & 2) so.isa = "scalar";
  if (mode & 4) so.state_dtype = "f16";
  so.act = (mode & 8) ? "i8" : (mode & 16) ? "f32" : "i16";
  if (session_bytes(model->config(), so.prefill_chunk) > kMaxSessionBytes) {
    if (verbose()) std::fprintf(stderr, "fuzz_packed_loader: loaded (session skipped: state too large)\n");
    return;
  }
  dfssm::runtime::Session session(model, 1, so);
  const int32_t tokens[2] = {0, model->config().vocab_size >= 2 ? 1 : 0};
  const float* logits = session.prefill(0, tokens, 2);
  volatile float sink = logits[session.vocab() - 1];  // the whole logits row is readable
  const int32_t next = 0;
  logits = session.step(&next);
  sink = logits[0];
  (void)sink;
  if (verbose())
    std::fprintf(stderr, "fuzz_packed_loader: loaded and ran (%s, isa %s, mode %d)\n", model->quant().format.c_str(),
                 dfssm::kernels::cpu::isa_name(session.isa()), int(mode));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const int fd = file_fd();
  write_all(fd, data, size);
  static const std::string path = "/proc/self/fd/" + std::to_string(fd);
  const uint8_t mode = size > 0 ? data[size - 1] : 0;
  try {
    run(path, mode);
  } catch (const dfssm::Error& e) {
    // Expected: bad input rejected with a message.
    if (verbose()) std::fprintf(stderr, "fuzz_packed_loader: rejected: %s\n", e.what());
  } catch (const std::exception& e) {
    // dfssm::InternalError (a DFSSM_ASSERT) or an exception that is not dfssm's: a bug.
    std::fprintf(stderr, "fuzz_packed_loader: unexpected %s: %s\n", typeid(e).name(), e.what());
    std::abort();
  }
  return 0;
}
