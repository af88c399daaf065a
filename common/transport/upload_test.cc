#include "common/transport/upload.h"

#include <string>

#include <gtest/gtest.h>

#include "common/tensor_stream.h"

namespace fl {
namespace {

std::string Flatten(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  EXPECT_TRUE(buffer.Dump(&slices).ok());
  std::string out;
  for (const grpc::Slice& s : slices)
    out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

// Each borrowed-data message parses as the UploadMessage a copying sender would have built,
// whatever the chunk's fields and sizes (varint lengths of 1 to 3 bytes).
TEST(UploadTest, ChunkMessageWithBorrowedDataParsesAsTheCopiedMessage) {
  auto update = std::make_shared<TensorList>();
  update->push_back({"backbone.weight", {3, 50000}, std::vector<float>(150000)});
  update->push_back({"head.bias", {2}, {0.5f, -1.5f}});
  update->push_back({"empty", {0}, {}});
  for (size_t i = 0; i < update->front().data.size(); ++i) update->front().data[i] = 0.25f * i;
  std::shared_ptr<const TensorList> shared = update;
  for (size_t chunk_bytes : {size_t{100}, size_t{4096}, size_t{256 << 10}}) {
    std::vector<std::string> borrowed;
    ASSERT_TRUE(ForEachTensorChunk(ViewsOf(*shared), chunk_bytes,
                                   [&](const TensorChunk& chunk, const char* data, size_t n) {
                                     borrowed.push_back(
                                         Flatten(EncodeChunkMessage(chunk, data, n, shared)));
                                     return true;
                                   })
                    .ok());
    size_t i = 0;
    ASSERT_TRUE(WriteTensorChunks(*shared, chunk_bytes, [&](const TensorChunk& chunk) {
                  UploadMessage want;
                  *want.mutable_chunk() = chunk;
                  UploadMessage got;
                  EXPECT_TRUE(i < borrowed.size() && got.ParseFromString(borrowed[i])) << i;
                  EXPECT_EQ(got.SerializeAsString(), want.SerializeAsString()) << "chunk " << i;
                  ++i;
                  return true;
                }).ok());
    EXPECT_EQ(i, borrowed.size()) << chunk_bytes;
  }
}

// The bytes on the wire, written out by hand from the protobuf encoding: UploadMessage.chunk
// (field 2), then TensorChunk's fields in number order except data (field 4), which comes last.
// Regression guard for the framing's tags, now derived from the generated field numbers.
TEST(UploadTest, ChunkMessageBytesOnTheWire) {
  auto update = std::make_shared<const std::string>("\xde\xad\xbe\xef", 4);
  TensorChunk chunk;
  chunk.set_tensor_index(1);
  chunk.set_offset(8);
  chunk.set_last(true);
  chunk.set_crc32c(5);
  const std::string want(
      "\x12\x0e"                          // UploadMessage.chunk, 14 bytes
      "\x08\x01\x18\x08\x28\x01\x30\x05"  // tensor_index 1, offset 8, last, crc32c 5
      "\x22\x04\xde\xad\xbe\xef",         // data, 4 bytes
      16);
  EXPECT_EQ(Flatten(EncodeChunkMessage(chunk, update->data(), update->size(), update)), want);
}

TEST(UploadTest, BorrowedDataIsKeptAliveByTheMessage) {
  auto update =
      std::make_shared<const TensorList>(TensorList{{"w", {4}, {1.0f, 2.0f, 3.0f, 4.0f}}});
  std::weak_ptr<const TensorList> alive = update;
  TensorChunk chunk;
  chunk.set_tensor_index(0);
  const char* data = reinterpret_cast<const char*>(update->front().data.data());
  grpc::ByteBuffer buffer = EncodeChunkMessage(chunk, data, 16, update);
  update.reset();
  EXPECT_FALSE(alive.expired());  // the buffer's data slice still references it
  UploadMessage got;
  ASSERT_TRUE(got.ParseFromString(Flatten(buffer)));
  EXPECT_EQ(got.chunk().data().size(), 16u);
  buffer.Clear();
  EXPECT_TRUE(alive.expired());
}

}  // namespace
}  // namespace fl
