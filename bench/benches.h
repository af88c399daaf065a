// The fl-bench benchmarks. Each prints human-readable lines and, as its last
// line, key=value ratios against a baseline measured in the same run. Each
// SetUp* declares the benchmark's options on `app` (its CLI11 subcommand of
// fl-bench, common/cli.h) and returns what runs it once they are parsed.
#pragma once

#include <functional>

#include "absl/status/status.h"
#include "common/cli.h"

namespace fl::bench {

using BenchRun = std::function<absl::Status()>;

// Streaming FedAvg fold vs memcpy, the validated chunk path, and peak memory
// over many sites. Options: --mib (model size, default 64), --sites (default 20).
BenchRun SetUpAggregateBench(CLI::App& app);

// Update upload over gRPC with mutual TLS on loopback vs a plain OpenSSL TLS
// socket. Options: --mib (update size, default 64), --chunk_kib (chunk and write
// size, default the client's upload chunk).
BenchRun SetUpTransferBench(CLI::App& app);

// One training step of a classifier (ResNet-18 with GroupNorm, 1 channel, 8
// outputs, BCE, SGD) without and with DP-SGD: time and peak-memory ratios.
// CUDA when available. Options: --model (default resnet18), --size (128 on CPU,
// 224 on CUDA), --batch (32 on CPU, 64 on CUDA), --steps (timed, default 5),
// --profile, --norms, --tf32.
BenchRun SetUpDpBench(CLI::App& app);

// One real fl-coordinator (child process) and --clients lightweight simulated sites in this
// process, each with its own mutual-TLS channel and certificate, running a job of --rounds
// rounds of a registry model (--model, default mediumcnn) with --labels labels; a second run
// with --fit_model fits the peak as a multiple of the model. Round time, the coordinator's peak
// memory growth over the model size, control-RPC latency percentiles. Defaults: 200 clients,
// 3 rounds.
BenchRun SetUpLoadBench(CLI::App& app);

}  // namespace fl::bench
