// What the site core (client/daemon.h) needs of the coordinator: one connection's calls, as
// plain messages and statuses. The gRPC implementation is client/grpc_link.h; the core's unit
// tests use an in-process fake. Nothing here includes gRPC.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/tensor.h"
#include "fl/federation.pb.h"

namespace fl {

class CoordinatorConnection {
 public:
  virtual ~CoordinatorConnection() = default;
  virtual absl::StatusOr<JoinResponse> Join(const JoinRequest& request) = 0;
  // The task stream (opened by the first call): blocks for the next task; false once the
  // stream has ended (FinishTasks says why) or CancelTasks was called.
  virtual bool NextTask(Task* task) = 0;
  virtual absl::Status FinishTasks() = 0;
  // Ends the task stream; thread-safe.
  virtual void CancelTasks() = 0;
  // The global weights `request` names, at most `max_bytes` of tensor data, every chunk checked.
  virtual absl::StatusOr<TensorList> Download(const DownloadRequest& request,
                                              uint64_t max_bytes) = 0;
  // Sends an update (header, chunks, trailer) and returns the coordinator's receipt.
  virtual absl::StatusOr<UploadResponse> Upload(const UploadHeader& header,
                                                std::shared_ptr<const TensorList> update) = 0;
  virtual absl::Status Report(const MetricsReport& report) = 0;
  virtual absl::Status Decline(const DeclineRequest& request) = 0;
  // Tells the coordinator the task's phase and training progress (best effort, quick).
  virtual absl::Status Progress(const ProgressRequest& request) = 0;
};

// Dials the coordinator anew (each session of the daemon's reconnect loop).
using Connector = std::function<std::unique_ptr<CoordinatorConnection>()>;

}  // namespace fl
