// The fl-bench benchmarks. Each prints human-readable lines and, as its last
// line, key=value ratios against a baseline measured in the same run. `args`
// are the flags after the name.
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"

namespace fl::bench {

// Streaming FedAvg fold vs memcpy, the validated chunk path, and peak memory
// over many sites. Flags: --mib (model size, default 64), --sites (default 20).
absl::Status RunAggregateBench(const std::vector<std::string> &args);

// Update upload over gRPC with mutual TLS on loopback vs a plain OpenSSL TLS
// socket. Flags: --mib (update size, default 64), --chunk_kib (chunk and write
// size, default 1024).
absl::Status RunTransferBench(const std::vector<std::string> &args);

}  // namespace fl::bench
