// `dfssm data prepare`: sources -> (trained or given) tokenizer -> HDF5 shards + manifest.json.
#pragma once

#include <functional>
#include <string>

#include "distill/data/config.h"
#include "distill/data/manifest.h"

namespace dfssm::data {

struct PrepareLog {
  std::function<void(const std::string&)> info;  // progress lines (may be empty)
  std::function<void(const std::string&)> warn;  // skipped inputs (may be empty)
};

// Prepares the dataset in cfg.output and returns its manifest. On any error the files this run
// created are removed again and no manifest.json is left, so a directory never looks complete
// when it is not.
Manifest prepare_data(const DataConfig& cfg, const PrepareLog& log = {});

}  // namespace dfssm::data
