#include "common/transport/upload.h"

#include <grpcpp/completion_queue.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/support/async_stream.h>

#include <cstdint>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/transport/grpc_status.h"
#include "common/status.h"
#include "common/tensor_stream.h"
#include "common/transport/tls.h"

namespace fl {
namespace {

// Writes one encoded UploadMessage; false when the stream closed.
using MessageWriter = std::function<bool(const grpc::ByteBuffer&)>;

// Only headers and trailers go through here (chunks are encoded by EncodeChunkMessage): a copy
// of a few hundred bytes.
grpc::ByteBuffer Encode(const UploadMessage& message) {
  grpc::Slice slice(message.SerializeAsString());
  return grpc::ByteBuffer(&slice, 1);
}

void AppendVarint(std::string* out, uint64_t v) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>(v | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

// A protobuf field's tag as it precedes the field's bytes on the wire: the field number and the
// wire type (2: length-delimited, for messages and bytes), as the protobuf encoding defines it.
constexpr uint32_t kLengthDelimited = 2;
constexpr uint32_t LengthDelimitedTag(int field_number) {
  return (static_cast<uint32_t>(field_number) << 3) | kLengthDelimited;
}

// Federation.Upload as a blocking bidirectional stream of encoded messages, through gRPC's
// public generic stub: the stream carries encoded messages, so that chunks may reference their
// data instead of copying it into a protobuf first. Each call waits for its one operation on a
// completion queue of its own, as gRPC's blocking streams do.
class UploadStream {
 public:
  UploadStream(std::shared_ptr<grpc::ChannelInterface> channel, grpc::ClientContext& ctx)
      : stub_(std::move(channel)) {
    static const std::string method = absl::StrCat("/", Federation::service_full_name(), "/Upload");
    call_ = stub_.PrepareCall(&ctx, method, &cq_);
    if (call_ != nullptr) {
      call_->StartCall(this);
      started_ = Wait();
    }
  }
  ~UploadStream() {
    cq_.Shutdown();
    void* tag;
    bool ok;
    while (cq_.Next(&tag, &ok)) {
    }
  }

  // False when the stream is closed.
  bool Write(const grpc::ByteBuffer& message, grpc::WriteOptions options = {}) {
    if (!started_) return false;
    call_->Write(message, options, this);
    return Wait();
  }
  bool Read(UploadReply* reply) {
    if (!started_) return false;
    call_->Read(reply, this);
    return Wait();
  }
  void WritesDone() {
    if (!started_) return;
    call_->WritesDone(this);
    Wait();
  }
  grpc::Status Finish() {
    if (call_ == nullptr) return grpc::Status(grpc::StatusCode::INTERNAL, "upload call not set up");
    grpc::Status status;
    call_->Finish(&status, this);
    Wait();
    return status;
  }

 private:
  // The result of the one operation in flight.
  bool Wait() {
    void* tag = nullptr;
    bool ok = false;
    return cq_.Next(&tag, &ok) && ok;
  }

  grpc::CompletionQueue cq_;
  grpc::TemplatedGenericStub<grpc::ByteBuffer, UploadReply> stub_;
  std::unique_ptr<grpc::ClientAsyncReaderWriter<grpc::ByteBuffer, UploadReply>> call_;
  bool started_ = false;
};

// The upload protocol (fl/federation.proto): header, grant, the chunks that `chunks` writes,
// trailer, receipt.
absl::StatusOr<UploadResponse> RunUpload(
    const std::shared_ptr<grpc::ChannelInterface>& channel, grpc::ClientContext& ctx,
    const UploadHeader& header, const std::function<absl::Status(const MessageWriter&)>& chunks) {
  UploadStream stream(channel, ctx);
  UploadMessage message;
  *message.mutable_header() = header;
  UploadReply reply;
  // A refused header ends the stream before the grant; Finish() below carries the reason.
  bool open = stream.Write(Encode(message)) && stream.Read(&reply) && reply.has_grant();
  absl::Status produced = absl::OkStatus();
  if (open) {
    produced = chunks([&](const grpc::ByteBuffer& buffer) {
      return open = stream.Write(buffer, ChunkWriteOptions());
    });
    open = open && produced.ok();
  }
  if (open) {
    message.mutable_trailer();
    open = stream.Write(Encode(message));
  }
  stream.WritesDone();
  reply.Clear();
  const bool done = open && stream.Read(&reply) && reply.has_done();
  // The coordinator's reason first.
  RETURN_IF_ERROR(Annotate(FromGrpcStatus(stream.Finish()), "upload"));
  RETURN_IF_ERROR(Annotate(produced, "upload"));
  if (!done) {
    return absl::InternalError("upload: the coordinator ended the stream without a receipt");
  }
  return reply.done();
}

}  // namespace

grpc::ByteBuffer EncodeChunkMessage(const TensorChunk& chunk, const char* data, size_t n,
                                    std::shared_ptr<const void> owner) {
  constexpr uint32_t kChunkTag = LengthDelimitedTag(UploadMessage::kChunkFieldNumber);
  constexpr uint32_t kDataTag = LengthDelimitedTag(TensorChunk::kDataFieldNumber);
  std::string fields = chunk.SerializeAsString();
  AppendVarint(&fields, kDataTag);  // the last field; protobuf parsers take fields in any order
  AppendVarint(&fields, n);
  std::string prefix;
  AppendVarint(&prefix, kChunkTag);
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

absl::StatusOr<UploadResponse> SendUpload(const std::shared_ptr<grpc::ChannelInterface>& channel,
                                          grpc::ClientContext& ctx, const UploadHeader& header,
                                          const ChunkProducer& produce) {
  return RunUpload(channel, ctx, header, [&](const MessageWriter& write) {
    UploadMessage message;
    return produce([&](const TensorChunk& chunk) {
      *message.mutable_chunk() = chunk;
      return write(Encode(message));
    });
  });
}

absl::StatusOr<UploadResponse> SendUpload(const std::shared_ptr<grpc::ChannelInterface>& channel,
                                          grpc::ClientContext& ctx, const UploadHeader& header,
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
  absl::StatusOr<TensorList> model =
      ReadTensors([&](TensorChunk* chunk) { return reader->Read(chunk); }, std::nullopt, max_bytes);
  RETURN_IF_ERROR(Annotate(FromGrpcStatus(reader->Finish()), "download"));
  RETURN_IF_ERROR(Annotate(model.status(), "download"));
  return model;
}

}  // namespace fl
