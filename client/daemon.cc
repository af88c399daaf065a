#include "client/daemon.h"

#include <cmath>
#include <map>
#include <optional>
#include <random>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "client/policy.h"
#include "common/log.h"
#include "common/memory.h"
#include "common/proto_json.h"
#include "common/safetensors.h"
#include "common/status.h"

namespace fl {
namespace {

constexpr uint64_t kMaxModelBytes = uint64_t{64} << 30;
// Training progress reaches the coordinator at most this often, and the log at most this often.
constexpr absl::Duration kProgressInterval = absl::Seconds(2);
// Once a progress message of the task failed (the coordinator away, a call timing out), training
// sends at most this often: a call that hangs until its deadline must not stall every step.
constexpr absl::Duration kProgressIntervalAfterFailure = absl::Seconds(30);
constexpr absl::Duration kProgressLogInterval = absl::Seconds(10);

void Log(const std::string& line) { LogLine("fl-client", line); }

// A call that failed for reasons that may pass: the coordinator away or restarting, out of disk
// space or transfer slots, or the stream cut. Refusals (of an update, say) are final.
bool IsRetryable(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kResourceExhausted:
    case absl::StatusCode::kAborted:
    case absl::StatusCode::kDeadlineExceeded:
      return true;
    default:
      return false;
  }
}

// The label of fl_client_task_phase for a phase the site sends: its name in lower case
// ("downloading", "evaluating", "training", "uploading").
std::string PhaseLabel(TaskPhase phase) {
  return absl::AsciiStrToLower(absl::StripPrefix(TaskPhase_Name(phase), "TASK_PHASE_"));
}

}  // namespace

absl::StatusOr<std::string> BindDatasetId(const ClientConfig& config, const Dataset& data,
                                          PrivacyLedger& ledger) {
  std::string id = config.dataset_id();
  if (id.empty()) {
    ASSIGN_OR_RETURN(id, ledger.DefaultDatasetId());
  }
  return ledger.BindDataset(id, ImageHashes(data));
}

ClientDaemon::ClientDaemon(ClientConfig config, Connector connect, std::string dataset_id,
                           const Dataset* data, LocalTrainer* trainer, PrivacyLedger* ledger,
                           ClientMetrics* metrics, Clock* clock, FrozenModelCache* frozen, Env* env)
    : config_(std::move(config)),
      connect_(std::move(connect)),
      dataset_id_(std::move(dataset_id)),
      data_(data),
      trainer_(trainer),
      ledger_(ledger),
      metrics_(metrics),
      clock_(clock),
      frozen_(frozen),
      env_(env) {}

JoinRequest ClientDaemon::MakeJoinRequest() const {
  JoinRequest request;
  for (size_t l = 0; l < data_->label_names.size(); ++l) {
    SiteLabel* label = request.add_labels();
    label->set_name(data_->label_names[l]);
    for (const auto* split : {&data_->train, &data_->test}) {
      for (const Sample& s : *split) {
        if (std::isnan(s.labels[l])) continue;
        s.labels[l] > 0.5f ? label->set_positives(label->positives() + 1)
                           : label->set_negatives(label->negatives() + 1);
      }
    }
  }
  request.set_num_images(data_->train.size() + data_->test.size());
  request.set_hardware(trainer_->Hardware());
  request.set_software_version(FL_VERSION);
  return request;
}

absl::Status ClientDaemon::Run() {
  RestoreKept();
  std::mt19937_64 rng(std::random_device{}());
  double backoff = 1.0;
  while (!stop_ && !finished_) {
    std::unique_ptr<CoordinatorConnection> coordinator = connect_();
    bool joined = false;
    absl::Status status = Session(*coordinator, &joined);
    metrics_->connected.Set(0);
    if (finished_ || stop_) break;
    if (joined) backoff = 1.0;
    // Jittered exponential backoff: sleep uniformly in [backoff/2, backoff].
    const double sleep = std::uniform_real_distribution<double>(backoff / 2, backoff)(rng);
    Log(absl::StrFormat("coordinator at %s unavailable (%s); retrying in %.1f s",
                        config_.coordinator_address(), status.message(), sleep));
    metrics_->reconnects.Increment();
    clock_->Sleep(absl::Seconds(sleep), &stop_);
    backoff = std::min<double>(backoff * 2, config_.max_backoff_seconds());
  }
  return absl::OkStatus();
}

absl::Status ClientDaemon::Session(CoordinatorConnection& coordinator, bool* joined) {
  ASSIGN_OR_RETURN(JoinResponse join, coordinator.Join(MakeJoinRequest()));
  *joined = true;
  Log(absl::StrCat("joined as '", join.site_name(), "' (coordinator ", join.coordinator_version(),
                   ")"));
  metrics_->connected.Set(1);
  Task task;
  while (!stop_ && coordinator.NextTask(&task)) {
    if (task.job_id().empty()) {
      if (task.idle() && config_.exit_when_idle() && tasks_done_ > 0) {
        Log("no job left to run; exiting as configured (exit_when_idle)");
        finished_ = true;
        coordinator.CancelTasks();
        break;
      }
      continue;  // keepalive
    }
    progress_failed_ = false;
    absl::Status status = HandleTask(coordinator, task);
    metrics_->SetTaskPhase("idle");
    ReleaseFreedMemory();  // what training kept for reuse, until the next task
    if (!status.ok()) {
      metrics_->tasks.Add({{"result", "failed"}}).Increment();
      Log(absl::StrCat("task ", task.job_id(), " round ", task.round(),
                       " failed: ", status.message()));
    }
    ++tasks_done_;
    if (config_.exit_after_tasks() > 0 &&
        tasks_done_ >= static_cast<int>(config_.exit_after_tasks())) {
      finished_ = true;
      coordinator.CancelTasks();
      break;
    }
  }
  if (stop_ || finished_) return absl::OkStatus();
  return coordinator.FinishTasks();
}

absl::Status ClientDaemon::DeclineTask(CoordinatorConnection& coordinator, const Task& task,
                                       const std::string& reason) {
  Log(absl::StrCat("declining job ", task.job_id(), " round ", task.round(), ": ", reason));
  DeclineRequest request;
  request.set_job_id(task.job_id());
  request.set_round(task.round());
  request.set_reason(reason);
  metrics_->tasks.Add({{"result", "declined"}}).Increment();
  return coordinator.Decline(request);
}

absl::StatusOr<std::string> ClientDaemon::Refusal(const Task& task, const DpPlan* plan) {
  std::string refusal = PolicyRefusal(config_, task.spec(), plan, task.evaluate_only());
  const PrivacyBudget& cap = config_.budget();
  if (!refusal.empty() || plan == nullptr || cap.max_epsilon() <= 0) return refusal;
  ASSIGN_OR_RETURN(double epsilon,
                   ledger_->EpsilonIfAdded(dataset_id_, plan->sample_rate, plan->noise_multiplier,
                                           plan->steps_per_round, cap.delta()));
  if (epsilon <= cap.max_epsilon()) return std::string();
  return absl::StrFormat(
      "privacy budget: this round would bring this dataset to epsilon %.3f at delta %g, over "
      "the site's cap of %.3f",
      epsilon, cap.delta(), cap.max_epsilon());
}

absl::StatusOr<PrivacyReport> ClientDaemon::RecordPrivacy(const Task& task, const DpPlan& plan) {
  RETURN_IF_ERROR(ledger_->Record(task.job_id(), dataset_id_, task.round(), plan.sample_rate,
                                  plan.noise_multiplier, plan.steps_per_round));
  ASSIGN_OR_RETURN(double epsilon, ledger_->Epsilon(task.job_id(), dataset_id_, plan.delta));
  metrics_->privacy_epsilon.Add({{"fl_job", task.job_id()}}).Set(epsilon);
  PrivacyReport report;
  report.set_epsilon(epsilon);
  report.set_delta(plan.delta);
  report.set_noise_multiplier(plan.noise_multiplier);
  report.set_sample_rate(plan.sample_rate);
  ASSIGN_OR_RETURN(PrivacyLedger::Spent spent, ledger_->Get(task.job_id(), dataset_id_));
  report.set_steps(spent.steps);
  return report;
}

absl::Status ClientDaemon::HandleTask(CoordinatorConnection& coordinator, const Task& task) {
  std::vector<std::string> labels(task.train_labels().begin(), task.train_labels().end());
  const bool resend = !task.evaluate_only() && kept_ && kept_->header.job_id() == task.job_id() &&
                      kept_->header.round() == task.round();
  if (!resend && kept_) ForgetKept();  // another round: what was kept is of no use any more
  // Everything the site requires is checked before any download.
  std::optional<DpPlan> plan;
  if (task.spec().dp().enabled() && !task.evaluate_only()) {
    absl::StatusOr<DpPlan> planned = PlanDp(task.spec(), data_->train.size());
    if (!planned.ok()) {
      return DeclineTask(coordinator, task, std::string(planned.status().message()));
    }
    plan = *planned;
  }
  if (resend) {
    // Trained and paid for already (the coordinator restarted before it had the update): the
    // policy still applies; the budget does not, for nothing more is spent.
    const std::string refusal =
        PolicyRefusal(config_, task.spec(), plan ? &*plan : nullptr, /*evaluate_only=*/false);
    if (!refusal.empty()) return DeclineTask(coordinator, task, refusal);
    Log(
        absl::StrFormat("job %s round %d: sending the update trained before again (no "
                        "retraining, no further privacy cost)",
                        task.job_id(), task.round()));
    SendPhase(coordinator, task, TASK_PHASE_UPLOADING);
    RETURN_IF_ERROR(UploadKept(coordinator, task));
    metrics_->tasks.Add({{"result", "done"}}).Increment();
    return absl::OkStatus();
  }
  ASSIGN_OR_RETURN(std::string refusal, Refusal(task, plan ? &*plan : nullptr));
  if (!refusal.empty()) return DeclineTask(coordinator, task, refusal);
  SendPhase(coordinator, task, TASK_PHASE_DOWNLOADING);
  if (!task.frozen_digest().empty()) {
    absl::Status frozen = EnsureFrozen(coordinator, task);
    if (!frozen.ok()) {
      return DeclineTask(coordinator, task,
                         absl::StrCat("the job's frozen autoencoder: ", frozen.message()));
    }
  }
  TensorList global;
  RETURN_IF_ERROR(DownloadModel(coordinator, task, &global));
  if (task.evaluate_only() || task.round() > 0) {
    SendPhase(coordinator, task, TASK_PHASE_EVALUATING);
    absl::Status reported = EvaluateAndReport(coordinator, task, labels, global);
    // A final evaluation the site cannot run (e.g. its test split is empty) is declined with
    // the reason, so that the job does not wait for this site until the round's deadline.
    if (task.evaluate_only() && !reported.ok()) {
      return DeclineTask(coordinator, task, absl::StrCat("cannot evaluate: ", reported.message()));
    }
    if (!reported.ok()) {  // the round's training does not depend on it
      Log(absl::StrCat("job ", task.job_id(), " round ", task.round(),
                       ": the global model's evaluation was not reported (", reported.message(),
                       "); training goes on"));
    }
  }
  if (task.evaluate_only()) {
    metrics_->tasks.Add({{"result", "done"}}).Increment();
    return absl::OkStatus();
  }
  SendPhase(coordinator, task, TASK_PHASE_TRAINING);
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<TrainResult> trained =
      trainer_->Train(task.job_id(), task.spec(), labels, global, task.round(),
                      TrainingProgress(coordinator, task, plan ? &*plan : nullptr));
  if (!trained.ok()) {  // e.g. no image decodes, or training diverged: the round need not wait
    return DeclineTask(coordinator, task,
                       absl::StrCat("training failed: ", trained.status().message()));
  }
  TrainResult result = *std::move(trained);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  metrics_->train_duration.Observe(seconds);
  Log(absl::StrFormat("job %s round %d: trained %d steps on %d samples in %.1f s, loss %.4f",
                      task.job_id(), task.round(), task.spec().local_steps(), result.num_samples,
                      seconds, result.loss));
  PrivacyReport privacy;
  if (plan) {
    // The cost is durable in the ledger before any byte of the update leaves.
    absl::StatusOr<PrivacyReport> recorded = RecordPrivacy(task, *plan);
    if (!recorded.ok()) {  // e.g. the disk is full: nothing leaves, and the coordinator knows why
      Log(absl::StrCat("job ", task.job_id(), " round ", task.round(),
                       ": cannot record the privacy cost: ", recorded.status().message()));
      return DeclineTask(
          coordinator, task,
          absl::StrCat("cannot record the round's privacy cost, so nothing is sent (",
                       absl::StatusCodeToString(recorded.status().code()),
                       "; the site's log says why)"));
    }
    privacy = *std::move(recorded);
  }
  KeptUpdate kept;
  kept.header.set_job_id(task.job_id());
  kept.header.set_round(task.round());
  // The weight FedAvg gives this site: its train split's size, which it declared at Join.
  kept.header.set_num_samples(data_->train.size());
  for (const std::string& label : result.labels) kept.header.add_labels(label);
  kept.header.set_num_tensors(static_cast<uint32_t>(result.update.size()));
  // Under DP the loss over the round's private batches is not noised: it stays here.
  if (!task.spec().dp().enabled()) kept.header.set_train_loss(result.loss);
  *kept.header.mutable_privacy() = std::move(privacy);
  kept.update = std::make_shared<const TensorList>(std::move(result.update));
  Keep(std::move(kept));
  SendPhase(coordinator, task, TASK_PHASE_UPLOADING);
  RETURN_IF_ERROR(UploadKept(coordinator, task));
  metrics_->tasks.Add({{"result", "done"}}).Increment();
  return absl::OkStatus();
}

void ClientDaemon::SendProgress(CoordinatorConnection& coordinator, const Task& task,
                                TaskPhase phase, const TrainProgress& steps,
                                double images_per_second) {
  ProgressRequest request;
  request.set_job_id(task.job_id());
  request.set_round(task.round());
  request.set_phase(phase);
  request.set_steps_done(static_cast<uint32_t>(steps.steps_done));
  request.set_steps_total(static_cast<uint32_t>(steps.steps_total));
  request.set_images_per_second(images_per_second);
  absl::Status sent = coordinator.Progress(request);
  if (!sent.ok() && !progress_failed_) {
    progress_failed_ = true;
    Log(absl::StrCat("job ", task.job_id(), " round ", task.round(),
                     ": the coordinator did not take the task's progress (", sent.ToString(),
                     "); the task goes on"));
  }
}

void ClientDaemon::SendPhase(CoordinatorConnection& coordinator, const Task& task,
                             TaskPhase phase) {
  metrics_->SetTaskPhase(PhaseLabel(phase));
  TrainProgress steps;
  if (phase == TASK_PHASE_TRAINING) {
    steps.steps_total = static_cast<int>(task.spec().local_steps());
    metrics_->train_steps_done.Set(0);
    metrics_->train_steps_total.Set(steps.steps_total);
    metrics_->train_images_per_second.Set(0);
  }
  SendProgress(coordinator, task, phase, steps, 0);
}

TrainProgressFn ClientDaemon::TrainingProgress(CoordinatorConnection& coordinator, const Task& task,
                                               const DpPlan* plan) {
  // Under DP only the plan's expected batch size enters what leaves the site.
  const std::optional<double> dp_batch =
      plan ? std::optional<double>(plan->sample_rate * static_cast<double>(data_->train.size()))
           : std::nullopt;
  const absl::Time start = clock_->Now();
  auto last_sent = std::make_shared<absl::Time>(absl::InfinitePast());
  auto last_logged = std::make_shared<absl::Time>(start);
  return [this, &coordinator, &task, dp_batch, start, last_sent,
          last_logged](const TrainProgress& p) {
    const absl::Time now = clock_->Now();
    const double seconds = absl::ToDoubleSeconds(now - start);
    const double local_rate = seconds > 0 ? static_cast<double>(p.samples) / seconds : 0;
    metrics_->train_steps_done.Set(p.steps_done);
    metrics_->train_steps_total.Set(p.steps_total);
    metrics_->train_images_per_second.Set(local_rate);
    if (now - *last_logged >= kProgressLogInterval) {
      *last_logged = now;
      Log(absl::StrFormat("job %s round %d: step %d/%d, %.0f img/s", task.job_id(), task.round(),
                          p.steps_done, p.steps_total, local_rate));
    }
    if (now - *last_sent < (progress_failed_ ? kProgressIntervalAfterFailure : kProgressInterval)) {
      return;
    }
    *last_sent = now;
    const double rate =
        !dp_batch ? local_rate : (seconds > 0 ? p.steps_done * *dp_batch / seconds : 0);
    SendProgress(coordinator, task, TASK_PHASE_TRAINING, p, rate);
  };
}

absl::Status ClientDaemon::DownloadModel(CoordinatorConnection& coordinator, const Task& task,
                                         TensorList* out, bool frozen) {
  DownloadRequest request;
  request.set_job_id(task.job_id());
  request.set_round(task.round());
  request.set_frozen(frozen);
  ASSIGN_OR_RETURN(*out, coordinator.Download(request, kMaxModelBytes));
  uint64_t bytes = 0;
  for (const NamedTensor& t : *out) bytes += t.byte_size();
  metrics_->download_bytes.Increment(static_cast<double>(bytes));
  return absl::OkStatus();
}

absl::Status ClientDaemon::EnsureFrozen(CoordinatorConnection& coordinator, const Task& task) {
  if (frozen_ == nullptr) return absl::FailedPreconditionError("this site keeps no frozen models");
  return frozen_->Ensure(task, [&]() -> absl::StatusOr<TensorList> {
    Log(absl::StrCat("job ", task.job_id(), ": downloading the frozen autoencoder of job ",
                     task.spec().diffusion().autoencoder_job(), " (sha256 ",
                     task.frozen_digest().substr(0, 12), "...)"));
    TensorList weights;
    RETURN_IF_ERROR(DownloadModel(coordinator, task, &weights, /*frozen=*/true));
    return weights;
  });
}

absl::Status ClientDaemon::EvaluateAndReport(CoordinatorConnection& coordinator, const Task& task,
                                             const std::vector<std::string>& labels,
                                             const TensorList& model) {
  ASSIGN_OR_RETURN(MetricsReport report,
                   trainer_->Evaluate(task.job_id(), task.spec(), labels, model));
  report.set_job_id(task.job_id());
  report.set_round(task.round());
  // The ROC curves go with the final evaluation only: the report of the model a site keeps.
  if (!task.evaluate_only()) {
    for (LabelMetric& m : *report.mutable_test()) m.clear_roc();
  }
  std::vector<std::string> parts;
  for (const LabelMetric& m : report.test()) {
    metrics_->test_auroc.Add({{"fl_job", task.job_id()}, {"label", m.label()}}).Set(m.auroc());
    parts.push_back(absl::StrFormat("AUROC %s %.3f", m.label(), m.auroc()));
  }
  for (const Metric& m : report.metrics()) {
    parts.push_back(absl::StrFormat("%s %.4g", m.name(), m.value()));
  }
  Log(absl::StrCat("job ", task.job_id(), " model after round ", task.round(), ": ",
                   absl::StrJoin(parts, ", ")));
  auto send = [&](int) { return coordinator.Report(report); };
  // A final evaluation is the whole task; a training round's report must not hold up training.
  return task.evaluate_only() ? SendWithRetries(task, "report", send) : send(1);
}

std::string ClientDaemon::KeptPath() const {
  return config_.state_dir() + "/kept_update.safetensors";
}

void ClientDaemon::Keep(KeptUpdate kept) {
  absl::Status written =
      WriteSafetensors(KeptPath(), *kept.update, {{"header", ToJson(kept.header)}}, env_);
  if (!written.ok()) {
    Log(absl::StrCat("the update of job ", kept.header.job_id(), " round ", kept.header.round(),
                     " is not kept on disk (", written.message(),
                     "); after a restart that round is trained, and counted, again"));
  }
  kept_ = std::move(kept);
}

void ClientDaemon::ForgetKept() {
  kept_.reset();
  const absl::Status removed = env_->RemoveFile(KeptPath());
  if (!removed.ok() && !absl::IsNotFound(removed)) {
    Log(absl::StrCat("cannot remove the kept update: ", removed.message()));
  }
}

void ClientDaemon::RestoreKept() {
  if (!env_->FileExists(KeptPath())) return;
  std::map<std::string, std::string> metadata;
  absl::StatusOr<TensorList> update = ReadSafetensors(KeptPath(), &metadata, env_);
  KeptUpdate kept;
  absl::Status read = update.status();
  if (read.ok()) read = FromJson(metadata["header"], KeptPath(), &kept.header);
  if (!read.ok()) {
    Log(absl::StrCat("the kept update is unreadable and dropped: ", read.message()));
    ForgetKept();
    return;
  }
  kept.update = std::make_shared<const TensorList>(*std::move(update));
  Log(
      absl::StrFormat("kept from before the restart: the update of job %s round %d, to be sent "
                      "when that round is asked for again",
                      kept.header.job_id(), kept.header.round()));
  kept_ = std::move(kept);
}

absl::Status ClientDaemon::UploadKept(CoordinatorConnection& coordinator, const Task& task) {
  const KeptUpdate& kept = *kept_;
  const UploadHeader& header = kept.header;
  absl::Status sent = SendWithRetries(task, "upload", [&](int attempt) {
    absl::StatusOr<UploadResponse> response = coordinator.Upload(header, kept.update);
    if (response.ok()) {
      metrics_->upload_bytes.Increment(static_cast<double>(response->bytes_received()));
      return absl::OkStatus();
    }
    if (attempt > 1 && absl::IsAlreadyExists(response.status())) {
      Log(absl::StrFormat("job %s round %d: the update had been accepted (its answer was lost)",
                          task.job_id(), task.round()));
      return absl::OkStatus();
    }
    return Annotate(response.status(), "upload");
  });
  if (sent.ok() || !(absl::IsFailedPrecondition(sent) || IsRetryable(sent))) {
    ForgetKept();
  } else {
    Log(
        absl::StrFormat("job %s round %d: the update is kept, to be sent again if the "
                        "coordinator asks for this round again",
                        task.job_id(), task.round()));
  }
  return sent;
}

absl::Status ClientDaemon::SendWithRetries(const Task& task, const std::string& rpc,
                                           const std::function<absl::Status(int)>& send) {
  double backoff = 1.0;
  for (int attempt = 1;; ++attempt) {
    absl::Status status = send(attempt);
    const double left = task.deadline_unix_seconds() - absl::ToUnixMicros(clock_->Now()) / 1e6;
    if (status.ok() || stop_ || !IsRetryable(status) || left < backoff) return status;
    Log(absl::StrFormat("job %s round %d: %s failed (%s); sending it again in %.0f s",
                        task.job_id(), task.round(), rpc, status.ToString(), backoff));
    metrics_->send_retries.Add({{"rpc", rpc}}).Increment();
    clock_->Sleep(absl::Seconds(backoff), &stop_);
    backoff = std::min<double>(backoff * 2, config_.max_backoff_seconds());
  }
}

}  // namespace fl
