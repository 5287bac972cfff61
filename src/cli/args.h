// Minimal command-line parsing shared by the dfssm subcommands:
//   positionals, --flag value, --flag=value, boolean --switch, and key=value overrides.
#pragma once

#include <map>
#include <set>
#include <string>
#include <vector>

namespace dfssm::cli {

class Args {
 public:
  // `switches` are flags that take no value. Unknown flags are an error at check_unused().
  Args(int argc, char** argv, std::set<std::string> switches = {});

  const std::vector<std::string>& positionals() const { return positionals_; }
  const std::vector<std::pair<std::string, std::string>>& overrides() const { return overrides_; }
  bool has(const std::string& flag) const;
  std::string get(const std::string& flag, const std::string& def) const;
  std::string require(const std::string& flag) const;
  long long get_int(const std::string& flag, long long def) const;
  double get_double(const std::string& flag, double def) const;
  // Throws for any flag that no get/has/require asked about (typos must not pass silently).
  void check_unused() const;

 private:
  std::vector<std::string> positionals_;
  std::vector<std::pair<std::string, std::string>> overrides_;
  std::map<std::string, std::string> flags_;
  mutable std::set<std::string> used_;
};

}  // namespace dfssm::cli
