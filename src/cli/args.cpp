#include "cli/args.h"

#include <cctype>

#include "core/error.h"

namespace dfssm::cli {

Args::Args(int argc, char** argv, std::set<std::string> switches) {
  for (int i = 0; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--", 0) == 0 && a.size() > 2) {
      std::string key = a.substr(2), value;
      const auto eq = key.find('=');
      if (eq != std::string::npos) {
        value = key.substr(eq + 1);
        key = key.substr(0, eq);
      } else if (switches.count(key)) {
        value = "1";
      } else {
        DFSSM_CHECK(i + 1 < argc, "flag --", key, " needs a value");
        value = argv[++i];
      }
      flags_[key] = value;
    } else if (a.size() > 1 && a[0] == '-' && a[1] != '-' && !std::isdigit(static_cast<unsigned char>(a[1]))) {
      // Short aliases used by the CLI: -o (output), -m (model), -p (prompt).
      DFSSM_CHECK(i + 1 < argc, "flag ", a, " needs a value");
      const std::string key = a == "-o" ? "output" : a == "-m" ? "model" : a == "-p" ? "prompt" : "";
      DFSSM_CHECK(!key.empty(), "unknown flag ", a);
      flags_[key] = argv[++i];
    } else if (a.find('=') != std::string::npos && a.find('/') == std::string::npos) {
      const auto eq = a.find('=');
      overrides_.emplace_back(a.substr(0, eq), a.substr(eq + 1));
    } else {
      positionals_.push_back(a);
    }
  }
}

bool Args::has(const std::string& flag) const {
  used_.insert(flag);
  return flags_.count(flag) > 0;
}

std::string Args::get(const std::string& flag, const std::string& def) const {
  used_.insert(flag);
  auto it = flags_.find(flag);
  return it == flags_.end() ? def : it->second;
}

std::string Args::require(const std::string& flag) const {
  used_.insert(flag);
  auto it = flags_.find(flag);
  DFSSM_CHECK(it != flags_.end(), "missing required flag --", flag);
  return it->second;
}

long long Args::get_int(const std::string& flag, long long def) const {
  const std::string v = get(flag, "");
  if (v.empty()) return def;
  try {
    size_t n = 0;
    const long long r = std::stoll(v, &n);
    if (n == v.size()) return r;
  } catch (...) {
  }
  throw Error(str("--", flag, " expects an integer, got '", v, "'"));
}

double Args::get_double(const std::string& flag, double def) const {
  const std::string v = get(flag, "");
  if (v.empty()) return def;
  try {
    size_t n = 0;
    const double r = std::stod(v, &n);
    if (n == v.size()) return r;
  } catch (...) {
  }
  throw Error(str("--", flag, " expects a number, got '", v, "'"));
}

void Args::check_unused() const {
  for (const auto& [k, v] : flags_) DFSSM_CHECK(used_.count(k), "unknown flag --", k, " (see --help)");
}

}  // namespace dfssm::cli
