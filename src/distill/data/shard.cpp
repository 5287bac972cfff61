#include "distill/data/shard.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include <hdf5.h>

#include "core/error.h"
#include "distill/data/h5.h"

namespace fs = std::filesystem;

namespace dfssm::data {
namespace {

hid_t file_type(TokenDType d) { return d == TokenDType::U16 ? H5T_STD_U16LE : H5T_STD_U32LE; }
hid_t mem_type(TokenDType d) { return d == TokenDType::U16 ? H5T_NATIVE_UINT16 : H5T_NATIVE_UINT32; }

void write_attr_int(hid_t loc, const char* name, int64_t v, const std::string& path) {
  Handle space(H5Screate(H5S_SCALAR), H5Sclose);
  Handle attr(H5Acreate2(loc, name, H5T_STD_I64LE, space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  DFSSM_CHECK(attr.valid() && H5Awrite(attr.get(), H5T_NATIVE_INT64, &v) >= 0, path, ": writing attribute '", name,
              "' failed: ", h5_error());
}

void write_attr_str(hid_t loc, const char* name, const std::string& v, const std::string& path) {
  Handle type(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(type.get(), v.size() + 1);
  H5Tset_strpad(type.get(), H5T_STR_NULLTERM);
  Handle space(H5Screate(H5S_SCALAR), H5Sclose);
  Handle attr(H5Acreate2(loc, name, type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  DFSSM_CHECK(attr.valid() && H5Awrite(attr.get(), type.get(), v.c_str()) >= 0, path, ": writing attribute '", name,
              "' failed: ", h5_error());
}

std::string not_a_shard(const std::string& path, const std::string& what) {
  return str(path, ": ", what, " - not a dfssm token shard, or a corrupt one; re-run dfssm data prepare");
}

int64_t read_attr_int(hid_t loc, const char* name, const std::string& path) {
  DFSSM_CHECK(H5Aexists(loc, name) > 0, not_a_shard(path, str("missing attribute '", name, "'")));
  Handle attr(H5Aopen(loc, name, H5P_DEFAULT), H5Aclose);
  int64_t v = 0;
  DFSSM_CHECK(attr.valid() && H5Aread(attr.get(), H5T_NATIVE_INT64, &v) >= 0,
              not_a_shard(path, str("cannot read attribute '", name, "' (", h5_error(), ")")));
  return v;
}

std::string read_attr_str(hid_t loc, const char* name, const std::string& path) {
  DFSSM_CHECK(H5Aexists(loc, name) > 0, not_a_shard(path, str("missing attribute '", name, "'")));
  Handle attr(H5Aopen(loc, name, H5P_DEFAULT), H5Aclose);
  Handle ftype(attr.valid() ? H5Aget_type(attr.get()) : -1, H5Tclose);
  DFSSM_CHECK(ftype.valid() && H5Tget_class(ftype.get()) == H5T_STRING,
              not_a_shard(path, str("attribute '", name, "' is not a string")));
  if (H5Tis_variable_str(ftype.get()) > 0) {
    Handle mtype(H5Tcopy(H5T_C_S1), H5Tclose);
    H5Tset_size(mtype.get(), H5T_VARIABLE);
    char* s = nullptr;
    DFSSM_CHECK(H5Aread(attr.get(), mtype.get(), &s) >= 0,
                not_a_shard(path, str("cannot read attribute '", name, "' (", h5_error(), ")")));
    std::string out = s ? s : "";
    H5free_memory(s);
    return out;
  }
  const size_t n = H5Tget_size(ftype.get());
  Handle mtype(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(mtype.get(), n);
  std::string buf(n, '\0');
  DFSSM_CHECK(H5Aread(attr.get(), mtype.get(), buf.data()) >= 0,
              not_a_shard(path, str("cannot read attribute '", name, "' (", h5_error(), ")")));
  buf.resize(std::strlen(buf.c_str()));
  return buf;
}

void fsync_dir_of(const std::string& path) {
  const std::string dir = fs::path(path).parent_path().string();
  const int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

}  // namespace

std::recursive_mutex& hdf5_mutex() {
  static std::recursive_mutex m;
  return m;
}

TokenDType dtype_for_vocab(int64_t vocab_size) { return vocab_size <= 65536 ? TokenDType::U16 : TokenDType::U32; }
const char* dtype_name(TokenDType d) { return d == TokenDType::U16 ? "uint16" : "uint32"; }
size_t dtype_size(TokenDType d) { return d == TokenDType::U16 ? 2 : 4; }

void fsync_path(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  DFSSM_CHECK(fd >= 0, path, ": cannot open to fsync (", std::strerror(errno), ")");
  const int rc = ::fsync(fd);
  ::close(fd);
  DFSSM_CHECK(rc == 0, path, ": fsync failed (", std::strerror(errno), ")");
}

// ---- Writer ------------------------------------------------------------------------------------

struct ShardWriter::H {
  Handle file, tokens;
};

ShardWriter::ShardWriter(std::string path, ShardMeta meta, ShardWriteOptions opts)
    : h_(std::make_unique<H>()), path_(std::move(path)), meta_(std::move(meta)), opts_(opts) {
  tmp_ = path_ + ".tmp";
  DFSSM_ASSERT(opts_.chunk_tokens > 0, "chunk_tokens ", opts_.chunk_tokens);
  DFSSM_H5_LOCK;
  std::error_code ec;
  fs::remove(tmp_, ec);
  Handle fcpl(H5Pcreate(H5P_FILE_CREATE), H5Pclose);
  H5Pset_obj_track_times(fcpl.get(), 0);  // the root group too
  h_->file = Handle(H5Fcreate(tmp_.c_str(), H5F_ACC_TRUNC, fcpl.get(), H5P_DEFAULT), H5Fclose);
  DFSSM_CHECK(h_->file.valid(), tmp_, ": cannot create the HDF5 file (", h5_error(), ")");
  Handle dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
  const hsize_t chunk = hsize_t(opts_.chunk_tokens);
  H5Pset_chunk(dcpl.get(), 1, &chunk);
  H5Pset_obj_track_times(dcpl.get(), 0);  // no timestamps: the same input gives the same bytes
  if (opts_.compression > 0) {
    DFSSM_CHECK(H5Zfilter_avail(H5Z_FILTER_DEFLATE) > 0,
                "this HDF5 library has no gzip (deflate) filter; set compression=0");
    H5Pset_shuffle(dcpl.get());
    H5Pset_deflate(dcpl.get(), unsigned(opts_.compression));
  }
  if (opts_.checksum) H5Pset_fletcher32(dcpl.get());
  const hsize_t dims = 0, maxdims = H5S_UNLIMITED;
  Handle space(H5Screate_simple(1, &dims, &maxdims), H5Sclose);
  h_->tokens = Handle(H5Dcreate2(h_->file.get(), "tokens", file_type(meta_.dtype), space.get(), H5P_DEFAULT,
                                 dcpl.get(), H5P_DEFAULT),
                      H5Dclose);
  DFSSM_CHECK(h_->tokens.valid(), tmp_, ": cannot create dataset 'tokens' (", h5_error(), ")");
}

ShardWriter::~ShardWriter() {
  if (finished_) return;
  {
    std::lock_guard<std::recursive_mutex> lock(hdf5_mutex());
    h_->tokens.reset();
    h_->file.reset();
    H5Eclear2(H5E_DEFAULT);
  }
  std::error_code ec;
  fs::remove(tmp_, ec);
}

void ShardWriter::append(const int32_t* ids, size_t n) {
  DFSSM_ASSERT(!finished_, path_, " was already finished");
  const size_t es = dtype_size(meta_.dtype);
  const size_t flush_at = size_t(std::max<int64_t>(opts_.chunk_tokens, (1 << 20) / opts_.chunk_tokens * opts_.chunk_tokens));
  while (n > 0) {
    const size_t take = std::min(n, flush_at - buffer_count_);
    buffer_.resize((buffer_count_ + take) * es);
    uint8_t* dst = buffer_.data() + buffer_count_ * es;
    for (size_t k = 0; k < take; ++k) {
      const int32_t v = ids[k];
      DFSSM_ASSERT(v >= 0 && v < meta_.vocab_size, "token id ", v, " outside the vocabulary of ", meta_.vocab_size);
      if (es == 2) {
        const uint16_t x = uint16_t(v);
        std::memcpy(dst + 2 * k, &x, 2);
      } else {
        const uint32_t x = uint32_t(v);
        std::memcpy(dst + 4 * k, &x, 4);
      }
    }
    buffer_count_ += take;
    ids += take;
    n -= take;
    if (buffer_count_ == flush_at) flush();
  }
}

void ShardWriter::end_document() { doc_offsets_.push_back(uint64_t(tokens())); }

void ShardWriter::flush() {
  if (buffer_count_ == 0) return;
  DFSSM_H5_LOCK;
  const hsize_t start = hsize_t(written_), count = hsize_t(buffer_count_), size = start + count;
  bool ok = H5Dset_extent(h_->tokens.get(), &size) >= 0;
  Handle fspace(ok ? H5Dget_space(h_->tokens.get()) : -1, H5Sclose);
  Handle mspace(H5Screate_simple(1, &count, nullptr), H5Sclose);
  ok = ok && fspace.valid() &&
       H5Sselect_hyperslab(fspace.get(), H5S_SELECT_SET, &start, nullptr, &count, nullptr) >= 0 &&
       H5Dwrite(h_->tokens.get(), mem_type(meta_.dtype), mspace.get(), fspace.get(), H5P_DEFAULT, buffer_.data()) >= 0;
  DFSSM_CHECK(ok, tmp_, ": writing dataset 'tokens' failed (", h5_error(), "); is the disk full?");
  written_ += int64_t(buffer_count_);
  buffer_count_ = 0;
  buffer_.clear();
}

void ShardWriter::finish(const std::string& sources_json) {
  DFSSM_ASSERT(!finished_, path_, " was already finished");
  flush();
  DFSSM_ASSERT(doc_offsets_.back() == uint64_t(written_), "the last document of ", path_, " was not ended");
  meta_.token_count = written_;
  meta_.doc_count = documents();
  meta_.sources_json = sources_json;
  {
    DFSSM_H5_LOCK;
    const hid_t f = h_->file.get();
    // doc_offsets: chunked like the tokens, so it carries the same checksum.
    const hsize_t n = doc_offsets_.size(), chunk = std::min<hsize_t>(n, 1 << 16);
    Handle dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
    H5Pset_chunk(dcpl.get(), 1, &chunk);
    H5Pset_obj_track_times(dcpl.get(), 0);
    if (opts_.checksum) H5Pset_fletcher32(dcpl.get());
    Handle space(H5Screate_simple(1, &n, nullptr), H5Sclose);
    Handle d(H5Dcreate2(f, "doc_offsets", H5T_STD_U64LE, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT), H5Dclose);
    DFSSM_CHECK(d.valid() && H5Dwrite(d.get(), H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, doc_offsets_.data()) >= 0,
                tmp_, ": writing dataset 'doc_offsets' failed (", h5_error(), ")");
    d.reset();
    write_attr_str(f, "format", kShardFormat, tmp_);
    write_attr_int(f, "format_version", meta_.format_version, tmp_);
    write_attr_str(f, "split", meta_.split, tmp_);
    write_attr_int(f, "vocab_size", meta_.vocab_size, tmp_);
    write_attr_str(f, "dtype", dtype_name(meta_.dtype), tmp_);
    write_attr_str(f, "tokenizer_sha256", meta_.tokenizer_sha256, tmp_);
    write_attr_int(f, "eos_id", meta_.eos_id, tmp_);
    write_attr_int(f, "bos_id", meta_.bos_id, tmp_);
    write_attr_int(f, "token_count", meta_.token_count, tmp_);
    write_attr_int(f, "doc_count", meta_.doc_count, tmp_);
    write_attr_str(f, "sources", meta_.sources_json, tmp_);
    const bool ok = h_->tokens.close() && h_->file.close();
    DFSSM_CHECK(ok, tmp_, ": closing the HDF5 file failed (", h5_error(), "); is the disk full?");
  }
  fsync_path(tmp_);
  DFSSM_CHECK(std::rename(tmp_.c_str(), path_.c_str()) == 0, "cannot rename ", tmp_, " to ", path_, " (",
              std::strerror(errno), ")");
  fsync_dir_of(path_);
  finished_ = true;
}

// ---- Reader ------------------------------------------------------------------------------------

struct ShardReader::H {
  Handle file, tokens, space, mspace;
  hsize_t mspace_n = 0;
};

ShardReader::~ShardReader() {
  std::lock_guard<std::recursive_mutex> lock(hdf5_mutex());
  h_.reset();
}

std::unique_ptr<ShardReader> ShardReader::open(const std::string& path) {
  std::error_code ec;
  DFSSM_CHECK(fs::is_regular_file(path, ec), path, ": shard file does not exist");
  std::unique_ptr<ShardReader> r(new ShardReader());
  r->path_ = path;
  r->h_ = std::make_unique<H>();
  DFSSM_H5_LOCK;
  H& h = *r->h_;
  h.file = Handle(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
  DFSSM_CHECK(h.file.valid(), path, ": cannot open as HDF5 (", h5_error(),
              ") - the shard is truncated or corrupt; re-run dfssm data prepare");
  const hid_t f = h.file.get();
  ShardMeta& m = r->meta_;
  const std::string format = read_attr_str(f, "format", path);
  DFSSM_CHECK(format == kShardFormat, not_a_shard(path, str("attribute format is '", format, "'")));
  m.format_version = read_attr_int(f, "format_version", path);
  DFSSM_CHECK(m.format_version >= 1 && m.format_version <= kShardFormatVersion, path, ": shard format version ",
              m.format_version, " is not supported by this dfssm (it reads 1..", kShardFormatVersion,
              "); update dfssm or re-prepare the data");
  m.split = read_attr_str(f, "split", path);
  m.vocab_size = read_attr_int(f, "vocab_size", path);
  const std::string dtype = read_attr_str(f, "dtype", path);
  DFSSM_CHECK(dtype == "uint16" || dtype == "uint32", not_a_shard(path, str("dtype attribute '", dtype, "'")));
  m.dtype = dtype == "uint16" ? TokenDType::U16 : TokenDType::U32;
  DFSSM_CHECK(m.vocab_size >= 1 && (m.dtype == TokenDType::U32 || m.vocab_size <= 65536),
              not_a_shard(path, str("vocab_size ", m.vocab_size, " does not fit dtype ", dtype)));
  m.tokenizer_sha256 = read_attr_str(f, "tokenizer_sha256", path);
  m.eos_id = read_attr_int(f, "eos_id", path);
  m.bos_id = read_attr_int(f, "bos_id", path);
  m.token_count = read_attr_int(f, "token_count", path);
  m.doc_count = read_attr_int(f, "doc_count", path);
  m.sources_json = read_attr_str(f, "sources", path);

  h.tokens = Handle(H5Dopen2(f, "tokens", H5P_DEFAULT), H5Dclose);
  DFSSM_CHECK(h.tokens.valid(), not_a_shard(path, str("no dataset 'tokens' (", h5_error(), ")")));
  Handle type(H5Dget_type(h.tokens.get()), H5Tclose);
  DFSSM_CHECK(type.valid() && H5Tget_class(type.get()) == H5T_INTEGER && H5Tget_sign(type.get()) == H5T_SGN_NONE &&
                  H5Tget_size(type.get()) == dtype_size(m.dtype),
              not_a_shard(path, str("dataset 'tokens' is not ", dtype)));
  h.space = Handle(H5Dget_space(h.tokens.get()), H5Sclose);
  hsize_t dims = 0;
  DFSSM_CHECK(h.space.valid() && H5Sget_simple_extent_ndims(h.space.get()) == 1 &&
                  H5Sget_simple_extent_dims(h.space.get(), &dims, nullptr) == 1,
              not_a_shard(path, "dataset 'tokens' is not 1-D"));
  DFSSM_CHECK(int64_t(dims) == m.token_count, path, ": dataset 'tokens' has ", dims,
              " ids but the token_count attribute says ", m.token_count, " - corrupt shard; re-run dfssm data prepare");
  DFSSM_CHECK(H5Lexists(f, "doc_offsets", H5P_DEFAULT) > 0, not_a_shard(path, "no dataset 'doc_offsets'"));
  return r;
}

void ShardReader::read(int64_t begin, int64_t n, int32_t* out) const {
  DFSSM_CHECK(begin >= 0 && n >= 0 && begin + n <= meta_.token_count, path_, ": read of ids [", begin, ", ", begin + n,
              ") is outside the shard's ", meta_.token_count, " ids");
  if (n == 0) return;
  const size_t es = dtype_size(meta_.dtype);
  scratch_.resize(size_t(n) * es);
  {
    DFSSM_H5_LOCK;
    H& h = *h_;
    const hsize_t start = hsize_t(begin), count = hsize_t(n);
    if (!h.mspace.valid() || h.mspace_n != count) {
      h.mspace = Handle(H5Screate_simple(1, &count, nullptr), H5Sclose);
      h.mspace_n = count;
    }
    const bool ok = H5Sselect_hyperslab(h.space.get(), H5S_SELECT_SET, &start, nullptr, &count, nullptr) >= 0 &&
                    H5Dread(h.tokens.get(), mem_type(meta_.dtype), h.mspace.get(), h.space.get(), H5P_DEFAULT,
                            scratch_.data()) >= 0;
    DFSSM_CHECK(ok, path_, ": reading dataset 'tokens' ids [", begin, ", ", begin + n, ") failed (", h5_error(),
                ") - the shard is corrupt; re-run dfssm data prepare");
  }
  uint32_t max_id = 0;
  if (es == 2) {
    const uint16_t* s = reinterpret_cast<const uint16_t*>(scratch_.data());
    for (int64_t k = 0; k < n; ++k) {
      out[k] = s[k];
      max_id = std::max<uint32_t>(max_id, s[k]);
    }
  } else {
    const uint32_t* s = reinterpret_cast<const uint32_t*>(scratch_.data());
    for (int64_t k = 0; k < n; ++k) {
      out[k] = int32_t(s[k]);
      max_id = std::max(max_id, s[k]);
    }
  }
  if (int64_t(max_id) >= meta_.vocab_size) {
    for (int64_t k = 0; k < n; ++k)
      DFSSM_CHECK(uint32_t(out[k]) < uint64_t(meta_.vocab_size), path_, ": dataset 'tokens' id ", uint32_t(out[k]),
                  " at index ", begin + k, " is >= vocab_size ", meta_.vocab_size,
                  " - the shard is corrupt; re-run dfssm data prepare");
  }
}

std::vector<uint64_t> ShardReader::doc_offsets() const {
  std::vector<uint64_t> v;
  {
    DFSSM_H5_LOCK;
    Handle d(H5Dopen2(h_->file.get(), "doc_offsets", H5P_DEFAULT), H5Dclose);
    DFSSM_CHECK(d.valid(), not_a_shard(path_, str("no dataset 'doc_offsets' (", h5_error(), ")")));
    Handle space(H5Dget_space(d.get()), H5Sclose);
    hsize_t n = 0;
    DFSSM_CHECK(space.valid() && H5Sget_simple_extent_ndims(space.get()) == 1 &&
                    H5Sget_simple_extent_dims(space.get(), &n, nullptr) == 1,
                not_a_shard(path_, "dataset 'doc_offsets' is not 1-D"));
    v.resize(n);
    DFSSM_CHECK(n == 0 || H5Dread(d.get(), H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data()) >= 0, path_,
                ": reading dataset 'doc_offsets' failed (", h5_error(), ") - the shard is corrupt");
  }
  bool ok = v.size() == size_t(meta_.doc_count) + 1 && v.front() == 0 && v.back() == uint64_t(meta_.token_count);
  for (size_t i = 1; ok && i < v.size(); ++i) ok = v[i] > v[i - 1];
  DFSSM_CHECK(ok, path_, ": dataset 'doc_offsets' is inconsistent with the token and document counts - corrupt shard");
  return v;
}

}  // namespace dfssm::data
