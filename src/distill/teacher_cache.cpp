// The top-k teacher cache: see teacher_cache.h for the format and the loss it feeds.
#include "distill/teacher_cache.h"

#include <cstring>
#include <filesystem>
#include <vector>

#include "core/error.h"
#include "distill/data/h5.h"

namespace fs = std::filesystem;

namespace dfssm::distill {

namespace {

using data::Handle;

constexpr const char* kFormat = "dfssm-teacher-topk";
constexpr int kVersion = 1;

// The run's settings plus the file format's name and version: what a cache file must hold.
nlohmann::json with_format(const nlohmann::json& settings) {
  nlohmann::json full = settings;
  full["format"] = kFormat, full["version"] = kVersion;
  return full;
}

std::string read_str_attr(hid_t loc, const char* name) {
  if (H5Aexists(loc, name) <= 0) return "";
  Handle a(H5Aopen(loc, name, H5P_DEFAULT), H5Aclose);
  Handle t(a.valid() ? H5Aget_type(a.get()) : -1, H5Tclose);
  if (!t.valid() || H5Tget_class(t.get()) != H5T_STRING || H5Tis_variable_str(t.get()) > 0) return "";
  std::string buf(H5Tget_size(t.get()), '\0');
  Handle mt(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(mt.get(), buf.size());
  if (H5Aread(a.get(), mt.get(), buf.data()) < 0) return "";
  buf.resize(std::strlen(buf.c_str()));
  return buf;
}

void write_str_attr(hid_t loc, const char* name, const std::string& v, const std::string& path) {
  Handle t(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(t.get(), v.size() + 1);
  Handle s(H5Screate(H5S_SCALAR), H5Sclose);
  Handle a(H5Acreate2(loc, name, t.get(), s.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  DFSSM_CHECK(a.valid() && H5Awrite(a.get(), t.get(), v.c_str()) >= 0, path, ": cannot write attribute '", name, "'");
}

int64_t read_int_attr(hid_t loc, const char* name) {
  if (H5Aexists(loc, name) <= 0) return -1;
  Handle a(H5Aopen(loc, name, H5P_DEFAULT), H5Aclose);
  int64_t v = -1;
  if (!a.valid() || H5Aread(a.get(), H5T_NATIVE_INT64, &v) < 0) return -1;
  return v;
}

void write_int_attr(hid_t loc, const char* name, int64_t v, const std::string& path) {
  Handle a;
  if (H5Aexists(loc, name) > 0) {
    a = Handle(H5Aopen(loc, name, H5P_DEFAULT), H5Aclose);
  } else {
    Handle s(H5Screate(H5S_SCALAR), H5Sclose);
    a = Handle(H5Acreate2(loc, name, H5T_STD_I64LE, s.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  }
  DFSSM_CHECK(a.valid() && H5Awrite(a.get(), H5T_NATIVE_INT64, &v) >= 0, path, ": cannot write attribute '", name, "'");
}

// "" when `stored` equals `want`; else one line per differing key.
std::string settings_diff(const nlohmann::json& stored, const nlohmann::json& want) {
  std::string out;
  for (const auto& [key, v] : want.items()) {
    if (!stored.contains(key)) out += "\n  " + key + ": missing in the file, the run has " + v.dump();
    else if (stored.at(key) != v)
      out += "\n  " + key + ": the file has " + stored.at(key).dump() + ", the run has " + v.dump();
  }
  for (const auto& [key, v] : stored.items())
    if (!want.contains(key)) out += "\n  " + key + ": only in the file (" + v.dump() + ")";
  return out;
}

}  // namespace

struct TeacherCache::H5 {
  Handle file, idx, logp, ce;
};

TeacherCache::~TeacherCache() {
  if (!h_) return;
  DFSSM_H5_LOCK;
  h_.reset();
}

int64_t TeacherCache::complete_microbatches(const std::string& path, const nlohmann::json& run_settings,
                                            std::string* why) {
  const nlohmann::json settings = with_format(run_settings);
  if (!fs::exists(path)) {
    if (why) *why = path + " does not exist";
    return -1;
  }
  DFSSM_H5_LOCK;
  Handle f(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
  if (!f.valid()) {
    if (why) *why = path + " is not an HDF5 file (corrupt or truncated?)";
    return -1;
  }
  nlohmann::json stored;
  try {
    stored = nlohmann::json::parse(read_str_attr(f.get(), "settings"));
  } catch (const std::exception&) {
    if (why) *why = path + " has no readable 'settings' attribute: not a dfssm teacher cache";
    return -1;
  }
  const std::string d = settings_diff(stored, settings);
  if (!d.empty()) {
    if (why) *why = path + " was captured with other settings:" + d;
    return -1;
  }
  const int64_t n = read_int_attr(f.get(), "complete_microbatches");
  if (n < 0 && why) *why = path + " has no 'complete_microbatches' attribute";
  return n;
}

std::unique_ptr<TeacherCache> TeacherCache::for_writing(const std::string& path, const nlohmann::json& settings,
                                                        int64_t k, int64_t rows_per_microbatch, int64_t keep) {
  DFSSM_CHECK(k >= 1 && rows_per_microbatch >= 1, "teacher cache: bad k ", k, " or rows ", rows_per_microbatch);
  const nlohmann::json full = with_format(settings);
  std::unique_ptr<TeacherCache> c(new TeacherCache());
  c->path_ = path, c->k_ = k, c->rows_ = rows_per_microbatch;
  if (keep > 0) {
    std::string why;
    const int64_t have = complete_microbatches(path, settings, &why);
    DFSSM_CHECK(have >= keep, "teacher cache: the run resumes at micro-batch ", keep, " but ",
                have < 0 ? why : str(path, " holds only ", have, " complete micro-batches"),
                "; delete it and set distill.teacher_cache=write with resume=none, or teacher_cache=none");
  }
  DFSSM_H5_LOCK;
  auto& h = *(c->h_ = std::make_unique<H5>());
  if (keep > 0) {
    h.file = Handle(H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT), H5Fclose);
    DFSSM_CHECK(h.file.valid(), path, ": cannot open the teacher cache for writing");
    h.idx = Handle(H5Dopen2(h.file.get(), "indices", H5P_DEFAULT), H5Dclose);
    h.logp = Handle(H5Dopen2(h.file.get(), "logprobs", H5P_DEFAULT), H5Dclose);
    h.ce = Handle(H5Dopen2(h.file.get(), "teacher_ce", H5P_DEFAULT), H5Dclose);
    DFSSM_CHECK(h.idx.valid() && h.logp.valid() && h.ce.valid(), path, ": a dataset of the teacher cache is missing");
    const hsize_t rows = hsize_t(keep * rows_per_microbatch), dims2[2] = {rows, hsize_t(k)};
    DFSSM_CHECK(H5Dset_extent(h.idx.get(), dims2) >= 0 && H5Dset_extent(h.logp.get(), dims2) >= 0 &&
                    H5Dset_extent(h.ce.get(), &rows) >= 0,
                path, ": cannot cut the teacher cache back to ", keep, " micro-batches");
    write_int_attr(h.file.get(), "complete_microbatches", keep, path);
    c->complete_ = keep;
    H5Fflush(h.file.get(), H5F_SCOPE_GLOBAL);
    return c;
  }
  fs::create_directories(fs::path(path).parent_path().empty() ? fs::path(".") : fs::path(path).parent_path());
  h.file = Handle(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), H5Fclose);
  DFSSM_CHECK(h.file.valid(), path, ": cannot create the teacher cache file");
  auto make = [&](const char* name, int rank, hid_t type) {
    const hsize_t dims[2] = {0, hsize_t(k)}, maxd[2] = {H5S_UNLIMITED, hsize_t(k)};
    const hsize_t chunk[2] = {hsize_t(rows_per_microbatch), hsize_t(k)};
    Handle space(H5Screate_simple(rank, dims, maxd), H5Sclose);
    Handle dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
    H5Pset_chunk(dcpl.get(), rank, chunk);
    Handle d(H5Dcreate2(h.file.get(), name, type, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT), H5Dclose);
    DFSSM_CHECK(d.valid(), path, ": cannot create dataset ", name);
    return d;
  };
  h.idx = make("indices", 2, H5T_STD_I32LE);
  h.logp = make("logprobs", 2, H5T_IEEE_F32LE);
  h.ce = make("teacher_ce", 1, H5T_IEEE_F32LE);
  write_str_attr(h.file.get(), "settings", full.dump(), path);
  write_int_attr(h.file.get(), "complete_microbatches", 0, path);
  H5Fflush(h.file.get(), H5F_SCOPE_GLOBAL);
  return c;
}

std::unique_ptr<TeacherCache> TeacherCache::for_reading(const std::string& path, const nlohmann::json& settings,
                                                        int64_t need) {
  std::string why;
  const int64_t have = complete_microbatches(path, settings, &why);
  DFSSM_CHECK(have >= 0, "teacher cache: ", why, " (capture it with distill.teacher_cache=write or auto)");
  DFSSM_CHECK(have >= need, "teacher cache: ", path, " holds ", have, " complete micro-batches, this run needs ", need,
              " (capture the rest with distill.teacher_cache=auto, or lower distill.steps)");
  std::unique_ptr<TeacherCache> c(new TeacherCache());
  c->path_ = path, c->complete_ = have;
  DFSSM_H5_LOCK;
  auto& h = *(c->h_ = std::make_unique<H5>());
  h.file = Handle(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
  h.idx = Handle(H5Dopen2(h.file.get(), "indices", H5P_DEFAULT), H5Dclose);
  h.logp = Handle(H5Dopen2(h.file.get(), "logprobs", H5P_DEFAULT), H5Dclose);
  h.ce = Handle(H5Dopen2(h.file.get(), "teacher_ce", H5P_DEFAULT), H5Dclose);
  DFSSM_CHECK(h.file.valid() && h.idx.valid() && h.logp.valid() && h.ce.valid(), path, ": a dataset of the teacher cache is missing");
  Handle space(H5Dget_space(h.idx.get()), H5Sclose);
  hsize_t dims[2] = {0, 0};
  H5Sget_simple_extent_dims(space.get(), dims, nullptr);
  c->k_ = int64_t(dims[1]);
  c->rows_ = have > 0 ? int64_t(dims[0]) / have : 0;
  DFSSM_CHECK(c->k_ == settings.value("k", int64_t(-1)), path, ": k of the datasets (", c->k_, ") differs from its settings");
  DFSSM_CHECK(have == 0 || int64_t(dims[0]) == have * c->rows_, path, ": ", dims[0], " rows for ", have,
              " micro-batches: truncated or corrupt");
  return c;
}

void TeacherCache::append(int64_t mb, const TeacherTopK& t) {
  DFSSM_ASSERT(mb == complete_, "teacher cache: appending micro-batch ", mb, " after ", complete_);
  DFSSM_ASSERT(t.idx.size(0) == rows_ && t.idx.size(1) == k_, "teacher cache: rows ", t.idx.size(0), " x ",
               t.idx.size(1), ", expected ", rows_, " x ", k_);
  const auto idx = t.idx.to(at::kCPU).to(at::kInt).contiguous(), lp = t.logp.to(at::kCPU).to(at::kFloat).contiguous();
  const auto ce = t.ce.to(at::kCPU).to(at::kFloat).contiguous();
  DFSSM_H5_LOCK;
  auto& h = *h_;
  const hsize_t r0 = hsize_t(mb * rows_), n = hsize_t(rows_), total = r0 + n;
  auto put = [&](hid_t d, int rank, hid_t mtype, const void* data) {
    const hsize_t dims[2] = {total, hsize_t(k_)}, start[2] = {r0, 0}, count[2] = {n, hsize_t(k_)};
    bool ok = H5Dset_extent(d, dims) >= 0;
    Handle fspace(H5Dget_space(d), H5Sclose), mspace(H5Screate_simple(rank, count, nullptr), H5Sclose);
    ok = ok && H5Sselect_hyperslab(fspace.get(), H5S_SELECT_SET, start, nullptr, count, nullptr) >= 0;
    ok = ok && H5Dwrite(d, mtype, mspace.get(), fspace.get(), H5P_DEFAULT, data) >= 0;
    DFSSM_CHECK(ok, path_, ": writing micro-batch ", mb, " of the teacher cache failed (disk full?)");
  };
  put(h.idx.get(), 2, H5T_NATIVE_INT32, idx.data_ptr<int32_t>());
  put(h.logp.get(), 2, H5T_NATIVE_FLOAT, lp.data_ptr<float>());
  put(h.ce.get(), 1, H5T_NATIVE_FLOAT, ce.data_ptr<float>());
  complete_ = mb + 1;
  write_int_attr(h.file.get(), "complete_microbatches", complete_, path_);
  H5Fflush(h.file.get(), H5F_SCOPE_GLOBAL);  // a crash after this loses nothing written so far
}

TeacherTopK TeacherCache::read(int64_t mb, const at::Device& device) const {
  DFSSM_CHECK(mb >= 0 && mb < complete_, path_, ": micro-batch ", mb, " is not in the teacher cache (", complete_,
              " complete)");
  auto idx = at::empty({rows_, k_}, at::kInt), lp = at::empty({rows_, k_}, at::kFloat), ce = at::empty({rows_}, at::kFloat);
  {
    DFSSM_H5_LOCK;
    auto get = [&](hid_t d, int rank, hid_t mtype, void* data) {
      const hsize_t start[2] = {hsize_t(mb * rows_), 0}, count[2] = {hsize_t(rows_), hsize_t(k_)};
      Handle fspace(H5Dget_space(d), H5Sclose), mspace(H5Screate_simple(rank, count, nullptr), H5Sclose);
      const bool ok = H5Sselect_hyperslab(fspace.get(), H5S_SELECT_SET, start, nullptr, count, nullptr) >= 0 &&
                      H5Dread(d, mtype, mspace.get(), fspace.get(), H5P_DEFAULT, data) >= 0;
      DFSSM_CHECK(ok, path_, ": reading micro-batch ", mb, " of the teacher cache failed (corrupt file?)");
    };
    get(h_->idx.get(), 2, H5T_NATIVE_INT32, idx.data_ptr<int32_t>());
    get(h_->logp.get(), 2, H5T_NATIVE_FLOAT, lp.data_ptr<float>());
    get(h_->ce.get(), 1, H5T_NATIVE_FLOAT, ce.data_ptr<float>());
  }
  TeacherTopK t;
  t.idx = idx.to(at::kLong).to(device);
  t.logp = lp.to(device);
  t.ce = ce.to(device);
  return t;
}

}  // namespace dfssm::distill
