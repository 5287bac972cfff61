// Error handling for dfssm.
//
// Two kinds of failure, deliberately kept apart:
//  * dfssm::Error   — bad *input* (a file, a config, a flag). The message must tell the
//                     user what to fix: file, tensor name, expected vs actual. The CLI
//                     prints it and exits non-zero; nothing else is reported.
//  * DFSSM_ASSERT   — a broken *internal* invariant (a bug in dfssm). Always on, also in
//                     release builds, and carries file:line so a report can be acted on.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace dfssm {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class InternalError : public std::logic_error {
 public:
  using std::logic_error::logic_error;
};

// Concatenates any streamable values: str("expected ", n, " got ", m).
template <class... Args>
std::string str(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

[[noreturn]] void throw_internal(const char* expr, const char* file, int line, const std::string& msg);

}  // namespace dfssm

// User-facing check: throws dfssm::Error(message) when cond is false.
#define DFSSM_CHECK(cond, ...)                                   \
  do {                                                           \
    if (!(cond)) throw ::dfssm::Error(::dfssm::str(__VA_ARGS__)); \
  } while (0)

// Internal invariant: always on, reports file:line.
#define DFSSM_ASSERT(cond, ...)                                                            \
  do {                                                                                     \
    if (!(cond)) ::dfssm::throw_internal(#cond, __FILE__, __LINE__, ::dfssm::str(__VA_ARGS__)); \
  } while (0)
