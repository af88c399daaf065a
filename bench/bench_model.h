// The synthetic model both benchmarks move around: a flat backbone plus a
// label-mode head with one row per label, `mib` MiB of float32 in all, filled
// by a cheap deterministic generator.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/status.h"
#include "common/tensor.h"
#include "common/tensor_stream.h"
#include "fl/federation.pb.h"

namespace fl::bench {

constexpr size_t kBenchLabels = 8;
constexpr char kHeadPrefix[] = "fc.";

// "backbone.weight" [N], "fc.weight" [8, 1024], "fc.bias" [8]: exactly `mib`
// MiB (mib >= 1).
std::vector<TensorMeta> BenchModelMetas(int64_t mib);

// Fills `out` with elements [offset, offset + n) of tensor `tensor` of update
// `seed`: finite values in [-1, 1), different for each seed.
void GenerateValues(uint32_t seed, size_t tensor, uint64_t offset, float* out, size_t n);

// The whole tensor list of update `seed` in memory.
TensorList MakeBenchTensors(const std::vector<TensorMeta>& metas, uint32_t seed);

// Emits update `seed` as the wire chunks WriteTensorChunks would produce for it
// (headers, offsets, CRC-32C), generating one chunk at a time so the update is
// never in memory whole. Stops at the first error `emit` returns.
absl::Status StreamGeneratedUpdate(const std::vector<TensorMeta>& metas, uint32_t seed,
                                   size_t chunk_bytes,
                                   const std::function<absl::Status(const TensorChunk&)>& emit);

}  // namespace fl::bench
