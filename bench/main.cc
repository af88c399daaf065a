// fl-bench NAME [flags]: runs one benchmark; its last output line is key=value
// results.
#include <cstdio>
#include <string>
#include <vector>

#include "bench/benches.h"

namespace {

constexpr char kUsage[] =
    "usage: fl-bench NAME [flags]\n"
    "  aggregate [--mib 64] [--sites 20]       FedAvg "
    "fold vs memcpy; peak memory over sites\n"
    "  transfer [--mib 64] [--chunk_kib 256]   gRPC "
    "mutual-TLS upload vs a plain TLS socket\n"
    "  dp [--size 128] [--batch 32] [--model resnet18] [--steps 5] [--profile DIR]\n"
    "     [--norms auto|ghost|materialise] [--tf32 on|off]\n"
    "                                          non-private vs DP-SGD step; peak memory\n"
    "  load [--clients 200] [--rounds 3] [--params 1000000] [--labels L] [--model smallcnn]\n"
    "                                          fl-coordinator under many simulated sites\n";

}  // namespace

int main(int argc, char **argv) {
  if (argc < 2) {
    std::fputs(kUsage, stderr);
    return 2;
  }
  const std::string name = argv[1];
  const std::vector<std::string> args(argv + 2, argv + argc);
  // `fl-bench --help`, `fl-bench help` and `fl-bench NAME --help`: the usage, exit 0.
  bool help = name == "--help" || name == "-h" || name == "help";
  for (const std::string &a : args) help |= a == "--help" || a == "-h";
  if (help) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  absl::Status status;
  if (name == "aggregate") {
    status = fl::bench::RunAggregateBench(args);
  } else if (name == "transfer") {
    status = fl::bench::RunTransferBench(args);
  } else if (name == "dp") {
    status = fl::bench::RunDpBench(args);
  } else if (name == "load") {
    status = fl::bench::RunLoadBench(args);
  } else {
    std::fprintf(stderr, "fl-bench: unknown benchmark '%s'\n%s", name.c_str(), kUsage);
    return 2;
  }
  if (!status.ok()) {
    std::fprintf(stderr, "fl-bench %s: %s\n", name.c_str(), status.ToString().c_str());
    return 1;
  }
  return 0;
}
