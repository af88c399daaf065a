#include "common/tensor_stream.h"

#include <cmath>
#include <limits>
#include <vector>

#include <gtest/gtest.h>

#include "common/crc32c.h"

namespace fl {
namespace {

TensorList SampleTensors() {
  TensorList t;
  t.push_back({"conv1.weight", {4, 1, 3, 3}, std::vector<float>(36)});
  t.push_back({"empty", {0}, {}});
  t.push_back({"fc.bias", {3}, {0.5f, -1.5f, 2.0f}});
  for (size_t i = 0; i < t[0].data.size(); ++i) t[0].data[i] = 0.25f * i - 3;
  return t;
}

std::vector<TensorChunk> Chunks(const TensorList& t, size_t chunk_bytes) {
  std::vector<TensorChunk> chunks;
  EXPECT_TRUE(WriteTensorChunks(t, chunk_bytes, [&](const TensorChunk& c) {
                chunks.push_back(c);
                return true;
              }).ok());
  return chunks;
}

absl::StatusOr<TensorList> Read(const std::vector<TensorChunk>& chunks,
                                std::optional<std::vector<TensorMeta>> expected) {
  size_t i = 0;
  return ReadTensors(
      [&](TensorChunk* c) {
        if (i == chunks.size()) return false;
        *c = chunks[i++];
        return true;
      },
      std::move(expected));
}

TEST(TensorStreamTest, RoundTripSmallChunks) {
  TensorList t = SampleTensors();
  std::vector<TensorChunk> chunks = Chunks(t, 8);
  EXPECT_EQ(chunks.size(), 18u + 1u + 2u);  // 144 B in 8 B pieces, the empty one, 12 B in 8 B
  auto back = Read(chunks, MetasOf(t));
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->size(), t.size());
  for (size_t i = 0; i < t.size(); ++i) {
    EXPECT_EQ((*back)[i].name, t[i].name);
    EXPECT_EQ((*back)[i].shape, t[i].shape);
    EXPECT_EQ((*back)[i].data, t[i].data);
  }
}

TEST(TensorStreamTest, UnconstrainedReadCollectsMetas) {
  TensorList t = SampleTensors();
  auto back = Read(Chunks(t, 1 << 20), std::nullopt);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ((*back)[2].data, t[2].data);
}

TEST(TensorStreamTest, RefusesWrongShape) {
  TensorList t = SampleTensors();
  std::vector<TensorMeta> metas = MetasOf(t);
  metas[0].shape = {4, 1, 3, 2};
  auto back = Read(Chunks(t, 64), metas);
  EXPECT_EQ(back.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(back.status().message().find("shape"), std::string::npos);
}

TEST(TensorStreamTest, RefusesBadChecksum) {
  TensorList t = SampleTensors();
  std::vector<TensorChunk> chunks = Chunks(t, 64);
  chunks[1].mutable_data()->at(0) ^= 1;  // flip a bit of the second chunk of conv1.weight
  auto back = Read(chunks, MetasOf(t));
  EXPECT_NE(back.status().message().find("checksum"), std::string::npos) << back.status();
}

TEST(TensorStreamTest, RefusesNonFinite) {
  TensorList t = SampleTensors();
  t[2].data[1] = std::numeric_limits<float>::quiet_NaN();
  auto back = Read(Chunks(t, 64), MetasOf(SampleTensors()));
  EXPECT_NE(back.status().message().find("non-finite"), std::string::npos) << back.status();
}

TEST(TensorStreamTest, RefusesTruncatedAndGappedStreams) {
  TensorList t = SampleTensors();
  std::vector<TensorChunk> chunks = Chunks(t, 16);
  std::vector<TensorChunk> truncated(chunks.begin(), chunks.end() - 1);
  EXPECT_NE(Read(truncated, MetasOf(t)).status().message().find("truncated"), std::string::npos);
  std::vector<TensorChunk> gapped = chunks;
  gapped.erase(gapped.begin() + 2);
  EXPECT_NE(Read(gapped, MetasOf(t)).status().message().find("contiguous"), std::string::npos);
}

TEST(TensorStreamTest, RefusesOversizedUnconstrainedStream) {
  TensorList t = SampleTensors();
  size_t i = 0;
  std::vector<TensorChunk> chunks = Chunks(t, 64);
  auto back = ReadTensors(
      [&](TensorChunk* c) {
        if (i == chunks.size()) return false;
        *c = chunks[i++];
        return true;
      },
      std::nullopt, /*max_total_bytes=*/100);
  EXPECT_NE(back.status().message().find("larger than allowed"), std::string::npos);
}

// A model over 2 GiB streams through without any message near protobuf's 2 GiB limit: the
// largest message is one chunk, and the reader sees every byte with correct checksums.
TEST(TensorStreamTest, ModelOver2GiBStreamsInChunks) {
  const size_t numel = (size_t{768} << 20) / sizeof(float);  // 768 MiB per tensor, 3 tensors
  std::vector<float> data(numel);
  for (size_t i = 0; i < numel; i += 4096) data[i] = static_cast<float>(i % 977);
  std::vector<int64_t> shape = {static_cast<int64_t>(numel)};
  std::vector<std::string> names = {"a", "b", "c"};
  std::vector<TensorView> views;
  std::vector<TensorMeta> metas;
  for (const std::string& name : names) {
    views.push_back({&name, &shape, data.data(), numel});
    metas.push_back({name, shape});
  }
  ChunkReader reader(metas);
  size_t largest = 0;
  uint64_t received = 0;
  auto sink = [&](size_t, uint64_t, const float*, size_t n) {
    received += n * sizeof(float);
    return absl::OkStatus();
  };
  absl::Status status = WriteTensorChunks(views, kDefaultChunkBytes, [&](const TensorChunk& c) {
    largest = std::max(largest, c.ByteSizeLong());
    return reader.Add(c, sink).ok();
  });
  ASSERT_TRUE(status.ok()) << status;
  ASSERT_TRUE(reader.Finish().ok());
  EXPECT_EQ(received, 3 * numel * sizeof(float));
  EXPECT_GT(received, uint64_t{2} << 30);
  EXPECT_LT(largest, kDefaultChunkBytes + 1024);
}

}  // namespace
}  // namespace fl

namespace fl {
namespace {

// Found by fuzz_update_decoder: dimensions whose product wraps around 2^64 made a one-float
// tensor look like a huge one, so its shape disagreed with its data.
TEST(TensorStreamTest, RegressionShapeProductOverflowRefused) {
  TensorChunk chunk;
  TensorHeader* h = chunk.mutable_header();
  h->set_name("x");
  h->set_dtype(FLOAT32);
  for (int64_t d : {4294967297LL, 4294967295LL, 4294967297LL, 4294967295LL}) h->add_shape(d);
  h->set_byte_size(4);
  chunk.set_data(std::string(4, '\0'));
  chunk.set_last(true);
  chunk.set_crc32c(Crc32c(chunk.data().data(), 4));
  ChunkReader reader(std::nullopt, 1 << 20);
  absl::Status status =
      reader.Add(chunk, [](size_t, uint64_t, const float*, size_t) { return absl::OkStatus(); });
  EXPECT_NE(status.message().find("absurd shape"), std::string::npos) << status;
}

}  // namespace
}  // namespace fl
