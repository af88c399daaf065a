// libFuzzer target for the update decoder: arbitrary bytes become a sequence of UploadMessages
// that go through ChunkReader (against a fixed model layout, and unconstrained) and ReadTensors.
// Whatever the bytes, nothing may crash, leak or hang, every sink write must land inside the
// tensor it names, and an accepted stream must describe exactly the tensors that were written.
//
// Input format: byte 0 holds flags (bit 0: the harness rewrites each last chunk's crc32c to the
// CRC of the data it saw, so the fuzzer gets past the checksum and explores later tensors); the
// rest is records of a 2-byte little-endian length followed by a serialized UploadMessage.
// Unparsable records are skipped; a trailer ends the stream, as in the coordinator.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <vector>

#include <google/protobuf/stubs/logging.h>

#include "common/crc32c.h"
#include "common/tensor_stream.h"
#include "fl/federation.pb.h"

namespace fl {
namespace {

#define FUZZ_CHECK(cond)                                                                 \
  do {                                                                                   \
    if (!(cond)) {                                                                       \
      std::fprintf(stderr, "%s:%d: FUZZ_CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                      \
    }                                                                                    \
  } while (0)

constexpr uint64_t kMaxTotalBytes = 1 << 20;
constexpr size_t kMaxChunks = 512;

// A small model like the ones the coordinator expects, with a scalar and an empty tensor.
const std::vector<TensorMeta>& ModelLayout() {
  static const auto* layout = new std::vector<TensorMeta>{{"conv.weight", {4, 1, 3, 3}},
                                                          {"conv.bias", {4}},
                                                          {"bn.num_batches", {}},
                                                          {"empty", {0, 3}},
                                                          {"head.weight", {2, 4}}};
  return *layout;
}

// Elements of `shape`, or nullopt when the product overflows the byte size's range.
std::optional<uint64_t> CheckedNumel(const std::vector<int64_t>& shape) {
  uint64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0 || __builtin_mul_overflow(n, static_cast<uint64_t>(d), &n)) return std::nullopt;
  }
  if (n > UINT64_MAX / sizeof(float)) return std::nullopt;
  return n;
}

std::vector<TensorChunk> DecodeChunks(const uint8_t* data, size_t size) {
  std::vector<TensorChunk> chunks;
  if (size == 0) return chunks;
  const bool fix_crc = data[0] & 1;
  size_t pos = 1;
  uint32_t crc = 0;
  UploadMessage message;
  while (pos + 2 <= size && chunks.size() < kMaxChunks) {
    const size_t len = std::min<size_t>(data[pos] | (data[pos + 1] << 8), size - pos - 2);
    pos += 2;
    const bool parsed = message.ParseFromArray(data + pos, static_cast<int>(len));
    pos += len;
    if (!parsed) continue;
    if (message.has_trailer()) break;
    if (!message.has_chunk()) continue;
    TensorChunk& chunk = chunks.emplace_back(message.chunk());
    if (chunk.offset() == 0) crc = 0;
    crc = Crc32cExtend(crc, chunk.data().data(), chunk.data().size());
    if (fix_crc && chunk.last()) chunk.set_crc32c(crc);
  }
  return chunks;
}

// Per-tensor buffers that refuse (by aborting) any write outside the tensor.
struct Buffers {
  std::vector<std::vector<float>> data;
  std::vector<uint64_t> written;

  void Ensure(size_t index, const TensorMeta& meta) {
    std::optional<uint64_t> numel = CheckedNumel(meta.shape);
    FUZZ_CHECK(numel.has_value());  // the reader accepted a shape whose size overflows
    FUZZ_CHECK(*numel * sizeof(float) == meta.byte_size());
    FUZZ_CHECK(*numel * sizeof(float) <= kMaxTotalBytes);
    if (data.size() <= index) {
      data.resize(index + 1);
      written.resize(index + 1);
    }
    if (data[index].empty()) data[index].resize(*numel);
  }
  absl::Status Write(size_t index, uint64_t offset, const float* values, size_t n) {
    FUZZ_CHECK(index < data.size());
    FUZZ_CHECK(n > 0 && offset <= data[index].size() && n <= data[index].size() - offset);
    std::memcpy(data[index].data() + offset, values, n * sizeof(float));
    written[index] += n;
    return absl::OkStatus();
  }
};

// After Finish() accepted the stream: every tensor was written exactly once, whole.
void CheckComplete(const ChunkReader& reader, const Buffers& buffers) {
  uint64_t total = 0;
  for (size_t i = 0; i < reader.metas().size(); ++i) {
    std::optional<uint64_t> numel = CheckedNumel(reader.metas()[i].shape);
    FUZZ_CHECK(numel.has_value());
    const uint64_t got = i < buffers.written.size() ? buffers.written[i] : 0;
    FUZZ_CHECK(got == *numel);
    total += *numel * sizeof(float);
  }
  FUZZ_CHECK(total == reader.bytes());
}

void RunExpected(const std::vector<TensorChunk>& chunks) {
  ChunkReader reader(ModelLayout());
  Buffers buffers;
  for (size_t i = 0; i < ModelLayout().size(); ++i) buffers.Ensure(i, ModelLayout()[i]);
  auto sink = [&](size_t index, uint64_t offset, const float* values, size_t n) {
    return buffers.Write(index, offset, values, n);
  };
  for (const TensorChunk& chunk : chunks) {
    if (!reader.Add(chunk, sink).ok()) return;
  }
  if (reader.Finish().ok()) {
    FUZZ_CHECK(reader.metas().size() == ModelLayout().size());
    CheckComplete(reader, buffers);
  }
}

void RunUnconstrained(const std::vector<TensorChunk>& chunks) {
  ChunkReader reader(std::nullopt, kMaxTotalBytes);
  Buffers buffers;
  auto sink = [&](size_t index, uint64_t offset, const float* values, size_t n) {
    FUZZ_CHECK(index < reader.metas().size());
    buffers.Ensure(index, reader.metas()[index]);
    return buffers.Write(index, offset, values, n);
  };
  for (const TensorChunk& chunk : chunks) {
    if (!reader.Add(chunk, sink).ok()) return;
    FUZZ_CHECK(reader.bytes() <= kMaxTotalBytes);
  }
  if (reader.Finish().ok()) CheckComplete(reader, buffers);
}

void RunReadTensors(const std::vector<TensorChunk>& chunks,
                    std::optional<std::vector<TensorMeta>> expected) {
  const bool constrained = expected.has_value();
  size_t next_index = 0;
  auto next = [&](TensorChunk* chunk) {
    if (next_index == chunks.size()) return false;
    *chunk = chunks[next_index++];
    return true;
  };
  absl::StatusOr<TensorList> tensors = ReadTensors(next, std::move(expected), kMaxTotalBytes);
  if (!tensors.ok()) return;
  if (constrained) FUZZ_CHECK(tensors->size() == ModelLayout().size());
  for (size_t i = 0; i < tensors->size(); ++i) {
    const NamedTensor& t = (*tensors)[i];
    if (constrained) {
      FUZZ_CHECK(t.name == ModelLayout()[i].name && t.shape == ModelLayout()[i].shape);
    }
    std::optional<uint64_t> numel = CheckedNumel(t.shape);
    FUZZ_CHECK(numel.has_value() && t.data.size() == *numel);
  }
}

}  // namespace
}  // namespace fl

// Protobuf logs every string field with invalid UTF-8 it refuses; that is expected here.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  google::protobuf::SetLogHandler(
      [](google::protobuf::LogLevel, const char*, int, const std::string&) {});
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::vector<fl::TensorChunk> chunks = fl::DecodeChunks(data, size);
  fl::RunExpected(chunks);
  fl::RunUnconstrained(chunks);
  fl::RunReadTensors(chunks, std::nullopt);
  fl::RunReadTensors(chunks, fl::ModelLayout());
  return 0;
}
