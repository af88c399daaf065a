// fl-bench NAME [options]: runs one benchmark; its last output line is key=value
// results. `fl-bench --help` lists them, `fl-bench NAME --help` gives a benchmark's options.
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "bench/benches.h"

int main(int argc, char** argv) {
  CLI::App app(
      "fl-bench: throughput and memory benchmarks; the last line of each is key=value "
      "ratios against a baseline measured in the same run",
      "fl-bench");
  fl::ConfigureApp(app);
  app.require_subcommand(1);
  struct Bench {
    const char* name;
    const char* summary;
    fl::bench::BenchRun (*setup)(CLI::App& app);
  };
  const Bench benches[] = {
      {"aggregate", "FedAvg fold vs memcpy; peak memory over sites",
       fl::bench::SetUpAggregateBench},
      {"transfer", "gRPC mutual-TLS upload vs a plain TLS socket", fl::bench::SetUpTransferBench},
      {"dp", "non-private vs DP-SGD step; peak memory", fl::bench::SetUpDpBench},
      {"load", "fl-coordinator under many simulated sites", fl::bench::SetUpLoadBench}};
  std::map<const CLI::App*, fl::bench::BenchRun> runs;
  for (const Bench& b : benches) {
    CLI::App* bench = app.add_subcommand(b.name, b.summary);
    runs[bench] = b.setup(*bench);
  }
  std::vector<std::string> words(argv + 1, argv + argc);
  if (words.empty()) {
    std::fputs(app.help().c_str(), stderr);
    return fl::kUsageExit;
  }
  if (words[0] == "help") words = {"--help"};
  bool known = words[0][0] == '-';
  for (const Bench& b : benches) known |= words[0] == b.name;
  if (!known) {
    std::fprintf(stderr, "fl-bench: unknown benchmark '%s' (see 'fl-bench --help')\n",
                 words[0].c_str());
    return fl::kUsageExit;
  }
  if (std::optional<int> code = fl::ParseCommandLine(app, words)) return *code;
  const CLI::App* bench = app.get_subcommands().front();
  const absl::Status status = runs.at(bench)();
  if (!status.ok()) {
    std::fprintf(stderr, "fl-bench %s: %s\n", bench->get_name().c_str(), status.ToString().c_str());
    return 1;
  }
  return 0;
}
