#include "client/daemon.h"

#include <chrono>
#include <cmath>
#include <optional>
#include <iostream>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/grpc_status.h"
#include "common/log.h"
#include "common/memory.h"
#include "common/status.h"
#include "common/tensor_stream.h"
#include "common/upload.h"

namespace fl {
namespace {

constexpr uint64_t kMaxModelBytes = uint64_t{64} << 30;

void Log(const std::string& line) { LogLine("fl-client", line); }

std::chrono::system_clock::time_point In(int seconds) {
  return std::chrono::system_clock::now() + std::chrono::seconds(seconds);
}

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

}  // namespace

ClientDaemon::ClientDaemon(ClientConfig config, CertificateProvider tls, const Dataset* data,
                           LocalTrainer* trainer, PrivacyLedger* ledger, ClientMetrics* metrics)
    : config_(std::move(config)),
      tls_(std::move(tls)),
      data_(data),
      trainer_(trainer),
      ledger_(ledger),
      metrics_(metrics) {}

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
  std::mt19937_64 rng(std::random_device{}());
  double backoff = 1.0;
  while (!stop_ && !finished_) {
    channel_ = MakeChannel(config_.coordinator_address(), config_.coordinator_name(), tls_);
    auto stub = Federation::NewStub(channel_);
    bool joined = false;
    absl::Status status = Session(*stub, &joined);
    metrics_->connected.Set(0);
    if (finished_ || stop_) break;
    if (joined) backoff = 1.0;
    // Jittered exponential backoff: sleep uniformly in [backoff/2, backoff].
    const double sleep = std::uniform_real_distribution<double>(backoff / 2, backoff)(rng);
    Log(absl::StrFormat("coordinator at %s unavailable (%s); retrying in %.1f s",
                        config_.coordinator_address(), status.message(), sleep));
    metrics_->reconnects.Increment();
    SleepUnlessStopped(sleep);
    backoff = std::min<double>(backoff * 2, config_.max_backoff_seconds());
  }
  return absl::OkStatus();
}

absl::Status ClientDaemon::Session(Federation::Stub& stub, bool* joined) {
  grpc::ClientContext join_ctx;
  join_ctx.set_deadline(In(15));
  JoinResponse join;
  RETURN_IF_ERROR(FromGrpcStatus(stub.Join(&join_ctx, MakeJoinRequest(), &join)));
  *joined = true;
  Log(absl::StrCat("joined as '", join.site_name(), "' (coordinator ",
                   join.coordinator_version(), ")"));
  grpc::ClientContext ctx;
  std::unique_ptr<grpc::ClientReader<Task>> reader = stub.Tasks(&ctx, TaskRequest());
  metrics_->connected.Set(1);
  Task task;
  while (!stop_ && reader->Read(&task)) {
    if (task.job_id().empty()) {
      if (task.idle() && config_.exit_when_idle() && tasks_done_ > 0) {
        Log("no job left to run; exiting as configured (exit_when_idle)");
        finished_ = true;
        ctx.TryCancel();
        break;
      }
      continue;  // keepalive
    }
    absl::Status status = HandleTask(stub, task);
    ReleaseFreedMemory();  // what training kept for reuse, until the next task
    if (!status.ok()) {
      metrics_->tasks.Add({{"result", "failed"}}).Increment();
      Log(absl::StrCat("task ", task.job_id(), " round ", task.round(), " failed: ",
                       status.message()));
    }
    ++tasks_done_;
    if (config_.exit_after_tasks() > 0 &&
        tasks_done_ >= static_cast<int>(config_.exit_after_tasks())) {
      finished_ = true;
      ctx.TryCancel();
      break;
    }
  }
  if (stop_ || finished_) return absl::OkStatus();
  return Annotate(FromGrpcStatus(reader->Finish()), "task stream");
}

absl::Status ClientDaemon::DeclineTask(Federation::Stub& stub, const Task& task,
                                       const std::string& reason) {
  Log(absl::StrCat("declining job ", task.job_id(), " round ", task.round(), ": ", reason));
  grpc::ClientContext ctx;
  ctx.set_deadline(In(30));
  DeclineRequest request;
  request.set_job_id(task.job_id());
  request.set_round(task.round());
  request.set_reason(reason);
  Ack ack;
  metrics_->tasks.Add({{"result", "declined"}}).Increment();
  return Annotate(FromGrpcStatus(stub.Decline(&ctx, request, &ack)), "decline");
}

absl::StatusOr<std::string> ClientDaemon::BudgetRefusal(const Task& task, const DpPlan& plan) {
  const PrivacyBudget& cap = config_.budget();
  if (cap.max_epsilon() <= 0) return std::string();
  ASSIGN_OR_RETURN(double epsilon,
                   ledger_->EpsilonIfAdded(config_.data_dir(), plan.sample_rate,
                                           plan.noise_multiplier, plan.steps_per_round,
                                           cap.delta()));
  if (epsilon <= cap.max_epsilon()) return std::string();
  return absl::StrFormat(
      "privacy budget: this round would bring this dataset to epsilon %.3f at delta %g, over "
      "the site's cap of %.3f",
      epsilon, cap.delta(), cap.max_epsilon());
}

absl::StatusOr<PrivacyReport> ClientDaemon::RecordPrivacy(const Task& task, const DpPlan& plan) {
  RETURN_IF_ERROR(ledger_->Record(task.job_id(), config_.data_dir(), task.round(),
                                  plan.sample_rate, plan.noise_multiplier,
                                  plan.steps_per_round));
  ASSIGN_OR_RETURN(double epsilon,
                   ledger_->Epsilon(task.job_id(), config_.data_dir(), plan.delta));
  metrics_->privacy_epsilon.Add({{"job", task.job_id()}}).Set(epsilon);
  PrivacyReport report;
  report.set_epsilon(epsilon);
  report.set_delta(plan.delta);
  report.set_noise_multiplier(plan.noise_multiplier);
  report.set_sample_rate(plan.sample_rate);
  ASSIGN_OR_RETURN(PrivacyLedger::Spent spent, ledger_->Get(task.job_id(), config_.data_dir()));
  report.set_steps(spent.steps);
  return report;
}

absl::Status ClientDaemon::HandleTask(Federation::Stub& stub, const Task& task) {
  std::vector<std::string> labels(task.train_labels().begin(), task.train_labels().end());
  std::optional<DpPlan> plan;
  if (task.spec().dp().enabled() && !task.evaluate_only()) {
    absl::StatusOr<DpPlan> planned = PlanDp(task.spec(), data_->train.size());
    if (!planned.ok()) return DeclineTask(stub, task, std::string(planned.status().message()));
    ASSIGN_OR_RETURN(std::string refusal, BudgetRefusal(task, *planned));
    if (!refusal.empty()) return DeclineTask(stub, task, refusal);
    plan = *planned;
  }
  TensorList global;
  RETURN_IF_ERROR(DownloadModel(stub, task, &global));
  if (task.evaluate_only() || task.round() > 0) {
    absl::Status reported = EvaluateAndReport(stub, task, labels, global, 0);
    if (task.evaluate_only()) RETURN_IF_ERROR(reported);
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
  const auto start = std::chrono::steady_clock::now();
  ASSIGN_OR_RETURN(TrainResult result,
                   trainer_->Train(task.job_id(), task.spec(), labels, global, task.round()));
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
          stub, task,
          absl::StrCat("cannot record the round's privacy cost, so nothing is sent (",
                       absl::StatusCodeToString(recorded.status().code()),
                       "; the site's log says why)"));
    }
    privacy = *std::move(recorded);
  }
  RETURN_IF_ERROR(UploadUpdate(task, std::move(result), privacy));
  metrics_->tasks.Add({{"result", "done"}}).Increment();
  return absl::OkStatus();
}

absl::Status ClientDaemon::DownloadModel(Federation::Stub& stub, const Task& task,
                                         TensorList* out) {
  DownloadRequest request;
  request.set_job_id(task.job_id());
  request.set_round(task.round());
  ASSIGN_OR_RETURN(*out, ReceiveModel(stub, request, kMaxModelBytes));
  uint64_t bytes = 0;
  for (const NamedTensor& t : *out) bytes += t.byte_size();
  metrics_->download_bytes.Increment(static_cast<double>(bytes));
  return absl::OkStatus();
}

absl::Status ClientDaemon::EvaluateAndReport(Federation::Stub& stub, const Task& task,
                                             const std::vector<std::string>& labels,
                                             const TensorList& model, double train_loss) {
  ASSIGN_OR_RETURN(std::vector<LabelMetric> metrics,
                   trainer_->Evaluate(task.job_id(), task.spec(), labels, model));
  MetricsReport report;
  report.set_job_id(task.job_id());
  report.set_round(task.round());
  report.set_train_loss(train_loss);
  report.set_test_images(data_->test.size());
  std::vector<std::string> parts;
  for (LabelMetric& m : metrics) {
    metrics_->test_auroc.Add({{"job", task.job_id()}, {"label", m.label()}}).Set(m.auroc());
    parts.push_back(absl::StrFormat("%s %.3f", m.label(), m.auroc()));
    *report.add_test() = std::move(m);
  }
  Log(absl::StrCat("job ", task.job_id(), " model after round ", task.round(), ": AUROC ",
                   absl::StrJoin(parts, ", ")));
  auto send = [&](int) {
    grpc::ClientContext ctx;
    ctx.set_deadline(In(30));
    Ack ack;
    return Annotate(FromGrpcStatus(stub.Report(&ctx, report, &ack)), "report");
  };
  // A final evaluation is the whole task; a training round's report must not hold up training.
  return task.evaluate_only() ? SendWithRetries(task, "report", send) : send(1);
}

absl::Status ClientDaemon::UploadUpdate(const Task& task, TrainResult result,
                                        const PrivacyReport& privacy) {
  UploadHeader header;
  header.set_job_id(task.job_id());
  header.set_round(task.round());
  header.set_num_samples(result.num_samples);
  for (const std::string& label : result.labels) header.add_labels(label);
  header.set_num_tensors(static_cast<uint32_t>(result.update.size()));
  header.set_train_loss(result.loss);
  *header.mutable_privacy() = privacy;
  const auto update = std::make_shared<const TensorList>(std::move(result.update));
  return SendWithRetries(task, "upload", [&](int attempt) {
    grpc::ClientContext ctx;
    absl::StatusOr<UploadResponse> response =
        SendUpload(*channel_, ctx, header, update, kUploadChunkBytes);
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
}

absl::Status ClientDaemon::SendWithRetries(const Task& task, const std::string& rpc,
                                           const std::function<absl::Status(int)>& send) {
  double backoff = 1.0;
  for (int attempt = 1;; ++attempt) {
    absl::Status status = send(attempt);
    const double now = std::chrono::duration<double>(
                           std::chrono::system_clock::now().time_since_epoch())
                           .count();
    const double left = task.deadline_unix_seconds() - now;
    if (status.ok() || stop_ || !IsRetryable(status) || left < backoff) return status;
    Log(absl::StrFormat("job %s round %d: %s failed (%s); sending it again in %.0f s",
                        task.job_id(), task.round(), rpc, status.ToString(), backoff));
    metrics_->send_retries.Add({{"rpc", rpc}}).Increment();
    SleepUnlessStopped(backoff);
    backoff = std::min<double>(backoff * 2, config_.max_backoff_seconds());
  }
}

void ClientDaemon::SleepUnlessStopped(double seconds) {
  for (double t = 0; t < seconds && !stop_; t += 0.1) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

}  // namespace fl
