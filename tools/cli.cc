#include "tools/cli.h"

#include <iostream>
#include <memory>

namespace fl::cli {
namespace {

// "flctl privacy epsilon": `app`'s name after those of its parents.
std::string FullName(const CLI::App& app) {
  const CLI::App* parent = app.get_parent();
  return parent == nullptr ? app.get_name() : FullName(*parent) + " " + app.get_name();
}

}  // namespace

std::map<std::string, Command>& Registry() {
  static auto* registry = new std::map<std::string, Command>();
  return *registry;
}

int RunFlctl(const std::vector<std::string>& args) {
  CLI::App app("flctl: the federation's command-line tool for operators and hospital IT", "flctl");
  ConfigureApp(app);
  app.require_subcommand(1);
  std::map<const CLI::App*, CommandRun> runs;
  for (const auto& [name, command] : Registry()) {
    CLI::App* sub = app.add_subcommand(name, command.summary);
    runs[sub] = command.setup(*sub);
  }
  std::vector<std::string> words = args;
  if (words.empty()) {
    std::cout << app.help();
    return kUsageExit;
  }
  if (words[0] == "help") {  // `flctl help [COMMAND]`
    words.erase(words.begin());
    words.push_back("--help");
  }
  if (words[0][0] != '-' && Registry().count(words[0]) == 0) {
    std::cerr << "flctl: unknown command '" << words[0] << "' (see 'flctl --help')\n";
    return kUsageExit;
  }
  if (std::optional<int> code = ParseCommandLine(app, words)) return *code;
  return runs.at(app.get_subcommands().front())();
}

int Fail(const absl::Status& status, int code) {
  std::cerr << "flctl: " << status.message() << "\n";
  return code;
}

int UsageError(const CLI::App& app, const absl::Status& status) {
  std::cerr << "flctl: " << status.message() << "\nRun '" << FullName(app)
            << " --help' for the usage.\n";
  return kUsageExit;
}

}  // namespace fl::cli
