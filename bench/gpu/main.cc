// fl-bench-gpu dp [...]: the dp benchmark of fl-bench, built without the daemons' dependencies.
#include <iostream>
#include <string>
#include <vector>

#include "bench/benches.h"

int main(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) != "dp") {
    std::cerr << "usage: fl-bench-gpu dp [options of fl-bench dp]\n";
    return 2;
  }
  absl::Status status = fl::bench::RunDpBench(std::vector<std::string>(argv + 2, argv + argc));
  if (!status.ok()) {
    std::cerr << "fl-bench-gpu: " << status.message() << "\n";
    return 1;
  }
  return 0;
}
