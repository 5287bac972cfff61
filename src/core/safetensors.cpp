#include "core/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "core/io_util.h"

namespace dfssm {

namespace {
// Same cap as the reference implementation: a larger header is corrupt, not a model.
constexpr uint64_t kMaxHeader = 100ull << 20;

uint64_t read_le64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}
}  // namespace

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

void parse_safetensors_header(const std::string& path, const char* json, size_t json_len,
                              uint64_t data_size, std::vector<TensorInfo>* tensors,
                              std::map<std::string, std::string>* metadata) {
  nlohmann::json h;
  try {
    h = nlohmann::json::parse(json, json + json_len);
  } catch (const std::exception& e) {
    throw Error(str(path, ": safetensors header is not valid JSON (", e.what(), ")"));
  }
  DFSSM_CHECK(h.is_object(), path, ": safetensors header must be a JSON object");
  tensors->clear();
  metadata->clear();
  for (auto it = h.begin(); it != h.end(); ++it) {
    const std::string& name = it.key();
    const auto& v = it.value();
    if (name == "__metadata__") {
      DFSSM_CHECK(v.is_object(), path, ": __metadata__ must be an object of strings");
      for (auto m = v.begin(); m != v.end(); ++m) {
        DFSSM_CHECK(m.value().is_string(), path, ": __metadata__ value '", m.key(), "' is not a string");
        (*metadata)[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string where = str(path, ": tensor '", name, "'");
    DFSSM_CHECK(v.is_object() && v.contains("dtype") && v.contains("shape") && v.contains("data_offsets"),
                where, " needs \"dtype\", \"shape\" and \"data_offsets\"");
    TensorInfo t;
    t.name = name;
    DFSSM_CHECK(v["dtype"].is_string(), where, ": dtype must be a string");
    auto dt = dtype_from_name(v["dtype"].get<std::string>());
    DFSSM_CHECK(dt.has_value(), where, ": unknown dtype \"", v["dtype"].get<std::string>(), "\"");
    t.dtype = *dt;
    DFSSM_CHECK(v["shape"].is_array(), where, ": shape must be an array");
    uint64_t numel = 1;
    for (const auto& d : v["shape"]) {
      DFSSM_CHECK(d.is_number_unsigned() || (d.is_number_integer() && d.get<int64_t>() >= 0), where,
                  ": shape entries must be non-negative integers");
      const uint64_t dim = d.get<uint64_t>();
      DFSSM_CHECK(dim == 0 || numel <= std::numeric_limits<uint64_t>::max() / 16 / dim, where,
                  ": shape ", d.dump(), " overflows");
      numel *= dim;
      t.shape.push_back(int64_t(dim));
    }
    const auto& off = v["data_offsets"];
    DFSSM_CHECK(off.is_array() && off.size() == 2 && off[0].is_number_unsigned() && off[1].is_number_unsigned(),
                where, ": data_offsets must be two non-negative integers");
    t.begin = off[0].get<uint64_t>();
    t.end = off[1].get<uint64_t>();
    DFSSM_CHECK(t.begin <= t.end, where, ": data_offsets [", t.begin, ", ", t.end, "] are reversed");
    DFSSM_CHECK(t.end <= data_size, where, ": data_offsets end ", t.end, " is past the data region (",
                data_size, " bytes; file truncated?)");
    const uint64_t expect = numel * dtype_size(t.dtype);
    DFSSM_CHECK(t.nbytes() == expect, where, ": ", t.nbytes(), " bytes for shape ", shape_str(t.shape), " ",
                dtype_name(t.dtype), ", expected ", expect);
    tensors->push_back(std::move(t));
  }
  // The tensors must tile the data region exactly: sort by offset, then each starts where
  // the previous ended. This rejects overlaps, gaps and trailing garbage.
  std::sort(tensors->begin(), tensors->end(),
            [](const TensorInfo& a, const TensorInfo& b) { return a.begin != b.begin ? a.begin < b.begin : a.end < b.end; });
  uint64_t pos = 0;
  for (const auto& t : *tensors) {
    DFSSM_CHECK(t.begin == pos, path, ": tensor '", t.name, "' data_offsets [", t.begin, ", ", t.end, "] ",
                t.begin < pos ? "overlap the previous tensor" : "leave a gap after the previous tensor",
                " (expected to start at ", pos, ")");
    pos = t.end;
  }
  DFSSM_CHECK(pos == data_size, path, ": data region has ", data_size, " bytes but the tensors cover ", pos,
              " (file truncated or padded?)");
}

SafeTensorsFile SafeTensorsFile::open(const std::string& path) {
  SafeTensorsFile f;
  f.path_ = path;
  void* m = map_readonly(path, 8, "safetensors file", &f.size_);
  f.map_ = m;
  const auto* base = static_cast<const uint8_t*>(m);
  const uint64_t n = read_le64(base);
  DFSSM_CHECK(n <= kMaxHeader, path, ": header length ", n, " is implausible (corrupt file?)");
  DFSSM_CHECK(n <= f.size_ - 8, path, ": header length ", n, " runs past the end of the file (", f.size_,
              " bytes; truncated?)");
  f.data_ = base + 8 + n;
  parse_safetensors_header(path, reinterpret_cast<const char*>(base + 8), n, f.size_ - 8 - n, &f.tensors_,
                           &f.metadata_);
  for (size_t i = 0; i < f.tensors_.size(); ++i) f.index_[f.tensors_[i].name] = i;
  return f;
}

SafeTensorsFile::SafeTensorsFile(SafeTensorsFile&& o) noexcept { *this = std::move(o); }

SafeTensorsFile& SafeTensorsFile::operator=(SafeTensorsFile&& o) noexcept {
  if (this != &o) {
    if (map_) munmap(map_, size_);
    path_ = std::move(o.path_);
    size_ = o.size_;
    map_ = o.map_;
    data_ = o.data_;
    tensors_ = std::move(o.tensors_);
    index_ = std::move(o.index_);
    metadata_ = std::move(o.metadata_);
    o.map_ = nullptr;
    o.data_ = nullptr;
    o.size_ = 0;
  }
  return *this;
}

SafeTensorsFile::~SafeTensorsFile() {
  if (map_) munmap(map_, size_);
}

const TensorInfo* SafeTensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

const TensorInfo& SafeTensorsFile::get(const std::string& name) const {
  const TensorInfo* t = find(name);
  DFSSM_CHECK(t, path_, ": missing tensor '", name, "'");
  return *t;
}

const TensorInfo& SafeTensorsFile::require(const std::string& name, const std::vector<int64_t>& shape,
                                           std::optional<DType> dtype) const {
  const TensorInfo& t = get(name);
  DFSSM_CHECK(t.shape == shape, path_, ": tensor '", name, "' has shape ", shape_str(t.shape), ", expected ",
              shape_str(shape));
  DFSSM_CHECK(!dtype || t.dtype == *dtype, path_, ": tensor '", name, "' has dtype ", dtype_name(t.dtype),
              ", expected ", dtype_name(*dtype));
  return t;
}

namespace {
// Writes via a temp file in the same directory, fsyncs, then renames over `path`.
template <class WriteBody>
void atomic_write(const std::string& path, WriteBody body) {
  const std::string tmp = str(path, ".tmp.", ::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  DFSSM_CHECK(fd >= 0, path, ": cannot create (", std::strerror(errno), ")");
  auto put = [&](const void* p, size_t n) {
    const char* c = static_cast<const char*>(p);
    while (n > 0) {
      const ssize_t w = ::write(fd, c, n);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) {
        const std::string err = std::strerror(errno);
        ::close(fd);
        ::unlink(tmp.c_str());
        throw Error(str(path, ": write failed (", err, ")"));
      }
      c += w;
      n -= size_t(w);
    }
  };
  body(put);
  const bool ok = ::fsync(fd) == 0;
  ::close(fd);
  if (!ok || ::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string err = std::strerror(errno);
    ::unlink(tmp.c_str());
    throw Error(str(path, ": could not finish writing (", err, ")"));
  }
}
}  // namespace

std::string safetensors_header(const std::vector<TensorWrite>& tensors,
                               const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json h = nlohmann::ordered_json::object();
  if (!metadata.empty()) h["__metadata__"] = metadata;
  uint64_t pos = 0;
  for (const auto& t : tensors) {
    uint64_t numel = 1;
    for (int64_t d : t.shape) numel *= uint64_t(d);
    DFSSM_ASSERT(numel * dtype_size(t.dtype) == t.nbytes, "tensor ", t.name, " byte count mismatch");
    DFSSM_ASSERT(!h.contains(t.name), "duplicate tensor name ", t.name);
    h[t.name] = {{"dtype", dtype_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {pos, pos + t.nbytes}}};
    pos += t.nbytes;
  }
  std::string header = h.dump();
  header.append((8 - header.size() % 8) % 8, ' ');  // keep the data region 8-byte aligned
  return header;
}

uint64_t safetensors_file_size(const std::vector<TensorWrite>& tensors,
                               const std::map<std::string, std::string>& metadata) {
  uint64_t n = 8 + safetensors_header(tensors, metadata).size();
  for (const auto& t : tensors) n += t.nbytes;
  return n;
}

void write_safetensors(const std::string& path, const std::vector<TensorWrite>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  const std::string header = safetensors_header(tensors, metadata);
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = uint8_t(uint64_t(header.size()) >> (8 * i));
  atomic_write(path, [&](auto put) {
    put(len, 8);
    put(header.data(), header.size());
    for (const auto& t : tensors) put(t.data, t.nbytes);
  });
}

void write_file_atomic(const std::string& path, const std::string& contents) {
  atomic_write(path, [&](auto put) { put(contents.data(), contents.size()); });
}

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  DFSSM_CHECK(in, path, ": cannot open for reading");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace dfssm
