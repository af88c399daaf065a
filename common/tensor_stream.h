// Tensors on the wire: splitting into TensorChunks and validating an incoming chunk stream.
// No message ever holds more than one chunk, so model size is unbounded by protobuf limits.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/tensor.h"
#include "fl/federation.pb.h"

namespace fl {

constexpr size_t kDefaultChunkBytes = 1 << 20;
// Chunk size of update uploads: what each of the coordinator's granted uploads (at most
// max_concurrent_transfers) holds in a message buffer. 1 MiB chunks measured no faster.
constexpr size_t kUploadChunkBytes = 256 << 10;

// Name and shape of a tensor a stream must carry.
struct TensorMeta {
  std::string name;
  std::vector<int64_t> shape;
  uint64_t byte_size() const;
};

std::vector<TensorMeta> MetasOf(const TensorList& tensors);

// A read-only view of one tensor's data, so large models stream without copies.
struct TensorView {
  const std::string* name;
  const std::vector<int64_t>* shape;
  const float* data;
  size_t numel;
};

// Views of `tensors` (which must outlive them).
std::vector<TensorView> ViewsOf(const TensorList& tensors);

// Calls `emit` with each chunk of `tensors` in order (chunk_bytes a multiple of 4): the chunk
// with every field but `data`, and the span of the tensor's bytes that is its data, not copied.
// Stops with CANCELLED when emit returns false (the peer went away).
using ChunkSpanFn = std::function<bool(const TensorChunk& chunk, const char* data, size_t n)>;
absl::Status ForEachTensorChunk(const std::vector<TensorView>& tensors, size_t chunk_bytes,
                                const ChunkSpanFn& emit);

// As ForEachTensorChunk, with each chunk's data copied into it.
absl::Status WriteTensorChunks(const std::vector<TensorView>& tensors, size_t chunk_bytes,
                               const std::function<bool(const TensorChunk&)>& emit);
absl::Status WriteTensorChunks(const TensorList& tensors, size_t chunk_bytes,
                               const std::function<bool(const TensorChunk&)>& emit);

// Validates a chunk stream: tensor order and names, dtype, shapes, contiguous offsets, chunk
// sizes, finite values and each tensor's CRC-32C. Data is handed to the sink only after its
// chunk passed every check that can be made on it; the CRC is checked at each tensor's last chunk.
class ChunkReader {
 public:
  // Receives `n` floats of tensor `index` starting at element `offset`.
  using Sink =
      std::function<absl::Status(size_t index, uint64_t offset, const float* data, size_t n)>;

  // `expected`: the tensors that must arrive, in order. Without it, any tensors are accepted
  // (their metas are collected from the headers) up to `max_total_bytes` in all.
  explicit ChunkReader(std::optional<std::vector<TensorMeta>> expected,
                       uint64_t max_total_bytes = UINT64_MAX);

  absl::Status Add(const TensorChunk& chunk, const Sink& sink);
  // OK when every expected tensor arrived complete.
  absl::Status Finish() const;

  const std::vector<TensorMeta>& metas() const { return metas_; }
  uint64_t bytes() const { return total_bytes_; }

 private:
  absl::Status StartTensor(const TensorChunk& chunk);

  std::optional<std::vector<TensorMeta>> expected_;
  uint64_t max_total_bytes_;
  std::vector<TensorMeta> metas_;
  size_t current_ = 0;  // index of the tensor being received
  bool in_tensor_ = false;
  uint64_t offset_ = 0;  // next expected byte offset in the current tensor
  uint32_t crc_ = 0;
  uint64_t total_bytes_ = 0;
  std::vector<float> buffer_;  // aligned copy of one chunk
};

// Reads a whole stream into a TensorList (for downloads); `next` returns false at end of stream.
absl::StatusOr<TensorList> ReadTensors(const std::function<bool(TensorChunk*)>& next,
                                       std::optional<std::vector<TensorMeta>> expected,
                                       uint64_t max_total_bytes = UINT64_MAX);

}  // namespace fl
