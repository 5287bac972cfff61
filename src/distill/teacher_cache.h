// The top-k teacher cache (`distill.teacher_cache`): the teacher's k most likely tokens per
// position with their log-probabilities at the distillation temperature, stored to HDF5 by one
// run and read back by later runs instead of running the teacher.
//
// With a cache the KL term uses the teacher distribution restricted to its top k and
// renormalised: q_i = p_t^T(i) / Σ_{j in top-k} p_t^T(j) for i in the top k, 0 elsewhere;
//   KL_k = Σ_{i in top-k} q_i (log q_i − log p_s^T(i)),  ∂/∂z_s = T·(p_s^T − q)   (per token)
// With k = padded vocabulary this is the full KL (tests/test_trainer.cpp). The teacher's CE on
// the data (a logged statistic, not a loss term) is stored per position, so it stays exact.
//
// File layout (docs/training.md, "Teacher cache"), one HDF5 file per process:
//   /indices     int32 [rows, k]   top-k token ids per position, most likely first
//   /logprobs    float32 [rows, k] log p_t^T of those ids (normalised over the whole vocabulary)
//   /teacher_ce  float32 [rows]    −log p_t(target) at T = 1
//   attribute "settings"               JSON: everything that fixes the values and their order
//                                      (teacher weights' SHA-256, temperature, k, vocabulary,
//                                      dataset, sequence length, batch size, seed, rank/world)
//   attribute "complete_microbatches"  int64: micro-batches fully written, in loader order
// Micro-batch m occupies rows [m·R, (m+1)·R), R = batch_size · seq_len positions.
// Reading checks every setting against the run's and names each one that differs.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "distill/loss.h"  // TeacherTopK

namespace dfssm::distill {

class TeacherCache {
 public:
  ~TeacherCache();
  TeacherCache(const TeacherCache&) = delete;
  TeacherCache& operator=(const TeacherCache&) = delete;

  // Micro-batches complete in `path` if it is a cache with exactly these run settings (the format
  // name and version are added here); -1 (and *why) when it does not exist, is not a cache, or
  // differs.
  static int64_t complete_microbatches(const std::string& path, const nlohmann::json& settings, std::string* why);

  // For writing: a new file (keep == 0) or an existing cache with these settings cut back to its
  // first `keep` micro-batches (a resumed run continues where its checkpoint stands).
  static std::unique_ptr<TeacherCache> for_writing(const std::string& path, const nlohmann::json& settings, int64_t k,
                                                   int64_t rows_per_microbatch, int64_t keep);
  // For reading: must hold these settings and at least `need` complete micro-batches.
  static std::unique_ptr<TeacherCache> for_reading(const std::string& path, const nlohmann::json& settings,
                                                   int64_t need);

  // Appends micro-batch `mb` (must be complete()): rows_per_microbatch positions, flushed.
  void append(int64_t mb, const TeacherTopK& t);
  TeacherTopK read(int64_t mb, const at::Device& device) const;
  int64_t complete() const { return complete_; }
  int64_t k() const { return k_; }
  const std::string& path() const { return path_; }

 private:
  TeacherCache() = default;
  struct H5;
  std::unique_ptr<H5> h_;
  std::string path_;
  int64_t k_ = 0, rows_ = 0, complete_ = 0;
};

}  // namespace dfssm::distill
