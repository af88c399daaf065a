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

// One training step of a classifier (ResNet-18 with GroupNorm, 1 channel, 8
// outputs, BCE, SGD) without and with DP-SGD: time and peak-memory ratios.
// CUDA when available. Flags: --model (default resnet18), --size (128 on CPU,
// 224 on CUDA), --batch (32 on CPU, 64 on CUDA), --steps (timed, default 5).
absl::Status RunDpBench(const std::vector<std::string> &args);

// One real fl-coordinator (child process) and --clients lightweight simulated sites in this
// process, each with its own mutual-TLS channel and certificate, running a job of --rounds
// rounds of a registry model (--model, default smallcnn) whose head has enough labels for about
// --params parameters (or --labels labels). Round time, the coordinator's peak memory growth
// over the model size, control-RPC latency percentiles. Defaults: 200 clients, 3 rounds, 1M.
absl::Status RunLoadBench(const std::vector<std::string> &args);

}  // namespace fl::bench
