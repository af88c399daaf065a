// The client side of Federation.Upload, shared by fl-client and the benches.
#pragma once

#include <functional>

#include <grpcpp/client_context.h>

#include "absl/status/statusor.h"
#include "fl/federation.grpc.pb.h"

namespace fl {

// Emits an update's chunks in order through `emit` (false: the stream closed).
using ChunkProducer =
    std::function<absl::Status(const std::function<bool(const TensorChunk&)>& emit)>;

// Sends `header`, waits for the coordinator's grant, streams the chunks of `produce` and the
// trailer, and returns the coordinator's receipt, or its reason for refusing the upload.
absl::StatusOr<UploadResponse> SendUpload(Federation::Stub& stub, grpc::ClientContext& ctx,
                                          const UploadHeader& header,
                                          const ChunkProducer& produce);

}  // namespace fl
