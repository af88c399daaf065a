// The hospital daemon's core loop: dial out to the coordinator (hospital firewalls allow no
// inbound traffic), join, take tasks from the task stream, train locally, send updates.
// Reconnects with jittered exponential backoff whenever the coordinator is away.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "client/dataset.h"
#include "client/metrics.h"
#include "client/trainer.h"
#include "common/tls.h"
#include "fl/config.pb.h"
#include "fl/federation.grpc.pb.h"
#include "privacy/dp_plan.h"
#include "privacy/ledger.h"

namespace fl {

class ClientDaemon {
 public:
  // REQUIRES: `config` validated; all pointers outlive the daemon. `ledger` records the privacy
  // spent on this site's dataset (named by config.data_dir) by every DP job.
  ClientDaemon(ClientConfig config, CertificateProvider tls, const Dataset* data, LocalTrainer* trainer,
               PrivacyLedger* ledger, ClientMetrics* metrics);

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
  // Sends the update on channel_ (the chunks reference it, not copies), with SendWithRetries:
  // the same bytes again, so no retraining and, under DP, no further privacy cost.
  absl::Status UploadUpdate(const Task& task, TrainResult result, const PrivacyReport& privacy);
  // Calls `send(attempt)` (1, 2, ...) until it succeeds, fails for good (only UNAVAILABLE,
  // RESOURCE_EXHAUSTED, ABORTED and DEADLINE_EXCEEDED may pass), Stop() is called, or the next
  // try would come after the task's round deadline; waits 1 s, doubling up to
  // max_backoff_seconds, between tries. Counts each retry as fl_client_send_retries_total{rpc}.
  absl::Status SendWithRetries(const Task& task, const std::string& rpc,
                               const std::function<absl::Status(int)>& send);
  // Sleeps `seconds`, or less once Stop() is called.
  void SleepUnlessStopped(double seconds);
  absl::Status DeclineTask(Federation::Stub& stub, const Task& task, const std::string& reason);
  // Why this site must not take the DP task (empty: it may): the round would exceed the cap.
  absl::StatusOr<std::string> BudgetRefusal(const Task& task, const DpPlan& plan);
  // Records the round's cost in the ledger (before anything is sent) and reports the job's ε.
  absl::StatusOr<PrivacyReport> RecordPrivacy(const Task& task, const DpPlan& plan);
  JoinRequest MakeJoinRequest() const;

  const ClientConfig config_;
  const CertificateProvider tls_;
  const Dataset* data_;
  LocalTrainer* trainer_;
  PrivacyLedger* ledger_;
  ClientMetrics* metrics_;
  std::shared_ptr<grpc::Channel> channel_;  // of the current session (Run)
  std::atomic<bool> stop_{false};
  int tasks_done_ = 0;
  bool finished_ = false;
};

}  // namespace fl
