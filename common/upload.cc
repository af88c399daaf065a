#include "common/upload.h"

#include "common/grpc_status.h"
#include "common/status.h"

namespace fl {

absl::StatusOr<UploadResponse> SendUpload(Federation::Stub& stub, grpc::ClientContext& ctx,
                                          const UploadHeader& header,
                                          const ChunkProducer& produce) {
  std::unique_ptr<grpc::ClientReaderWriter<UploadMessage, UploadReply>> stream =
      stub.Upload(&ctx);
  UploadMessage message;
  *message.mutable_header() = header;
  UploadReply reply;
  // A refused header ends the stream before the grant; Finish() below carries the reason.
  bool open = stream->Write(message) && stream->Read(&reply) && reply.has_grant();
  absl::Status produced = absl::OkStatus();
  if (open) {
    produced = produce([&](const TensorChunk& chunk) {
      *message.mutable_chunk() = chunk;
      return open = stream->Write(message);
    });
    open = open && produced.ok();
  }
  if (open) {
    message.mutable_trailer();
    open = stream->Write(message);
  }
  stream->WritesDone();
  reply.Clear();
  const bool done = open && stream->Read(&reply) && reply.has_done();
  RETURN_IF_ERROR(Annotate(FromGrpcStatus(stream->Finish()), "upload"));  // the coordinator's reason
  RETURN_IF_ERROR(Annotate(produced, "upload"));
  if (!done) return absl::InternalError("upload: the coordinator ended the stream without a receipt");
  return reply.done();
}

}  // namespace fl
