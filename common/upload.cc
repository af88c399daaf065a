#include "common/upload.h"

#include <grpcpp/impl/codegen/proto_utils.h>
#include <grpcpp/impl/rpc_method.h>
#include <grpcpp/support/sync_stream.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "common/grpc_status.h"
#include "common/status.h"
#include "common/tls.h"
#include "common/tensor_stream.h"

namespace fl {
namespace {

// Writes one encoded UploadMessage; false when the stream closed.
using MessageWriter = std::function<bool(const grpc::ByteBuffer&)>;

// Serialised straight into gRPC's slices, as the generated stub would. Only headers and
// trailers go through here: a failure (a message over 2 GiB) would be a bug.
grpc::ByteBuffer Encode(const UploadMessage& message) {
  grpc::ByteBuffer buffer;
  bool own_buffer = false;
  const grpc::Status status =
      grpc::SerializationTraits<UploadMessage>::Serialize(message, &buffer, &own_buffer);
  GPR_ASSERT(status.ok());
  return buffer;
}

void AppendVarint(std::string* out, uint64_t v) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>(v | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

// The upload protocol (fl/federation.proto): header, grant, the chunks that `chunks` writes,
// trailer, receipt. The stream carries encoded messages, so that chunks may reference their
// data instead of copying it into a protobuf first; the method is the generated stub's.
absl::StatusOr<UploadResponse> RunUpload(
    grpc::ChannelInterface& channel, grpc::ClientContext& ctx, const UploadHeader& header,
    const std::function<absl::Status(const MessageWriter&)>& chunks) {
  static const std::string name = absl::StrCat("/", Federation::service_full_name(), "/Upload");
  static const grpc::internal::RpcMethod method(name.c_str(),
                                                grpc::internal::RpcMethod::BIDI_STREAMING);
  std::unique_ptr<grpc::ClientReaderWriter<grpc::ByteBuffer, UploadReply>> stream(
      grpc::internal::ClientReaderWriterFactory<grpc::ByteBuffer, UploadReply>::Create(
          &channel, method, &ctx));
  UploadMessage message;
  *message.mutable_header() = header;
  UploadReply reply;
  // A refused header ends the stream before the grant; Finish() below carries the reason.
  bool open = stream->Write(Encode(message)) && stream->Read(&reply) && reply.has_grant();
  absl::Status produced = absl::OkStatus();
  if (open) {
    produced = chunks([&](const grpc::ByteBuffer& buffer) {
      return open = stream->Write(buffer, ChunkWriteOptions());
    });
    open = open && produced.ok();
  }
  if (open) {
    message.mutable_trailer();
    open = stream->Write(Encode(message));
  }
  stream->WritesDone();
  reply.Clear();
  const bool done = open && stream->Read(&reply) && reply.has_done();
  // The coordinator's reason first.
  RETURN_IF_ERROR(Annotate(FromGrpcStatus(stream->Finish()), "upload"));
  RETURN_IF_ERROR(Annotate(produced, "upload"));
  if (!done) {
    return absl::InternalError("upload: the coordinator ended the stream without a receipt");
  }
  return reply.done();
}

}  // namespace

grpc::ByteBuffer EncodeChunkMessage(const TensorChunk& chunk, const char* data, size_t n,
                                    std::shared_ptr<const void> owner) {
  constexpr char kChunkTag = (2 << 3) | 2;  // UploadMessage.chunk, length-delimited
  constexpr char kDataTag = (4 << 3) | 2;   // TensorChunk.data, length-delimited
  std::string fields = chunk.SerializeAsString();
  fields.push_back(kDataTag);  // the last field; protobuf parsers take fields in any order
  AppendVarint(&fields, n);
  std::string prefix(1, kChunkTag);
  AppendVarint(&prefix, fields.size() + n);
  prefix += fields;
  grpc::Slice slices[2] = {
      grpc::Slice(prefix),
      grpc::Slice(
          const_cast<char*>(data), n,
          [](void* keep) { delete static_cast<std::shared_ptr<const void>*>(keep); },
          new std::shared_ptr<const void>(std::move(owner)))};
  return grpc::ByteBuffer(slices, n == 0 ? 1 : 2);
}

absl::StatusOr<UploadResponse> SendUpload(grpc::ChannelInterface& channel, grpc::ClientContext& ctx,
                                          const UploadHeader& header,
                                          const ChunkProducer& produce) {
  return RunUpload(channel, ctx, header, [&](const MessageWriter& write) {
    UploadMessage message;
    return produce([&](const TensorChunk& chunk) {
      *message.mutable_chunk() = chunk;
      return write(Encode(message));
    });
  });
}

absl::StatusOr<UploadResponse> SendUpload(grpc::ChannelInterface& channel, grpc::ClientContext& ctx,
                                          const UploadHeader& header,
                                          std::shared_ptr<const TensorList> update,
                                          size_t chunk_bytes) {
  return RunUpload(channel, ctx, header, [&](const MessageWriter& write) {
    return ForEachTensorChunk(ViewsOf(*update), chunk_bytes,
                              [&](const TensorChunk& chunk, const char* data, size_t n) {
                                return write(EncodeChunkMessage(chunk, data, n, update));
                              });
  });
}

absl::StatusOr<TensorList> ReceiveModel(Federation::Stub& stub, const DownloadRequest& request,
                                        uint64_t max_bytes) {
  grpc::ClientContext ctx;
  std::unique_ptr<grpc::ClientReader<TensorChunk>> reader = stub.Download(&ctx, request);
  absl::StatusOr<TensorList> model = ReadTensors(
      [&](TensorChunk* chunk) { return reader->Read(chunk); }, std::nullopt, max_bytes);
  RETURN_IF_ERROR(Annotate(FromGrpcStatus(reader->Finish()), "download"));
  RETURN_IF_ERROR(Annotate(model.status(), "download"));
  return model;
}

}  // namespace fl
