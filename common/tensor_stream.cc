#include "common/tensor_stream.h"

#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/crc32c.h"
#include "common/status.h"

namespace fl {
namespace {

uint64_t NumelOf(const std::vector<int64_t>& shape) {
  uint64_t n = 1;
  for (int64_t d : shape) n *= static_cast<uint64_t>(d);
  return n;
}

// Bytes of a float32 tensor of `shape`, or false when a dimension is negative or the size
// does not fit in 64 bits (a hostile header must not wrap around to a small size).
bool ByteSizeOf(const std::vector<int64_t>& shape, uint64_t* bytes) {
  uint64_t n = sizeof(float);
  for (int64_t d : shape) {
    if (d < 0 || __builtin_mul_overflow(n, static_cast<uint64_t>(d), &n)) return false;
  }
  *bytes = n;
  return true;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ","), "]");
}

absl::Status Bad(const std::string& tensor, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat("tensor '", tensor, "': ", why));
}

// Index of the first NaN or infinity in data[0, n), or n. The branch-free scan vectorises; the
// slow search runs only when a bad value exists.
size_t FirstNonFinite(const float* data, size_t n) {
  uint32_t any = 0;
  for (size_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, data + i, sizeof(bits));
    any |= static_cast<uint32_t>((bits & 0x7f800000u) == 0x7f800000u);
  }
  if (any == 0) return n;
  for (size_t i = 0; i < n; ++i) {
    if (!std::isfinite(data[i])) return i;
  }
  return n;
}

}  // namespace

uint64_t TensorMeta::byte_size() const { return NumelOf(shape) * sizeof(float); }

std::vector<TensorMeta> MetasOf(const TensorList& tensors) {
  std::vector<TensorMeta> metas;
  metas.reserve(tensors.size());
  for (const NamedTensor& t : tensors) metas.push_back({t.name, t.shape});
  return metas;
}

absl::Status ForEachTensorChunk(const std::vector<TensorView>& tensors, size_t chunk_bytes,
                                const ChunkSpanFn& emit) {
  if (chunk_bytes < 4 || chunk_bytes % 4 != 0) {
    return absl::InvalidArgumentError("chunk size must be a positive multiple of 4 bytes");
  }
  TensorChunk chunk;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const TensorView& t = tensors[i];
    const uint64_t bytes = t.numel * sizeof(float);
    const char* data = reinterpret_cast<const char*>(t.data);
    uint32_t crc = 0;
    uint64_t offset = 0;
    do {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(chunk_bytes, bytes - offset));
      chunk.Clear();
      chunk.set_tensor_index(static_cast<uint32_t>(i));
      if (offset == 0) {
        TensorHeader* header = chunk.mutable_header();
        header->set_name(*t.name);
        header->set_dtype(FLOAT32);
        for (int64_t d : *t.shape) header->add_shape(d);
        header->set_byte_size(bytes);
      }
      chunk.set_offset(offset);
      crc = Crc32cExtend(crc, data + offset, n);
      if (offset + n == bytes) {
        chunk.set_last(true);
        chunk.set_crc32c(crc);
      }
      if (!emit(chunk, data + offset, n)) return absl::CancelledError("stream closed by the peer");
      offset += n;
    } while (offset < bytes);
  }
  return absl::OkStatus();
}

absl::Status WriteTensorChunks(const std::vector<TensorView>& tensors, size_t chunk_bytes,
                               const std::function<bool(const TensorChunk&)>& emit) {
  TensorChunk full;
  return ForEachTensorChunk(tensors, chunk_bytes,
                            [&](const TensorChunk& chunk, const char* data, size_t n) {
                              full = chunk;
                              full.set_data(data, n);
                              return emit(full);
                            });
}

std::vector<TensorView> ViewsOf(const TensorList& tensors) {
  std::vector<TensorView> views;
  views.reserve(tensors.size());
  for (const NamedTensor& t : tensors) {
    views.push_back({&t.name, &t.shape, t.data.data(), t.data.size()});
  }
  return views;
}

absl::Status WriteTensorChunks(const TensorList& tensors, size_t chunk_bytes,
                               const std::function<bool(const TensorChunk&)>& emit) {
  return WriteTensorChunks(ViewsOf(tensors), chunk_bytes, emit);
}

ChunkReader::ChunkReader(std::optional<std::vector<TensorMeta>> expected, uint64_t max_total_bytes)
    : expected_(std::move(expected)), max_total_bytes_(max_total_bytes) {
  if (expected_) {
    metas_ = *expected_;
    max_total_bytes_ = 0;
    for (const TensorMeta& m : metas_) max_total_bytes_ += m.byte_size();
  }
}

absl::Status ChunkReader::StartTensor(const TensorChunk& chunk) {
  if (!chunk.has_header())
    return absl::InvalidArgumentError("first chunk of a tensor has no header");
  const TensorHeader& h = chunk.header();
  if (h.dtype() != FLOAT32) return Bad(h.name(), "dtype must be FLOAT32");
  std::vector<int64_t> shape(h.shape().begin(), h.shape().end());
  uint64_t bytes = 0;
  if (!ByteSizeOf(shape, &bytes)) return Bad(h.name(), "absurd shape (negative or overflowing)");
  if (h.byte_size() != bytes) return Bad(h.name(), "byte_size does not match its shape");
  if (expected_) {
    if (current_ >= metas_.size()) return Bad(h.name(), "more tensors than the model has");
    const TensorMeta& want = metas_[current_];
    if (h.name() != want.name) {
      return Bad(h.name(), absl::StrCat("expected tensor '", want.name, "' at index ", current_));
    }
    if (shape != want.shape) {
      return Bad(h.name(), absl::StrCat("shape ", ShapeString(shape), " differs from the model's ",
                                        ShapeString(want.shape)));
    }
  } else {
    metas_.push_back({h.name(), shape});
  }
  if (total_bytes_ + h.byte_size() > max_total_bytes_) {
    return Bad(h.name(), "stream is larger than allowed");
  }
  in_tensor_ = true;
  offset_ = 0;
  crc_ = 0;
  return absl::OkStatus();
}

absl::Status ChunkReader::Add(const TensorChunk& chunk, const Sink& sink) {
  if (chunk.tensor_index() != current_) {
    return absl::InvalidArgumentError(absl::StrCat("chunk for tensor ", chunk.tensor_index(),
                                                   " arrived while tensor ", current_,
                                                   " is expected"));
  }
  if (!in_tensor_) RETURN_IF_ERROR(StartTensor(chunk));
  const TensorMeta& meta = metas_[current_];
  const std::string& data = chunk.data();
  if (chunk.offset() != offset_) {
    return Bad(meta.name, absl::StrCat("chunk offset ", chunk.offset(), " but ", offset_,
                                       " expected (chunks must be contiguous)"));
  }
  if (data.size() % sizeof(float) != 0 || offset_ + data.size() > meta.byte_size()) {
    return Bad(meta.name, "chunk size is not whole floats or overruns the tensor");
  }
  const size_t n = data.size() / sizeof(float);
  buffer_.resize(n);
  if (n > 0) std::memcpy(buffer_.data(), data.data(), data.size());
  if (const size_t bad = FirstNonFinite(buffer_.data(), n); bad < n) {
    return Bad(meta.name, absl::StrCat("non-finite value at element ", offset_ / 4 + bad));
  }
  crc_ = Crc32cExtend(crc_, data.data(), data.size());
  const bool complete = offset_ + data.size() == meta.byte_size();
  if (chunk.last() != complete)
    return Bad(meta.name, "'last' flag does not match the tensor's end");
  if (complete && chunk.crc32c() != crc_) return Bad(meta.name, "checksum mismatch");
  if (n > 0) RETURN_IF_ERROR(sink(current_, offset_ / sizeof(float), buffer_.data(), n));
  offset_ += data.size();
  total_bytes_ += data.size();
  if (complete) {
    in_tensor_ = false;
    ++current_;
  }
  return absl::OkStatus();
}

absl::Status ChunkReader::Finish() const {
  if (in_tensor_) {
    return Bad(metas_[current_].name, "stream ended in the middle of the tensor (truncated)");
  }
  if (expected_ && current_ != metas_.size()) {
    return absl::InvalidArgumentError(absl::StrCat("stream ended after ", current_, " of ",
                                                   metas_.size(), " tensors (truncated)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<TensorList> ReadTensors(const std::function<bool(TensorChunk*)>& next,
                                       std::optional<std::vector<TensorMeta>> expected,
                                       uint64_t max_total_bytes) {
  ChunkReader reader(std::move(expected), max_total_bytes);
  TensorList tensors;
  TensorChunk chunk;
  auto sink = [&](size_t index, uint64_t offset, const float* data, size_t n) {
    while (tensors.size() <= index) {
      const TensorMeta& meta = reader.metas()[tensors.size()];
      tensors.push_back({meta.name, meta.shape, std::vector<float>(NumelOf(meta.shape))});
    }
    std::memcpy(tensors[index].data.data() + offset, data, n * sizeof(float));
    return absl::OkStatus();
  };
  while (next(&chunk)) RETURN_IF_ERROR(reader.Add(chunk, sink));
  RETURN_IF_ERROR(reader.Finish());
  // Zero-sized tensors never reach the sink; add them so the list matches the metas.
  for (size_t i = tensors.size(); i < reader.metas().size(); ++i) {
    tensors.push_back({reader.metas()[i].name, reader.metas()[i].shape, {}});
  }
  return tensors;
}

}  // namespace fl
