// The hospital daemon's core loop: dial out to the coordinator (hospital firewalls allow no
// inbound traffic), join, take tasks from the task stream, train locally, send updates.
// Reconnects with jittered exponential backoff whenever the coordinator is away.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "client/dataset.h"
#include "client/metrics.h"
#include "client/trainer.h"
#include "common/tls.h"
#include "fl/config.pb.h"
#include "fl/federation.grpc.pb.h"

namespace fl {

class ClientDaemon {
 public:
  // REQUIRES: `config` validated; all pointers outlive the daemon.
  ClientDaemon(ClientConfig config, TlsMaterial tls, const Dataset* data, LocalTrainer* trainer,
               ClientMetrics* metrics);

  // Runs until Stop() or an exit condition of the config (exit_after_tasks, exit_when_idle).
  absl::Status Run();
  // Thread-safe; makes Run return soon.
  void Stop() { stop_ = true; }

 private:
  absl::Status Session(Federation::Stub& stub, bool* joined);
  absl::Status HandleTask(Federation::Stub& stub, const Task& task);
  absl::Status DownloadModel(Federation::Stub& stub, const Task& task, TensorList* out);
  absl::Status EvaluateAndReport(Federation::Stub& stub, const Task& task,
                                 const std::vector<std::string>& labels, const TensorList& model,
                                 double train_loss);
  absl::Status UploadUpdate(Federation::Stub& stub, const Task& task, const TrainResult& result);
  JoinRequest MakeJoinRequest() const;

  const ClientConfig config_;
  const TlsMaterial tls_;
  const Dataset* data_;
  LocalTrainer* trainer_;
  ClientMetrics* metrics_;
  std::atomic<bool> stop_{false};
  int tasks_done_ = 0;
  bool finished_ = false;
};

}  // namespace fl
