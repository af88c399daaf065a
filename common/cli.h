// Command lines of every program (flctl, fl-bench, the daemons) through CLI11: each option is
// declared once, on a CLI::App, with its help text; help, errors and exit codes are the same
// everywhere.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

namespace fl {

// The exit code of a usage error: an unknown option or command, a missing or malformed value.
constexpr int kUsageExit = 2;

// House settings for a program's root App, inherited by the subcommands added afterwards: an
// option given twice takes its last value; the help shows defaults; a usage error prints
// "PROGRAM [SUBCOMMAND]: what" and a pointer to --help.
void ConfigureApp(CLI::App& app);

// Parses `args` (the words after the program's name) into `app`. nullopt: parsed, the program
// runs. Otherwise the exit code to return: 0 after --help (the help printed on stdout),
// kUsageExit after a usage error (the error on stderr).
std::optional<int> ParseCommandLine(CLI::App& app, const std::vector<std::string>& args);

// "PROGRAM SUB SUBSUB": the names of `app` and of the subcommands selected below it.
std::string CommandPath(const CLI::App& app);

}  // namespace fl
