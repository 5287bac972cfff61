// Single-threaded micro-benchmark of the CPU kernels at the Mamba-2 1.3B shapes (see
// kernel_bench.h). Weights: one buffer of random packed bits (48 copies of in_proj's
// 8512 x 2048 bits ≈ 105 MB, well past any LLC) that the "stream" cases walk through copy after
// copy, so every call reads its weights from DRAM like decode does across 48 layers; the "cached"
// cases call on one copy again and again (compute speed: in_proj's 2.2 MB and out_proj's 1 MB of
// bits sit in L2/L3). Per case: ns per call, weights/s (R·C per call), GB/s of weight bytes read
// and, for T > 1, weight·token MACs/s.
//
// Compiled with the library's default flags: every fast path is reached through the kernel
// tables or the variant functions of kernel_bench.h, each only after its CPUID check.
#include "kernels/cpu/kernel_bench.h"

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/cpu/isa.h"
#include "kernels/cpu/ops.h"

namespace dfssm::kernels::cpu {

namespace {

using Clock = std::chrono::steady_clock;

uint64_t splitmix(uint64_t& s) {
  uint64_t z = (s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

void fill_random(void* p, size_t bytes, uint64_t seed) {
  uint8_t* b = static_cast<uint8_t*>(p);
  size_t i = 0;
  for (; i + 8 <= bytes; i += 8) {
    const uint64_t v = splitmix(seed);
    std::memcpy(b + i, &v, 8);
  }
  for (; i < bytes; ++i) b[i] = uint8_t(splitmix(seed));
}

std::vector<float> gaussianish(size_t n, uint64_t seed) {  // sum of 4 uniforms: mean 0, sd ~1
  std::vector<float> v(n);
  for (auto& x : v) {
    float s = 0;
    for (int k = 0; k < 4; ++k) s += float(splitmix(seed) >> 40) * (1.0f / 16777216.0f) - 0.5f;
    x = s * 1.732f;
  }
  return v;
}

// Calls f(copy_index) until `seconds` have passed: one warm-up call, then timed calls (the
// warm-up alone is the measurement when it already took `seconds`: the slow scalar cases).
template <class F>
double time_per_call(double seconds, int copies, F&& f) {
  const auto w0 = Clock::now();
  f(0);
  const double warm = std::chrono::duration<double>(Clock::now() - w0).count();
  if (warm >= seconds) return warm;
  int64_t calls = 0;
  int c = 1 % copies;
  const auto t0 = Clock::now();
  double el = 0;
  do {
    f(c);
    c = (c + 1) % copies;
    ++calls;
    el = std::chrono::duration<double>(Clock::now() - t0).count();
  } while (el < seconds);
  return el / double(calls);
}

void line(std::string& out, const char* op, const char* shape, int64_t T, const std::string& variant, const char* mode,
          double sec, double weights, double bytes) {
  char buf[320];
  std::snprintf(buf, sizeof buf, "%-13s %-22s T=%-3lld %-24s %-6s %12.0f ns/call %8.2f Gweight/s %7.2f GB/s", op, shape,
                (long long)T, variant.c_str(), mode, sec * 1e9, weights / sec * 1e-9, bytes / sec * 1e-9);
  out += buf;
  if (T > 1) {
    std::snprintf(buf, sizeof buf, " %8.2f GMAC/s", weights * double(T) / sec * 1e-9);
    out += buf;
  }
  out += "\n";
}

struct SgVariant {
  std::string name;
  void (*f32)(const SignGemmArgs&);
  void (*i8)(const SignGemmI8Args&);
  void (*i16)(const SignGemmI16Args&) = nullptr;
};

std::vector<SgVariant> sign_gemm_variants() {
  std::vector<SgVariant> v;
  v.push_back({"scalar ref", sign_gemm_ref, nullptr});
  v.push_back({"scalar i16 ref", nullptr, nullptr, sign_gemm_i16_ref});
  if (isa_supported(Isa::Avx2)) {
    v.push_back({"avx2 lut fma (table)", sign_gemm_avx2_lut, nullptr});
    v.push_back({"avx2 sllv blendv", sign_gemm_avx2_sllv, nullptr});
    v.push_back({"avx2 i8 maddubs (table)", nullptr, kernel_table(Isa::Avx2).sign_gemm_i8});
    v.push_back({"avx2 i16 cmpeq+maddwd", nullptr, nullptr, kernel_table(Isa::Avx2).sign_gemm_i16});
  }
  if (isa_supported(Isa::Avx512)) {
    v.push_back({"avx512 maskadd", sign_gemm_avx512_maskadd, nullptr});
    v.push_back({"avx512 blend fma", sign_gemm_avx512_blendfma, nullptr});
    if (cpu_has_avx512_vnni()) v.push_back({"avx512 i8 vnni", nullptr, sign_gemm_i8_avx512_vnni});
    v.push_back({"avx512 i8 bw maddubs", nullptr, sign_gemm_i8_avx512_bw});
    v.push_back({"avx512 i16 movm+maddwd", nullptr, nullptr, sign_gemm_i16_avx512_movm});
  }
  return v;
}

}  // namespace

std::string kernel_bench_report(double seconds_per_case) {
  std::string out;
  char buf[256];
  std::snprintf(buf, sizeof buf,
                "CPU kernel micro-benchmark: single thread, %.2f s per case; best ISA here: %s%s; active: %s\n",
                seconds_per_case, isa_name(detect_isa()), cpu_has_avx512_vnni() ? " (+VNNI)" : "",
                isa_name(active_isa()));
  out += buf;
  out += "stream = weights cycled through a 105 MB buffer (DRAM); cached = the same copy every call\n";

  // Packed-bit weights: 48 in_proj copies' worth of bytes, shared by both shapes.
  const int64_t kBig = 48LL * 8512 * (2048 / 8);
  std::vector<uint64_t> bits(size_t(kBig / 8));
  fill_random(bits.data(), size_t(kBig), 1);
  const uint8_t* codes = reinterpret_cast<const uint8_t*>(bits.data());

  struct Shape {
    const char* name;
    int64_t R, C;
  };
  const Shape shapes[] = {{"in_proj 8512x2048", 8512, 2048}, {"out_proj 2048x4096", 2048, 4096}};
  const std::vector<SgVariant> variants = sign_gemm_variants();
  for (const Shape& sh : shapes) {
    const int64_t row_bytes = sh.C / 8, wbytes = sh.R * row_bytes;
    const int copies = int(kBig / wbytes);
    const std::vector<float> a = gaussianish(size_t(sh.R), 2);
    for (int64_t T : {1, 8, 64}) {
      const std::vector<float> xb = gaussianish(size_t(T * sh.C), 3 + uint64_t(T));
      std::vector<int8_t> xq(static_cast<size_t>(T * sh.C));
      std::vector<float> xs(static_cast<size_t>(T)), y(static_cast<size_t>(T * sh.R));
      std::vector<int32_t> xsum(static_cast<size_t>(T));
      quantize_rows_i8_ref({xb.data(), sh.C, xq.data(), sh.C, xs.data(), xsum.data(), T, sh.C});
      std::vector<int16_t> xq16(static_cast<size_t>(T * sh.C));  // C is a multiple of 64: no padding
      quantize_rows_i16_ref({xb.data(), sh.C, xq16.data(), sh.C, xs.data(), xsum.data(), T, sh.C});
      for (const SgVariant& v : variants) {
        for (int stream = 1; stream >= 0; --stream) {
          if (!stream && (v.f32 == sign_gemm_ref || v.i16 == sign_gemm_i16_ref)) continue;  // compute-bound
          auto call = [&](int copy) {
            const uint8_t* w = codes + (stream ? int64_t(copy) * wbytes : 0);
            if (v.f32) {
              v.f32({w, row_bytes, a.data(), xb.data(), sh.C, y.data(), sh.R, T, sh.C, 0, sh.R});
            } else if (v.i16) {
              v.i16({w, row_bytes, a.data(), xq16.data(), sh.C, xs.data(), xsum.data(), y.data(), sh.R, T, sh.C, 0, sh.R});
            } else {
              v.i8({w, row_bytes, a.data(), xq.data(), sh.C, xs.data(), xsum.data(), y.data(), sh.R, T, sh.C, 0, sh.R});
            }
          };
          const double sec = time_per_call(seconds_per_case, stream ? copies : 1, call);
          line(out, "sign_gemm", sh.name, T, v.name, stream ? "stream" : "cached", sec, double(sh.R * sh.C),
               double(wbytes));
        }
      }
    }
  }
  bits.clear();
  bits.shrink_to_fit();

  // Tied int8 LM head (50288 x 2048 int8 = 103 MB: streams from DRAM by itself), and the same
  // shape in fp16 (206 MB), T = 1, for every ISA.
  {
    const int64_t R = 50288, C = 2048;
    std::vector<int8_t> q(static_cast<size_t>(R * C));
    fill_random(q.data(), q.size(), 4);
    const std::vector<float> scale = gaussianish(size_t(R), 5), x = gaussianish(size_t(C), 6);
    std::vector<float> y(static_cast<size_t>(R));
    for (Isa isa : supported_isas()) {
      const KernelTable& k = kernel_table(isa);
      const double sec = time_per_call(seconds_per_case, 1, [&](int) {
        k.i8_rows_gemm({q.data(), scale.data(), x.data(), C, y.data(), R, 1, C, 0, R});
      });
      line(out, "i8_rows_gemm", "lm_head 50288x2048", 1, isa_name(isa), "stream", sec, double(R * C), double(R * C));
    }
    q.clear();
    q.shrink_to_fit();
    std::vector<uint16_t> w(static_cast<size_t>(R * C));
    fill_random(w.data(), w.size() * 2, 7);
    for (auto& h : w) h = uint16_t((h & 0x83ff) | 0x2c00);  // finite halves of magnitude ~2^-4
    for (Isa isa : supported_isas()) {
      const KernelTable& k = kernel_table(isa);
      const double sec = time_per_call(seconds_per_case, 1, [&](int) {
        k.f16_rows_gemm({w.data(), x.data(), C, y.data(), R, 1, C, 0, R});
      });
      line(out, "f16_rows_gemm", "lm_head 50288x2048", 1, isa_name(isa), "stream", sec, double(R * C),
           double(R * C * 2));
    }
  }
  return out;
}

}  // namespace dfssm::kernels::cpu
