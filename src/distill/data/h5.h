// Small HDF5 helpers shared by dfssm's HDF5 files (token shards, the teacher cache): an owning
// identifier, HDF5's error stack as one line, and the lock every HDF5 call of dfssm takes.
#pragma once

#include <hdf5.h>

#include <mutex>
#include <string>
#include <vector>

#include "distill/data/shard.h"  // hdf5_mutex()

namespace dfssm::data {

// Owns one HDF5 identifier.
class Handle {
 public:
  Handle() = default;
  Handle(hid_t id, herr_t (*close)(hid_t)) : id_(id), close_(close) {}
  ~Handle() { reset(); }
  Handle(Handle&& o) noexcept : id_(o.id_), close_(o.close_) { o.id_ = -1; }
  Handle& operator=(Handle&& o) noexcept {
    if (this != &o) {
      reset();
      id_ = o.id_;
      close_ = o.close_;
      o.id_ = -1;
    }
    return *this;
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  // Closes and reports whether the close succeeded (H5Fclose flushes: it can fail).
  bool close() {
    bool ok = true;
    if (id_ >= 0 && close_) ok = close_(id_) >= 0;
    id_ = -1;
    return ok;
  }
  void reset() { close(); }
  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }

 private:
  hid_t id_ = -1;
  herr_t (*close_)(hid_t) = nullptr;
};

// Turns off HDF5's own error printing (once per thread: per-thread in thread-safe builds).
inline void silence_hdf5() {
  thread_local bool done = false;
  if (!done) {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    done = true;
  }
}

// The HDF5 error stack as one line ("<api message>: <innermost cause>"), then cleared.
inline std::string h5_error() {
  std::vector<std::string> msgs;
  H5Ewalk2(
      H5E_DEFAULT, H5E_WALK_DOWNWARD,
      [](unsigned, const H5E_error2_t* e, void* d) -> herr_t {
        if (e->desc && *e->desc) static_cast<std::vector<std::string>*>(d)->push_back(e->desc);
        return 0;
      },
      &msgs);
  H5Eclear2(H5E_DEFAULT);
  if (msgs.empty()) return "unknown HDF5 error";
  if (msgs.size() == 1 || msgs.front() == msgs.back()) return msgs.back();
  return msgs.front() + ": " + msgs.back();
}

#define DFSSM_H5_LOCK                                           \
  std::lock_guard<std::recursive_mutex> h5_lock_(::dfssm::data::hdf5_mutex()); \
  ::dfssm::data::silence_hdf5()

}  // namespace dfssm::data
