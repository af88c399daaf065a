#include <iostream>
#include <string>
#include <vector>

#include "tools/cli.h"

namespace {

void PrintHelp() {
  std::cout << "usage: flctl COMMAND [ARGS...]   (flctl COMMAND --help: the command's usage)\n\n"
               "commands:\n";
  for (const auto& [name, command] : fl::cli::Registry()) {
    std::cout << "  " << name << std::string(name.size() < 12 ? 12 - name.size() : 1, ' ')
              << command.summary << "\n";
  }
}

bool AsksForHelp(const std::vector<std::string>& words) {
  for (const std::string& w : words) {
    if (w == "--help" || w == "-h") return true;
  }
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string first = argc < 2 ? "" : argv[1];
  if (argc < 2 || ((first == "help" || first == "--help" || first == "-h") && argc < 3)) {
    PrintHelp();
    return argc < 2 ? 2 : 0;
  }
  std::vector<std::string> words(argv + 2, argv + argc);
  const bool help_for = first == "help" || first == "--help" || first == "-h";  // help COMMAND
  auto& registry = fl::cli::Registry();
  auto it = registry.find(help_for ? words[0] : first);
  if (it == registry.end()) {
    std::cerr << "flctl: unknown command '" << (help_for ? words[0] : first)
              << "' (see 'flctl help')\n";
    return 2;
  }
  if (help_for || AsksForHelp(words)) {
    std::cout << "flctl " << it->second.name << ": " << it->second.summary << "\n\n"
              << it->second.usage << "\n";
    return 0;
  }
  return it->second.run(words);
}
