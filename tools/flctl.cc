#include <iostream>
#include <string>
#include <vector>

#include "tools/cli.h"

namespace {

void PrintHelp() {
  std::cout << "usage: flctl COMMAND [ARGS...]\n\ncommands:\n";
  for (const auto& [name, command] : fl::cli::Registry()) {
    std::cout << "  " << name << std::string(name.size() < 12 ? 12 - name.size() : 1, ' ')
              << command.summary << "\n";
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "help" || std::string(argv[1]) == "--help") {
    PrintHelp();
    return argc < 2 ? 2 : 0;
  }
  auto& registry = fl::cli::Registry();
  auto it = registry.find(argv[1]);
  if (it == registry.end()) {
    std::cerr << "flctl: unknown command '" << argv[1] << "' (see 'flctl help')\n";
    return 2;
  }
  return it->second.run(std::vector<std::string>(argv + 2, argv + argc));
}
