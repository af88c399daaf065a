#include <string>
#include <vector>

#include "tools/cli.h"

int main(int argc, char** argv) {
  return fl::cli::RunFlctl(std::vector<std::string>(argv + 1, argv + argc));
}
