// fl-bench-gpu dp [...]: the dp benchmark of fl-bench, built without the daemons' dependencies.
#include <iostream>
#include <string>
#include <vector>

#include "bench/benches.h"

int main(int argc, char** argv) {
  CLI::App app("fl-bench-gpu: the dp benchmark of fl-bench", "fl-bench-gpu");
  fl::ConfigureApp(app);
  app.require_subcommand(1);
  CLI::App* dp = app.add_subcommand("dp", "non-private vs DP-SGD step; peak memory");
  const fl::bench::BenchRun run = fl::bench::SetUpDpBench(*dp);
  if (std::optional<int> code =
          fl::ParseCommandLine(app, std::vector<std::string>(argv + 1, argv + argc))) {
    return *code;
  }
  absl::Status status = run();
  if (!status.ok()) {
    std::cerr << "fl-bench-gpu: " << status.message() << "\n";
    return 1;
  }
  return 0;
}
