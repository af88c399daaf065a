// The one pair of functions that carries statuses across the wire faithfully.
#pragma once

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace fl {

grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace fl
