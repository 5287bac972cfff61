// torch.save zip reader: byte-exact against safetensors copies written by Python (every dtype,
// shared / strided / offset storages, pickle protocols 2, 4, 5, ZIP64), and corrupt or
// unsupported inputs that must give a dfssm::Error naming the file (and tensor), never a crash.
//
// The archives are generated at test time by tests/golden/make_torch_zip.py with the venv's
// Python (DFSSM_PYTHON, set by ctest); without it the test is skipped with a warning.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "catch_compat.h"
#include "core/safetensors.h"
#include "core/torch_zip.h"
#include "test_util.h"

using namespace dfssm;
using dfssm::test::contains;
using dfssm::test::error_of;
namespace fs = std::filesystem;

namespace {

// Generates the archives once per process into a temp dir removed at exit; "" without Python.
struct TorchZipFixtures {
  std::string dir;
  TorchZipFixtures() {
    const char* py = std::getenv("DFSSM_PYTHON");
    if (!py || !*py) return;
    const auto d = fs::temp_directory_path() / ("dfssm_test_torch_zip_" + std::to_string(::getpid()));
    const std::string cmd = "'" + std::string(py) + "' '" + dfssm::test::source_dir() +
                            "/tests/golden/make_torch_zip.py' '" + d.string() + "' 2>&1";
    if (std::system(cmd.c_str()) != 0) {
      std::error_code ec;
      fs::remove_all(d, ec);
      throw std::runtime_error("make_torch_zip.py failed: " + cmd);
    }
    dir = d.string();
  }
  ~TorchZipFixtures() {
    std::error_code ec;
    if (!dir.empty()) fs::remove_all(dir, ec);
  }
};

const std::string& fixture_dir() {
  static TorchZipFixtures f;
  return f.dir;
}

std::string read_all(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), {});
}

void write_all(const std::string& p, const std::string& s) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(s.data(), std::streamsize(s.size()));
}

std::vector<std::string> lines(const std::string& p) {
  std::istringstream in(read_all(p));
  std::vector<std::string> v;
  for (std::string l; std::getline(in, l);) v.push_back(l);
  return v;
}

// Every tensor of `stem`.bin against `prefix`<name> in expected.safetensors: names (in order),
// dtype, shape and contiguous bytes.
void check_archive(const std::string& dir, const std::string& stem, const std::string& prefix) {
  INFO("archive " << stem);
  const auto ref = SafeTensorsFile::open(dir + "/expected.safetensors");
  const auto z = TorchZipFile::open(dir + "/" + stem + ".bin");
  const auto names = lines(dir + "/" + stem + ".names");
  REQUIRE(z.tensors().size() == names.size());
  for (size_t i = 0; i < names.size(); ++i) {
    const TorchZipTensor& t = z.tensors()[i];
    INFO("tensor " << t.name);
    REQUIRE(t.name == names[i]);
    REQUIRE(z.find(t.name) == &t);
    const TensorInfo& r = ref.get(prefix + t.name);
    REQUIRE(dtype_name(t.dtype) == std::string(dtype_name(r.dtype)));
    REQUIRE(t.shape == r.shape);
    REQUIRE(t.numel() == r.numel());
    std::vector<uint8_t> buf(r.nbytes() + 1, 0xa5);  // +1 guards against writing past the end
    z.copy_contiguous(t, buf.data());
    REQUIRE(buf.back() == 0xa5);
    REQUIRE(std::memcmp(buf.data(), ref.data(r), r.nbytes()) == 0);
  }
}

}  // namespace

TEST_CASE("torch.save archives read byte-exactly", "[torch_zip]") {
  const std::string dir = fixture_dir();
  if (dir.empty()) {
    WARN("DFSSM_PYTHON not set: skipping the torch.save reader test (ctest sets it)");
    return;
  }
  SECTION("every tensor matches the safetensors copy") {
    check_archive(dir, "pytorch_model", "sd.");
    for (const char* stem : {"mixed", "mixed_p4", "mixed_p5", "mixed_zip64_py", "mixed_zip64_full"})
      check_archive(dir, stem, "mixed.");
  }

  SECTION("state dict of a module: folder name and _metadata") {
    const auto z = TorchZipFile::open(dir + "/pytorch_model.bin");
    REQUIRE(z.tensors().size() == 5);
    const TorchZipTensor* w = z.find("1.weight");
    REQUIRE(w);
    REQUIRE(w->dtype == DType::F32);
    REQUIRE(w->shape == std::vector<int64_t>{4, 6});
    REQUIRE(w->is_contiguous());
    REQUIRE(contains(w->storage_key, "pytorch_model/data/"));
    REQUIRE(z.find("missing") == nullptr);
  }

  SECTION("storage sharing, views, dtypes and skipped values") {
    auto z = TorchZipFile::open(dir + "/mixed.bin");
    const auto* emb = z.find("emb");
    REQUIRE(emb);
    for (const char* n : {"tied", "tied_view", "emb_rows"}) {
      INFO(n);
      REQUIRE(z.find(n)->storage == emb->storage);
      REQUIRE(z.find(n)->storage_key == emb->storage_key);
    }
    REQUIRE(z.find("emb_rows")->storage_offset == 10);
    REQUIRE(!z.find("transposed")->is_contiguous());
    REQUIRE(z.find("transposed")->stride == std::vector<int64_t>{1, 6});
    REQUIRE(z.find("slice")->storage_offset == 5);
    REQUIRE(z.find("slice")->storage == z.find("strided")->storage);
    REQUIRE(z.find("strided")->stride == std::vector<int64_t>{3});
    REQUIRE(z.find("expanded")->stride == std::vector<int64_t>{1, 0});
    REQUIRE(z.find("scalar")->shape.empty());
    REQUIRE(z.find("scalar")->numel() == 1);
    REQUIRE(z.find("empty")->numel() == 0);
    REQUIRE(z.find("u16")->dtype == DType::U16);
    REQUIRE(z.find("f8")->dtype == DType::F8_E4M3);
    REQUIRE(z.find("bf16")->dtype == DType::BF16);
    REQUIRE(z.find("bool")->dtype == DType::BOOL);
    REQUIRE(z.find("param"));
    REQUIRE(z.find("attr"));
    for (const char* n : {"step", "config", "list", "huge_int", "nested", "config.nested"}) REQUIRE(z.find(n) == nullptr);
    // Move-only ownership of the mapping.
    TorchZipFile moved = std::move(z);
    REQUIRE(moved.find("emb")->storage == emb->storage);
    float first = 0;
    std::vector<float> all(40);
    moved.copy_contiguous(*moved.find("emb"), all.data());
    std::memcpy(&first, emb->storage, 4);
    REQUIRE(all[0] == first);
  }
}

TEST_CASE("bad torch.save archives give clear errors", "[torch_zip][errors]") {
  const std::string dir = fixture_dir();
  if (dir.empty()) {
    WARN("DFSSM_PYTHON not set: skipping the torch.save reader error test (ctest sets it)");
    return;
  }
  auto err = [&](const std::string& file) { return error_of([&] { TorchZipFile::open(dir + "/" + file); }); };
  struct Case {
    const char* file;
    std::vector<const char*> expect;
  };
  const Case cases[] = {
      {"legacy.bin", {"legacy.bin", "not a zip archive", "legacy"}},
      {"compressed.bin", {"compressed.bin", "is compressed"}},
      {"no_pkl.bin", {"no_pkl.bin", "no <folder>/data.pkl"}},
      {"missing_storage.bin", {"missing_storage.bin", "tensor 'half'", "mixed/data/0", "missing"}},
      {"short_storage.bin", {"short_storage.bin", "tensor 'half'", "mixed/data/0", "22 bytes"}},
      {"garbage_pkl.bin", {"garbage_pkl.bin", "data.pkl"}},
      {"no_tensors.bin", {"no_tensors.bin: no tensors found in the torch.save archive"}},
      {"not_dict.bin", {"not_dict.bin", "holds a list, expected a dict"}},
      {"too_small.bin", {"too_small.bin", "tensor 'w'", "needs 20 bytes", "has only 16"}},
      {"overflow.bin", {"overflow.bin", "tensor 'w'", "overflow"}},
      {"bad_dtype.bin", {"bad_dtype.bin", "tensor 'w'", "unsupported dtype torch.complex64"}},
      {"qtensor.bin", {"qtensor.bin", "tensor 'w'", "torch._utils._rebuild_qtensor", "not supported"}},
      {"big_endian.bin", {"big_endian.bin", "'big'-endian"}},
      {"does_not_exist.bin", {"does_not_exist.bin", "cannot open"}},
  };
  for (const Case& c : cases) {
    const std::string e = err(c.file);
    INFO(c.file << " -> " << e);
    for (const char* s : c.expect) CHECK(contains(e, s));
  }
  REQUIRE_THROWS_WITH(TorchZipFile::open(dir + "/no_tensors.bin"),
                      dir + "/no_tensors.bin: no tensors found in the torch.save archive");
}

TEST_CASE("corrupt torch.save archives never crash", "[torch_zip][errors]") {
  const std::string dir = fixture_dir();
  if (dir.empty()) {
    WARN("DFSSM_PYTHON not set: skipping the torch.save corruption test (ctest sets it)");
    return;
  }
  const std::string p = dir + "/corrupt.bin";
  auto open_err = [&](const std::string& bytes) {
    write_all(p, bytes);
    return error_of([&] { TorchZipFile::open(p); });  // other exception types fail the test
  };

  SECTION("every truncation is rejected") {
    for (const char* stem : {"pytorch_model", "mixed_zip64_full"}) {
      const std::string good = read_all(dir + "/" + stem + ".bin");
      REQUIRE(good.size() > 1000);
      for (size_t n = 0; n < good.size(); n += (n < 64 || n + 64 > good.size()) ? 1 : 7) {
        const std::string e = open_err(good.substr(0, n));
        INFO(stem << " cut at " << n << " -> " << e);
        REQUIRE(contains(e, "corrupt.bin"));
      }
    }
  }

  SECTION("random bytes are rejected") {
    std::mt19937 rng(7);
    for (size_t n : {0, 1, 21, 22, 100, 4096, 70000}) {
      std::string s(n, '\0');
      for (auto& c : s) c = char(rng());
      INFO("size " << n);
      REQUIRE(contains(open_err(s), "corrupt.bin"));
    }
    // An end-of-directory record alone, pointing at garbage.
    std::string eocd("PK\x05\x06\0\0\0\0\x01\0\x01\0\x2e\0\0\0\0\0\0\0\0\0", 22);
    REQUIRE(contains(open_err(std::string(46, 'x') + eocd), "corrupt zip central directory"));
  }

  SECTION("every byte of data.pkl mutated") {
    const std::string good = read_all(dir + "/pytorch_model.bin");
    size_t off = 0, len = 0;
    std::istringstream(read_all(dir + "/pytorch_model.pklrange")) >> off >> len;
    REQUIRE(len > 100);
    REQUIRE(off + len <= good.size());
    // A bad opcode is named with its offset.
    std::string s = good;
    REQUIRE(s[off + 2] == 'c');  // GLOBAL 'collections OrderedDict' right after PROTO 2
    s[off + 2] = char(0xff);
    REQUIRE(contains(open_err(s), "opcode 0xff at offset 2 of data.pkl"));
    // Any other mutation may happen to stay valid, but must never crash or read out of bounds.
    int rejected = 0, total = 0;
    for (size_t i = 0; i < len; ++i) {
      for (int v : {0x00, 0xff, 0x80, int(uint8_t(good[off + i]) ^ 0x01)}) {
        s = good;
        s[off + i] = char(v);
        rejected += !open_err(s).empty();
        ++total;
      }
    }
    WARN("single-byte data.pkl mutations rejected: " << rejected << " of " << total);
    REQUIRE(rejected > total / 2);
  }

  SECTION("random corruption anywhere") {
    const std::string good = read_all(dir + "/mixed.bin");
    std::mt19937 rng(1);
    int rejected = 0;
    for (int trial = 0; trial < 400; ++trial) {
      std::string s = good;
      const int flips = 1 + int(rng() % 8);
      for (int k = 0; k < flips; ++k) s[rng() % s.size()] = char(rng());
      if (trial % 5 == 0) s.resize(rng() % s.size());
      rejected += !open_err(s).empty();
    }
    WARN("randomly corrupted archives rejected: " << rejected << " of 400");
    REQUIRE(rejected > 0);
  }
}
