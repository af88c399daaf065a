// The client side of Federation.Upload and Federation.Download, shared by fl-client and the
// benches. Part of the transport (one of the files that hold gRPC, docs/ARCHITECTURE.md); only
// gRPC's public API: the upload stream is a generic stub's call.
#pragma once

#include <functional>
#include <memory>

#include <grpcpp/channel.h>
#include <grpcpp/client_context.h>
#include <grpcpp/support/byte_buffer.h>

#include "absl/status/statusor.h"
#include "common/tensor.h"
#include "fl/federation.grpc.pb.h"

namespace fl {

// Emits an update's chunks in order through `emit` (false: the stream closed).
using ChunkProducer =
    std::function<absl::Status(const std::function<bool(const TensorChunk&)>& emit)>;

// Sends `header` on `channel`, waits for the coordinator's grant, streams the chunks of
// `produce` and the trailer, and returns the coordinator's receipt, or its reason for refusing
// the upload.
absl::StatusOr<UploadResponse> SendUpload(const std::shared_ptr<grpc::ChannelInterface>& channel,
                                          grpc::ClientContext& ctx, const UploadHeader& header,
                                          const ChunkProducer& produce);

// As above for an update held in memory, in chunks of `chunk_bytes`. Its bytes reach gRPC
// without a copy: each chunk message references them, and keeps `update` alive until gRPC has
// sent them.
absl::StatusOr<UploadResponse> SendUpload(const std::shared_ptr<grpc::ChannelInterface>& channel,
                                          grpc::ClientContext& ctx, const UploadHeader& header,
                                          std::shared_ptr<const TensorList> update,
                                          size_t chunk_bytes);

// UploadMessage{chunk: `chunk` with data [data, data + n)} in the protobuf wire format, as
// gRPC's message buffer: the encoded fields, then the data itself, referenced, not copied
// (`owner` keeps it alive as long as gRPC holds the buffer). REQUIRES: `chunk` has no data of
// its own (as ForEachTensorChunk yields it).
grpc::ByteBuffer EncodeChunkMessage(const TensorChunk& chunk, const char* data, size_t n,
                                    std::shared_ptr<const void> owner);

// Receives the global weights `request` names (Federation.Download), every chunk checked and
// assembled as ReadTensors does, at most `max_bytes` of tensor data.
absl::StatusOr<TensorList> ReceiveModel(Federation::Stub& stub, const DownloadRequest& request,
                                        uint64_t max_bytes);

}  // namespace fl
