// The hospital daemon's core (the site core): dial out to the coordinator (hospital firewalls
// allow no inbound traffic), join, take tasks from the task stream, check each against the
// site's policy and privacy budget, train locally, record the privacy cost, send the update.
// Reconnects with jittered exponential backoff whenever the coordinator is away.
//
// Transport-free: the coordinator is a CoordinatorConnection (gRPC in client/grpc_link.h, an
// in-process fake in the unit tests), and time is a Clock. The rule that makes DP real lives
// here and is unit-tested: a DP round's cost is durable in the ledger before any byte of its
// update is sent; a task the policy or the budget refuses is declined before anything is
// downloaded; a cost that cannot be recorded declines the round and sends nothing.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "client/coordinator_link.h"
#include "client/dataset.h"
#include "client/frozen_models.h"
#include "client/metrics.h"
#include "client/trainer.h"
#include "common/clock.h"
#include "common/env.h"
#include "fl/config.pb.h"
#include "privacy/dp_plan.h"
#include "privacy/ledger.h"

namespace fl {

// The id this site's DP costs are recorded under: config.dataset_id, or the ledger's default id
// for the site, bound to the images of `data` (PrivacyLedger::BindDataset). Fails, naming the
// id to use, when those images were trained on under another id.
absl::StatusOr<std::string> BindDatasetId(const ClientConfig& config, const Dataset& data,
                                          PrivacyLedger& ledger);

class ClientDaemon {
 public:
  // REQUIRES: `config` validated; all pointers outlive the daemon. `ledger` records the privacy
  // spent on this site's dataset, under `dataset_id` (as PrivacyLedger::BindDataset returned
  // it), by every DP job.
  // `frozen` keeps the models that jobs build on (the trainer reads them from it); null: this
  // site declines such jobs. Files in state_dir (the kept update) go through `env`.
  ClientDaemon(ClientConfig config, Connector connect, std::string dataset_id, const Dataset* data,
               LocalTrainer* trainer, PrivacyLedger* ledger, ClientMetrics* metrics,
               Clock* clock = &SystemClock(), FrozenModelCache* frozen = nullptr,
               Env* env = Env::Default());

  // Runs until Stop() or an exit condition of the config (exit_after_tasks, exit_when_idle).
  absl::Status Run();

  // Thread-safe; makes Run return soon (at the task stream's next keepalive at the latest).
  void Stop() { stop_ = true; }

 private:
  absl::Status Session(CoordinatorConnection& coordinator, bool* joined);
  absl::Status HandleTask(CoordinatorConnection& coordinator, const Task& task);
  // The round's global model, or with `frozen` the job's frozen autoencoder.
  absl::Status DownloadModel(CoordinatorConnection& coordinator, const Task& task, TensorList* out,
                             bool frozen = false);
  // Makes the task's frozen autoencoder (Task.frozen_digest) available to the trainer.
  absl::Status EnsureFrozen(CoordinatorConnection& coordinator, const Task& task);
  absl::Status EvaluateAndReport(CoordinatorConnection& coordinator, const Task& task,
                                 const std::vector<std::string>& labels, const TensorList& model);
  // A trained update (its cost, under DP, already recorded) until the coordinator has it: its
  // upload header (job, round, samples, labels, loss, privacy) and tensors. Kept on disk too
  // (state_dir/kept_update.safetensors), so that a restarted site sends it rather than train
  // and pay again.
  struct KeptUpdate {
    UploadHeader header;
    std::shared_ptr<const TensorList> update;
  };
  // Keeps `kept` in memory and on disk (a write that fails is logged: after a restart the
  // round would then be trained, and paid for, again).
  void Keep(KeptUpdate kept);
  // Forgets the kept update, in memory and on disk.
  void ForgetKept();
  // At start: the update a previous run kept, if any (an unreadable file is logged and removed).
  void RestoreKept();
  std::string KeptPath() const;
  // Sends the kept update with SendWithRetries: the same bytes again, so no retraining and,
  // under DP, no further privacy cost. Forgets it once the coordinator has it or refuses it for
  // good; keeps it when the round was not open (the coordinator restarting) or the retries ran
  // out, so that a task for the same job and round sends it again instead of retraining.
  absl::Status UploadKept(CoordinatorConnection& coordinator, const Task& task);
  // Calls `send(attempt)` (1, 2, ...) until it succeeds, fails for good (only UNAVAILABLE,
  // RESOURCE_EXHAUSTED, ABORTED and DEADLINE_EXCEEDED may pass), Stop() is called, or the next
  // try would come after the task's round deadline; waits 1 s, doubling up to
  // max_backoff_seconds, between tries. Counts each retry as fl_client_send_retries_total{rpc}.
  absl::Status SendWithRetries(const Task& task, const std::string& rpc,
                               const std::function<absl::Status(int)>& send);
  absl::Status DeclineTask(CoordinatorConnection& coordinator, const Task& task,
                           const std::string& reason);
  // Sends the task's phase and training progress to the coordinator (best effort: a failure
  // is logged once per task, never fatal).
  void SendProgress(CoordinatorConnection& coordinator, const Task& task, TaskPhase phase,
                    const TrainProgress& steps, double images_per_second);
  // Tells the coordinator that the task enters `phase` (best effort: a failure is logged once
  // per task, never fatal) and shows it in fl_client_task_phase.
  void SendPhase(CoordinatorConnection& coordinator, const Task& task, TaskPhase phase);
  // The trainer's progress callback for `task`: the gauges at each step, the log every 10 s,
  // the coordinator at the first step and then every 2 s at most (30 s once a send failed).
  // What the coordinator hears is counts only: steps, and under DP (`plan` set) a throughput from
  // the plan's expected batch size, never from the Poisson batches actually drawn.
  TrainProgressFn TrainingProgress(CoordinatorConnection& coordinator, const Task& task,
                                   const DpPlan* plan);
  // Why this site must not take the task (empty: it may): the site's policy, or a DP round
  // that would exceed the privacy cap. `plan` is the DP plan of a DP training task, else null.
  absl::StatusOr<std::string> Refusal(const Task& task, const DpPlan* plan);
  // Records the round's cost in the ledger (before anything is sent) and reports the job's ε.
  absl::StatusOr<PrivacyReport> RecordPrivacy(const Task& task, const DpPlan& plan);
  JoinRequest MakeJoinRequest() const;

  const ClientConfig config_;
  const Connector connect_;
  std::optional<KeptUpdate> kept_;  // touched by Run's thread only
  const std::string dataset_id_;
  const Dataset* data_;
  LocalTrainer* trainer_;
  PrivacyLedger* ledger_;
  ClientMetrics* metrics_;
  Clock* clock_;
  FrozenModelCache* frozen_;
  Env* env_;
  std::atomic<bool> stop_{false};
  bool progress_failed_ = false;  // a progress message of the current task failed (logged)
  int tasks_done_ = 0;
  bool finished_ = false;
};

}  // namespace fl
