#include "bench/bench_model.h"

#include <algorithm>

#include "common/crc32c.h"

namespace fl::bench {

namespace {
constexpr int64_t kHeadWidth = 1024;
}  // namespace

std::vector<TensorMeta> BenchModelMetas(int64_t mib) {
  const int64_t total = mib * static_cast<int64_t>((1 << 20) / sizeof(float));
  const int64_t labels = static_cast<int64_t>(kBenchLabels);
  const int64_t backbone = total - labels * kHeadWidth - labels;
  return {
      {"backbone.weight", {backbone}}, {"fc.weight", {labels, kHeadWidth}}, {"fc.bias", {labels}}};
}

void GenerateValues(uint32_t seed, size_t tensor, uint64_t offset, float* out, size_t n) {
  const uint64_t base = offset + seed * 7919u + tensor * 104729u;
  for (size_t i = 0; i < n; ++i) {
    out[i] = static_cast<float>((base + i) & 2047) * (1.0f / 1024) - 1.0f;
  }
}

TensorList MakeBenchTensors(const std::vector<TensorMeta>& metas, uint32_t seed) {
  TensorList tensors;
  for (size_t k = 0; k < metas.size(); ++k) {
    NamedTensor t{metas[k].name, metas[k].shape, {}};
    t.data.resize(static_cast<size_t>(t.numel()));
    GenerateValues(seed, k, 0, t.data.data(), t.data.size());
    tensors.push_back(std::move(t));
  }
  return tensors;
}

absl::Status StreamGeneratedUpdate(const std::vector<TensorMeta>& metas, uint32_t seed,
                                   size_t chunk_bytes,
                                   const std::function<absl::Status(const TensorChunk&)>& emit) {
  std::vector<float> buffer(chunk_bytes / sizeof(float));
  TensorChunk chunk;
  for (size_t k = 0; k < metas.size(); ++k) {
    const uint64_t bytes = metas[k].byte_size();
    uint32_t crc = 0;
    uint64_t offset = 0;
    do {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(chunk_bytes, bytes - offset));
      GenerateValues(seed, k, offset / sizeof(float), buffer.data(), n / sizeof(float));
      chunk.Clear();
      chunk.set_tensor_index(static_cast<uint32_t>(k));
      if (offset == 0) {
        TensorHeader* header = chunk.mutable_header();
        header->set_name(metas[k].name);
        header->set_dtype(FLOAT32);
        for (int64_t d : metas[k].shape) header->add_shape(d);
        header->set_byte_size(bytes);
      }
      chunk.set_offset(offset);
      chunk.set_data(reinterpret_cast<const char*>(buffer.data()), n);
      crc = Crc32cExtend(crc, buffer.data(), n);
      offset += n;
      if (offset == bytes) {
        chunk.set_last(true);
        chunk.set_crc32c(crc);
      }
      if (absl::Status s = emit(chunk); !s.ok()) return s;
    } while (offset < bytes);
  }
  return absl::OkStatus();
}

}  // namespace fl::bench
