// Small helpers shared by the tests.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <functional>
#include <string>

#include "core/error.h"

namespace dfssm::test {

// Runs f and returns the message of the dfssm::Error it throws ("" if it throws nothing).
// Any other exception type propagates and fails the test: bad input must give dfssm::Error.
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const dfssm::Error& e) {
    return e.what();
  }
  return "";
}

// <tmp>/dfssm_test_<suite>_<pid>/<name>, with its folder created: one scratch folder per test
// process, so parallel ctest runs never share files.
inline std::string tmp_path(const std::string& suite, const std::string& name) {
  const auto dir = std::filesystem::temp_directory_path() / ("dfssm_test_" + suite + "_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  return (dir / name).string();
}

inline bool contains(const std::string& s, const std::string& sub) { return s.find(sub) != std::string::npos; }

inline std::string source_dir() {
#ifdef DFSSM_SOURCE_DIR
  return DFSSM_SOURCE_DIR;
#else
  return ".";
#endif
}

}  // namespace dfssm::test
