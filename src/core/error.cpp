#include "core/error.h"

namespace dfssm {

void throw_internal(const char* expr, const char* file, int line, const std::string& msg) {
  throw InternalError(str("internal error at ", file, ":", line, ": assertion `", expr, "` failed",
                          msg.empty() ? "" : ": ", msg, " (this is a dfssm bug; please report it)"));
}

}  // namespace dfssm
