// flctl: the command-line tool of operators and hospital IT. Each command lives in its own
// tools/cmd_*.cc and registers itself with FL_COMMAND; flctl.cc dispatches; cli.cc holds the shared helpers.
#pragma once

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace fl::cli {

// Parsed "--key value" / "--key=value" / "--flag" options and positional words.
class Args {
 public:
  // `flags` lists the options that take no value.
  static absl::StatusOr<Args> Parse(const std::vector<std::string>& argv,
                                    const std::vector<std::string>& flags = {});
  const std::vector<std::string>& positional() const { return positional_; }
  bool Has(const std::string& key) const { return values_.count(key) > 0; }
  std::string Get(const std::string& key, const std::string& fallback = "") const;
  // A required option, or an error naming it.
  absl::StatusOr<std::string> Require(const std::string& key) const;
  absl::StatusOr<double> GetDouble(const std::string& key, std::optional<double> fallback) const;
  absl::StatusOr<int64_t> GetInt(const std::string& key, std::optional<int64_t> fallback) const;
  // Options given but not in `known`: an error naming the first one.
  absl::Status CheckKnown(const std::vector<std::string>& known) const;

 private:
  std::vector<std::string> positional_;
  std::map<std::string, std::string> values_;
};

// A command gets the words after its name; returns the process exit code
// (0 ok, 1 failure, 2 usage error).
using CommandFn = std::function<int(const std::vector<std::string>& args)>;

struct Command {
  std::string name;     // e.g. "privacy", "data", "provision"
  std::string summary;  // one line for `flctl help`
  std::string usage;    // the command's usage ("usage: flctl NAME ..."), for `flctl NAME --help`
  CommandFn run;
};

std::map<std::string, Command>& Registry();

struct Registrar {
  Registrar(std::string name, std::string summary, std::string usage, CommandFn run) {
    Registry()[name] = Command{name, std::move(summary), std::move(usage), std::move(run)};
  }
};

#define FL_COMMAND_CONCAT_INNER(a, b) a##b
#define FL_COMMAND_CONCAT(a, b) FL_COMMAND_CONCAT_INNER(a, b)
// Registers a command with its one-line summary and its usage:
//   FL_COMMAND("privacy", "privacy calculator (epsilon, noise)", kUsage, RunPrivacy);
// `flctl NAME --help` (or -h, anywhere among its words) prints the summary and usage, exit 0.
#define FL_COMMAND(name, summary, usage, fn) \
  static ::fl::cli::Registrar FL_COMMAND_CONCAT(fl_command_, __LINE__)(name, summary, usage, fn)

// Prints "flctl: <message>" to stderr and returns `code`.
int Fail(const absl::Status& status, int code = 1);

}  // namespace fl::cli
