// flctl: the command-line tool of operators and hospital IT. Each command lives in its own
// tools/cmd_*.cc and registers itself with FL_COMMAND; RunFlctl parses (CLI11, common/cli.h)
// and dispatches.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "common/cli.h"

namespace fl::cli {

// What runs a command once its words are parsed; returns the process exit code
// (0 ok, 1 failure, 2 usage error).
using CommandRun = std::function<int()>;

// Declares a command's options, positional arguments and subcommands on `app` (the command's
// CLI11 subcommand of flctl, already named and summarised), each once, bound to storage the
// returned CommandRun reads.
using CommandSetup = std::function<CommandRun(CLI::App& app)>;

struct Command {
  std::string name;     // e.g. "privacy", "data", "provision"
  std::string summary;  // one line for `flctl --help`
  CommandSetup setup;
};

std::map<std::string, Command>& Registry();

struct Registrar {
  Registrar(std::string name, std::string summary, CommandSetup setup) {
    Registry()[name] = Command{name, std::move(summary), std::move(setup)};
  }
};

#define FL_COMMAND_CONCAT_INNER(a, b) a##b
#define FL_COMMAND_CONCAT(a, b) FL_COMMAND_CONCAT_INNER(a, b)
// Registers a command with its one-line summary and the function that declares its options:
//   FL_COMMAND("privacy", "privacy calculator (epsilon, noise)", SetUpPrivacy);
// `flctl NAME --help` (and `flctl help NAME`) prints the usage CLI11 generates from them, exit 0.
#define FL_COMMAND(name, summary, setup) \
  static ::fl::cli::Registrar FL_COMMAND_CONCAT(fl_command_, __LINE__)(name, summary, setup)

// flctl on `args` (the words after "flctl"): parses them against every registered command and
// runs the one named; returns the exit code. No words: the help, exit 2.
int RunFlctl(const std::vector<std::string>& args);

// Prints "flctl: <message>" to stderr and returns `code`.
int Fail(const absl::Status& status, int code = 1);

// For errors found after parsing (a value out of range): "flctl: <message>" and a pointer to
// `flctl COMMAND --help`, exit 2. `app` is the (sub)command whose option was wrong.
int UsageError(const CLI::App& app, const absl::Status& status);

}  // namespace fl::cli
