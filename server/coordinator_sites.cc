// The coordinator's side of the sites' calls: join, task stream, download, upload, report.
#include "server/coordinator.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <set>

#include <unistd.h>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/safetensors.h"
#include "common/status.h"
#include "common/tensor_stream.h"
#include "server/coordinator_internal.h"
#include "server/robust_aggregator.h"

namespace fl {

using coordinator_internal::IsStorageFailure;
using coordinator_internal::Log;
using coordinator_internal::MarkedStorageFailure;
using coordinator_internal::Terminal;

namespace {

double Median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

// Per finding, the median of the sites' AUROCs over the round's reports (unweighted: a site's
// claimed image count buys it no weight) with their counts summed; and the mean over findings.
// Per named metric, the median of the sites' values.
void PoolMetrics(RoundSummary& summary) {
  std::map<std::string, std::vector<double>> aurocs;  // label -> one per site
  std::map<std::string, LabelMetric> counts;
  std::map<std::string, std::vector<double>> named;  // metric -> one per site
  for (const SiteReport& report : summary.reports()) {
    for (const Metric& m : report.metrics()) named[m.name()].push_back(m.value());
    for (const LabelMetric& m : report.test()) {
      if (std::isnan(m.auroc())) continue;
      aurocs[m.label()].push_back(m.auroc());
      LabelMetric& c = counts[m.label()];
      c.set_positives(c.positives() + m.positives());
      c.set_negatives(c.negatives() + m.negatives());
    }
  }
  summary.clear_test();
  double mean = 0;
  for (const auto& [label, values] : aurocs) {
    LabelMetric* m = summary.add_test();
    *m = counts[label];
    m->set_label(label);
    m->set_auroc(Median(values));
    mean += m->auroc();
  }
  summary.set_mean_auroc(aurocs.empty() ? std::nan("") : mean / aurocs.size());
  summary.clear_metrics();
  for (const auto& [name, values] : named) {
    Metric* m = summary.add_metrics();
    m->set_name(name);
    m->set_value(Median(values));
  }
}

// A workload's named figures (MetricsReport.metrics): at most 16, each a short snake_case name
// with a finite value, no name twice.
absl::Status CheckNamedMetrics(const MetricsReport& report) {
  if (report.metrics_size() > 16) {
    return absl::InvalidArgumentError(
        absl::StrCat("report holds ", report.metrics_size(), " named metrics (at most 16)"));
  }
  std::set<std::string> seen;
  for (const Metric& m : report.metrics()) {
    const bool name_ok = !m.name().empty() && m.name().size() <= 64 &&
                         std::all_of(m.name().begin(), m.name().end(), [](char c) {
                           return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
                         });
    if (!name_ok || !seen.insert(m.name()).second) {
      return absl::InvalidArgumentError("report holds a malformed or repeated metric name");
    }
    if (!std::isfinite(m.value())) {
      return absl::InvalidArgumentError(
          absl::StrCat("report's metric ", m.name(), " is not finite"));
    }
  }
  return absl::OkStatus();
}

// INVALID_ARGUMENT when a report or an upload header carries a training loss that is not a
// finite, non-negative number (none at all, as under DP, is fine).
template <typename Message>
absl::Status CheckLoss(const Message& message) {
  if (!message.has_train_loss() ||
      (std::isfinite(message.train_loss()) && message.train_loss() >= 0)) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(
      absl::StrCat("train_loss ", message.train_loss(), " is not a finite, non-negative number"));
}

// INVALID_ARGUMENT unless `m`'s ROC curve is one: at most kMaxRocPoints points in [0, 1], both
// rates never decreasing, from (0, 0) to (1, 1); none at all is fine.
absl::Status CheckRoc(const LabelMetric& m) {
  constexpr int kMaxRocPoints = 21;
  if (m.roc().empty()) return absl::OkStatus();
  auto refuse = [&](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat("finding '", m.label(), "': ROC curve ", why));
  };
  if (m.roc_size() > kMaxRocPoints) {
    return refuse(absl::StrCat("of ", m.roc_size(), " points (at most ", kMaxRocPoints, ")"));
  }
  if (m.positives() == 0 || m.negatives() == 0) return refuse("without both classes");
  for (int i = 0; i < m.roc_size(); ++i) {
    const RocPoint& p = m.roc(i);
    if (!(p.fpr() >= 0 && p.fpr() <= 1 && p.tpr() >= 0 && p.tpr() <= 1)) {
      return refuse(absl::StrCat("point ", i, " outside [0, 1]"));
    }
    if (i > 0 && (p.fpr() < m.roc(i - 1).fpr() || p.tpr() < m.roc(i - 1).tpr())) {
      return refuse(absl::StrCat("decreasing at point ", i));
    }
  }
  const RocPoint& first = m.roc(0);
  const RocPoint& last = m.roc(m.roc_size() - 1);
  if (first.fpr() != 0 || first.tpr() != 0 || last.fpr() != 1 || last.tpr() != 1) {
    return refuse("not from (0, 0) to (1, 1)");
  }
  return absl::OkStatus();
}

// INVALID_ARGUMENT unless every figure of `report` is one `site` can have: findings of `allowed`
// (its labels in the job), each once, with counts within what it declared at Join, AUROCs NaN
// or in [0, 1] (and defined only with both classes present), a finite loss, and
// well-formed named metrics.
absl::Status CheckReportContent(const MetricsReport& report, const SiteInfo& site,
                                const std::vector<std::string>& allowed) {
  RETURN_IF_ERROR(CheckLoss(report));
  RETURN_IF_ERROR(CheckNamedMetrics(report));
  if (report.test_images() > site.num_images()) {
    return absl::InvalidArgumentError(absl::StrCat("test_images ", report.test_images(),
                                                   " exceeds the ", site.num_images(),
                                                   " images the site declared when it joined"));
  }
  std::set<std::string> seen;
  for (const LabelMetric& m : report.test()) {
    if (std::find(allowed.begin(), allowed.end(), m.label()) == allowed.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("finding '", m.label(), "' is not one this site holds in this job"));
    }
    if (!seen.insert(m.label()).second) {
      return absl::InvalidArgumentError(absl::StrCat("finding '", m.label(), "' reported twice"));
    }
    SiteLabel declared;
    for (const SiteLabel& l : site.labels()) {
      if (l.name() == m.label()) declared = l;
    }
    if (m.positives() > declared.positives() || m.negatives() > declared.negatives() ||
        m.positives() + m.negatives() > report.test_images()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "finding '", m.label(), "': ", m.positives(), " positives and ", m.negatives(),
          " negatives exceed the site's declared ", declared.positives(), " and ",
          declared.negatives(), " or its ", report.test_images(), " test images"));
    }
    RETURN_IF_ERROR(CheckRoc(m));
    if (std::isnan(m.auroc())) continue;
    if (!(m.auroc() >= 0 && m.auroc() <= 1)) {
      return absl::InvalidArgumentError(
          absl::StrCat("finding '", m.label(), "': AUROC ", m.auroc(), " is outside [0, 1]"));
    }
    if (m.positives() == 0 || m.negatives() == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("finding '", m.label(), "': an AUROC without both positives and negatives"));
    }
  }
  return absl::OkStatus();
}

double MeanAuroc(const google::protobuf::RepeatedPtrField<LabelMetric>& metrics) {
  double sum = 0;
  int n = 0;
  for (const LabelMetric& m : metrics) {
    if (!std::isnan(m.auroc())) {
      sum += m.auroc();
      ++n;
    }
  }
  return n ? sum / n : std::nan("");
}

// Marks a refusal that is no fault of the update: it came for a round that is not open.
constexpr char kStaleRound[] = "fl/stale-round";

absl::Status MarkedStale(absl::Status status) {
  status.SetPayload(kStaleRound, absl::Cord("1"));
  return status;
}

SiteReport* SiteEntry(JobStatus& job, const std::string& site) {
  for (SiteReport& s : *job.mutable_sites()) {
    if (s.site() == site) return &s;
  }
  SiteReport* entry = job.add_sites();
  entry->set_site(site);
  return entry;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Sites

absl::StatusOr<JoinResponse> Coordinator::Join(const Identity& who, const JoinRequest& request) {
  SiteInfo info;
  {
    absl::MutexLock lock(&mu_);
    SiteInfo& site = sites_[who.name].info;
    site.set_name(who.name);
    *site.mutable_labels() = request.labels();
    site.set_num_images(request.num_images());
    site.set_hardware(request.hardware());
    site.set_software_version(request.software_version());
    site.set_last_seen_unix_seconds(coordinator_internal::NowUnixSeconds());
    info = site;
  }
  RETURN_IF_ERROR(store_->PutSite(info));
  RETURN_IF_ERROR(store_->Audit(
      who.name, "join",
      absl::StrCat(request.num_images(), " images, ", request.labels_size(), " labels")));
  JoinResponse response;
  response.set_site_name(who.name);
  response.set_coordinator_version(FL_VERSION);
  return response;
}

absl::Status Coordinator::StreamTasks(const Identity& who,
                                      const std::function<bool(const Task&)>& send,
                                      const std::function<bool()>& cancelled) {
  uint64_t id;
  {
    absl::MutexLock lock(&mu_);
    SiteState& site = sites_[who.name];
    if (!site.info.connected()) metrics_->sites_connected.Increment();
    id = site.stream_id = next_stream_id_++;
    site.info.set_name(who.name);
    site.info.set_connected(true);
    // A site that comes back during a round it has not finished (it crashed or lost its
    // connection after taking the task) gets its task again.
    const bool owes_task =
        round_ && round_->assigned.count(who.name) && !round_->received.count(who.name) &&
        !round_->uploading.count(who.name) && !round_->declined.count(who.name) &&
        !(round_->evaluate_only && round_->reported.count(who.name));
    if (owes_task && site.pending.empty()) site.pending.push_back(MakeTask(who.name));
  }
  // Wake every second to notice a cancelled stream; send a keepalive every 5 s when idle.
  absl::Time last_sent = absl::Now();
  while (true) {
    Task task;
    bool have_task = false;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [&] {
        mu_.AssertHeld();
        return shutdown_ || sites_[who.name].stream_id != id || !sites_[who.name].pending.empty();
      };
      mu_.AwaitWithTimeout(absl::Condition(&ready), absl::Seconds(1));
      SiteState& site = sites_[who.name];
      if (shutdown_ || site.stream_id != id) break;
      site.info.set_last_seen_unix_seconds(coordinator_internal::NowUnixSeconds());
      if (!site.pending.empty()) {
        task = site.pending.front();
        site.pending.erase(site.pending.begin());
        have_task = true;
      } else {
        bool busy = false;
        for (const auto& [job_id, job] : jobs_) busy |= !Terminal(job.state());
        task.set_idle(!busy);
      }
    }
    if (!have_task && absl::Now() - last_sent < absl::Seconds(5)) {
      if (cancelled()) break;
      continue;
    }
    if (cancelled() || !send(task)) {
      if (have_task) {  // keep it for the site's next stream in this round
        absl::MutexLock lock(&mu_);
        auto& pending = sites_[who.name].pending;
        pending.insert(pending.begin(), task);
        Log(absl::StrCat("task for ", who.name, " not delivered: stream closed; kept"));
      }
      break;
    }
    last_sent = absl::Now();
  }
  absl::MutexLock lock(&mu_);
  SiteState& site = sites_[who.name];
  if (site.stream_id == id) {
    site.stream_id = 0;
    site.info.set_connected(false);
    metrics_->sites_connected.Decrement();
  }
  return absl::OkStatus();
}

absl::Status Coordinator::Decline(const Identity& who, const DeclineRequest& request) {
  {
    absl::MutexLock lock(&mu_);
    if (!round_ || round_->job_id != request.job_id() || round_->round != request.round() ||
        !round_->assigned.count(who.name)) {
      return absl::FailedPreconditionError("no such open task for this site");
    }
    round_->declined[who.name] = request.reason();
    MarkPhase(request.job_id(), request.round(), who.name, TASK_PHASE_DECLINED, request.reason());
  }
  metrics_->declines.Increment();
  Log(absl::StrCat(who.name, " declined round ", request.round(), " of ", request.job_id(), ": ",
                   request.reason()));
  return store_->Audit(
      who.name, "decline",
      absl::StrCat(request.job_id(), " round ", request.round(), ": ", request.reason()));
}

struct Coordinator::TransferSlot {
  explicit TransferSlot(Coordinator* c) : owner(c) {}
  ~TransferSlot() {
    absl::MutexLock lock(&owner->transfer_mu_);
    --owner->transfers_;
  }
  Coordinator* const owner;
};

absl::StatusOr<std::unique_ptr<Coordinator::TransferSlot>> Coordinator::AcquireTransferSlot(
    const std::function<bool()>& cancelled) {
  const uint32_t limit = std::max<uint32_t>(1, config_.max_concurrent_transfers());
  absl::MutexLock lock(&transfer_mu_);
  auto ready = [this, limit]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(transfer_mu_) {
    return transfers_closed_ || transfers_ < limit;
  };
  while (!transfer_mu_.AwaitWithTimeout(absl::Condition(&ready), absl::Seconds(1))) {
    if (cancelled()) return absl::CancelledError("the site went away while waiting");
  }
  if (transfers_closed_) return absl::UnavailableError("the coordinator is shutting down");
  ++transfers_;
  return std::make_unique<TransferSlot>(this);
}

absl::Status Coordinator::Download(const Identity& who, const DownloadRequest& request,
                                   const std::function<bool(const TensorChunk&)>& emit,
                                   const std::function<bool()>& cancelled) {
  std::shared_ptr<const TensorList> model;
  {
    absl::MutexLock lock(&mu_);
    if (!round_ || round_->job_id != request.job_id() || round_->round != request.round()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "round ", request.round(), " of job ", request.job_id(), " is not open (stale round)"));
    }
    if (!round_->assigned.count(who.name)) {
      return absl::PermissionDeniedError("this site has no task in this round");
    }
    if (request.frozen() && !round_->spec.has_diffusion()) {
      return absl::InvalidArgumentError(
          absl::StrCat("job ", request.job_id(), " builds on no frozen model"));
    }
    model = global_;
    MarkPhase(request.job_id(), request.round(), who.name, TASK_PHASE_DOWNLOADING);
  }
  ASSIGN_OR_RETURN(std::unique_ptr<TransferSlot> slot, AcquireTransferSlot(cancelled));
  if (request.frozen()) {  // read per download: it is asked for once per site and job
    absl::StatusOr<TensorList> frozen =
        ReadSafetensors(FrozenModelPath(request.job_id()), nullptr, env_);
    if (!frozen.ok()) return Annotate(frozen.status(), "the job's frozen autoencoder");
    model = std::make_shared<const TensorList>(*std::move(frozen));
  }
  uint64_t bytes = 0;
  RETURN_IF_ERROR(WriteTensorChunks(*model, config_.chunk_bytes(), [&](const TensorChunk& c) {
    bytes += c.data().size();
    return emit(c);
  }));
  metrics_->download_bytes.Increment(static_cast<double>(bytes));
  absl::MutexLock lock(&mu_);
  MarkPhase(request.job_id(), request.round(), who.name, TASK_PHASE_DOWNLOADED);
  return absl::OkStatus();
}

absl::Status Coordinator::StaleRound(const std::string& job_id, uint32_t round) {
  auto job = jobs_.find(job_id);
  const bool coming = job != jobs_.end() && !Terminal(job->second.state()) &&
                      job->second.rounds_done() == round && round < job->second.spec().rounds();
  return MarkedStale(absl::FailedPreconditionError(absl::StrCat(
      "round ", round, " of job ", job_id,
      coming ? " is not open yet (the coordinator restarted or is between tries; stale round)"
             : " is over (stale round)")));
}

absl::StatusOr<Coordinator::UploadPlan> Coordinator::AdmitUpload(const Identity& who,
                                                                 const UploadHeader& header) {
  absl::MutexLock lock(&mu_);
  if (!round_ || round_->evaluate_only || round_->job_id != header.job_id() ||
      round_->round != header.round()) {
    return StaleRound(header.job_id(), header.round());
  }
  if (!round_->assigned.count(who.name)) {
    return absl::PermissionDeniedError("this site has no task in this round");
  }
  if (round_->received.count(who.name) || round_->uploading.count(who.name)) {
    return absl::AlreadyExistsError("an update for this round was already received");
  }
  const JobSpec& spec = round_->spec;
  // A site's train split cannot hold more images than it declared when it joined.
  auto joined = sites_.find(who.name);
  const uint64_t declared = joined == sites_.end() ? 0 : joined->second.info.num_images();
  const uint64_t max_samples = std::min<uint64_t>(declared, Aggregator::kMaxWeight);
  if (header.num_samples() == 0 || header.num_samples() > max_samples) {
    return absl::InvalidArgumentError(absl::StrCat(
        "num_samples ", header.num_samples(), " (the train split's size) is outside [1, ",
        max_samples, "]: the site declared ", declared, " images when it joined"));
  }
  RETURN_IF_ERROR(CheckLoss(header));
  ASSIGN_OR_RETURN(std::vector<size_t> rows, LabelRows(who.name, header));
  round_->uploading.insert(who.name);
  MarkPhase(header.job_id(), header.round(), who.name, TASK_PHASE_UPLOADING);
  // Under the weighted mean every value must fit the exact sum at this weight (checked while
  // the update arrives, so that a refused one never reaches the aggregate).
  const uint64_t mean_weight =
      round_->aggregator ? UpdateWeight(spec.weighting(), header.num_samples()) : 0;
  return UploadPlan{round_->layout.shared,   std::move(rows), spec.max_update_norm(),
                    spec.clip_update_norm(), round_->attempt, mean_weight};
}

absl::StatusOr<double> Coordinator::ReceiveToSpool(const std::function<bool(UploadMessage*)>& next,
                                                   const UploadPlan& plan, const std::string& spool,
                                                   uint64_t* bytes) {
  // Every write error is this side's storage failure, with the code of its cause (ErrnoStatus).
  absl::StatusOr<std::unique_ptr<WritableFile>> opened = env_->NewWritableFile(spool, 0600);
  if (!opened.ok()) return MarkedStorageFailure(opened.status());
  WritableFile& out = **opened;
  ChunkReader reader(plan.expected);
  double sum_squares = 0;
  auto sink = [&](size_t index, uint64_t offset, const float* data, size_t n) -> absl::Status {
    if (plan.mean_weight > 0) {
      if (absl::Status fits = Aggregator::CheckValues(plan.mean_weight, data, n); !fits.ok()) {
        return absl::InvalidArgumentError(absl::StrCat(plan.expected[index].name, " (from element ",
                                                       offset, "): ", fits.message()));
      }
    }
    for (size_t i = 0; i < n; ++i) sum_squares += double{data[i]} * data[i];
    return MarkedStorageFailure(
        out.Append(absl::string_view(reinterpret_cast<const char*>(data), n * sizeof(float))));
  };
  UploadMessage message;
  bool trailer = false;
  while (!trailer && next(&message)) {
    if (message.has_chunk()) {
      RETURN_IF_ERROR(reader.Add(message.chunk(), sink));
    } else if (message.has_trailer()) {
      trailer = true;
    } else {
      return absl::InvalidArgumentError("unexpected message inside an upload");
    }
  }
  if (!trailer) return absl::InvalidArgumentError("upload ended without its trailer (truncated)");
  RETURN_IF_ERROR(reader.Finish());
  // Durable before its receipt is written: a restart may fold it again.
  RETURN_IF_ERROR(MarkedStorageFailure(out.Sync()));
  RETURN_IF_ERROR(MarkedStorageFailure(out.Close()));
  *bytes = reader.bytes();
  metrics_->update_bytes.Increment(static_cast<double>(reader.bytes()));
  return std::sqrt(sum_squares);
}

absl::StatusOr<UploadResponse> Coordinator::Upload(const Identity& who,
                                                   const UploadStream& stream) {
  UploadMessage first;
  absl::StatusOr<UploadPlan> plan =
      stream.next(&first) && first.has_header()
          ? AdmitUpload(who, first.header())
          : absl::InvalidArgumentError("an upload must start with its header");
  uint64_t bytes = 0;
  absl::Status status = plan.status();
  if (plan.ok()) {
    const UploadHeader& header = first.header();
    const std::string spool = SpoolPath(header.job_id(), header.round(), plan->attempt, who.name);
    // The site sends its chunks only once granted: a waiting upload costs no buffer space.
    absl::StatusOr<std::unique_ptr<TransferSlot>> slot = AcquireTransferSlot(stream.cancelled);
    absl::StatusOr<double> norm = !slot.ok() ? absl::StatusOr<double>(slot.status())
                                  : !stream.grant()
                                      ? absl::CancelledError("the site went away before its grant")
                                      : ReceiveToSpool(stream.next, *plan, spool, &bytes);
    status = norm.status();
    if (norm.ok() && plan->max_norm > 0 && *norm > plan->max_norm) {
      status = absl::InvalidArgumentError(
          absl::StrCat("update norm ", *norm, " exceeds the job's bound ", plan->max_norm));
    }
    if (status.ok()) {
      const double scale =
          plan->clip_norm > 0 && *norm > plan->clip_norm ? plan->clip_norm / *norm : 1.0;
      status = FoldSpool(spool, header, who.name, plan->rows, bytes, scale, plan->attempt);
    }
    if (!status.ok()) {                       // a folded update's spool stays until the commit
      env_->RemoveFile(spool).IgnoreError();  // none there, or a leftover RemoveSpools takes
    }
    absl::MutexLock lock(&mu_);
    if (round_ && round_->job_id == header.job_id()) round_->uploading.erase(who.name);
  }
  if (absl::IsCancelled(status)) {  // the site left while it waited: nothing was refused
    Log(absl::StrCat("upload of ", who.name, " abandoned: ", status.message()));
    return status;
  }
  if (status.GetPayload(kStaleRound).has_value()) {  // an honest resend, too early or too late
    metrics_->UpdateStale().Increment();
    Log(absl::StrCat("update from ", who.name, " not taken: ", status.message()));
    return status;
  }
  if (!status.ok()) {
    // Out of disk space or a failed write is this side's failure, not a bad update: the site
    // sends it again (RESOURCE_EXHAUSTED, UNAVAILABLE) and operators see it apart.
    const bool storage = IsStorageFailure(status);
    const bool ours = storage || absl::IsResourceExhausted(status) || absl::IsUnavailable(status) ||
                      absl::IsInternal(status) || absl::IsDataLoss(status) ||
                      absl::IsUnknown(status);
    (ours ? metrics_->UpdateFailed() : metrics_->UpdateRejected()).Increment();
    if (storage || absl::IsResourceExhausted(status)) metrics_->storage_failures.Increment();
    Log(absl::StrCat(ours ? "could not store the update from " : "refused update from ", who.name,
                     ": ", absl::StatusCodeToString(status.code()), ": ", status.message()));
    if (absl::Status s = store_->Audit(who.name, ours ? "upload-failed" : "upload-refused",
                                       std::string(status.message()));
        !s.ok()) {
      Log(absl::StrCat("audit log write failed: ", s.message()));
    }
    if (storage || (ours && !absl::IsUnavailable(status))) {
      // The cause is for this side's operator only. The site is told to send the update again:
      // RESOURCE_EXHAUSTED for a full disk, UNAVAILABLE for any other storage failure (an I/O
      // error, a folder it may not write), which a site retries too.
      const absl::StatusCode code = !storage || absl::IsResourceExhausted(status)
                                        ? status.code()
                                        : absl::StatusCode::kUnavailable;
      return absl::Status(code,
                          "the coordinator could not store the update (its log says why); "
                          "send it again");
    }
    return status;
  }
  metrics_->UpdateAccepted().Increment();
  UploadResponse response;
  response.set_bytes_received(bytes);
  return response;
}

absl::StatusOr<std::vector<size_t>> Coordinator::LabelRows(const std::string& site,
                                                           const UploadHeader& header) {
  const JobSpec& spec = round_->spec;
  const std::vector<std::string> allowed = TrainLabels(spec, site);
  std::vector<size_t> rows;
  for (const std::string& label : header.labels()) {
    if (std::find(allowed.begin(), allowed.end(), label) == allowed.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("update carries label '", label, "' that this site does not train"));
    }
    auto it = std::find(spec.labels().begin(), spec.labels().end(), label);
    rows.push_back(static_cast<size_t>(it - spec.labels().begin()));
  }
  return rows;
}

absl::Status Coordinator::FoldSpool(const std::string& path, const UploadHeader& header,
                                    const std::string& site, const std::vector<size_t>& rows,
                                    uint64_t bytes, double scale, uint32_t attempt) {
  // Held while folding: the scheduler takes it too before it replaces round_ (and its
  // aggregator), so a fold always finishes into the attempt it started in.
  absl::MutexLock fold_lock(&fold_mu_);
  Aggregator* aggregator;
  uint64_t weight;
  {
    absl::MutexLock lock(&mu_);
    if (!round_ || round_->job_id != header.job_id() || round_->round != header.round()) {
      return StaleRound(header.job_id(), header.round());
    }
    if (round_->attempt != attempt) {
      return MarkedStale(absl::FailedPreconditionError(
          "the round was tried again while the update arrived; the site is asked again "
          "(stale round)"));
    }
    aggregator = round_->aggregator.get();  // null under a robust rule
    weight = UpdateWeight(round_->spec.weighting(), header.num_samples());
  }
  // Once folding starts it must finish, so everything that can fail is checked first: the
  // spool holds exactly the update's bytes, and the receipt (refusing a duplicate) is written.
  // A spool this side wrote that cannot be read back is this side's failure (INTERNAL), never
  // the site's, whatever the errno.
  absl::StatusOr<std::unique_ptr<RandomAccessFile>> in = env_->NewRandomAccessFile(path);
  if (!in.ok()) {
    return absl::InternalError(
        absl::StrCat("cannot reread the spool file: ", in.status().message()));
  }
  absl::StatusOr<uint64_t> size = (*in)->Size();
  if (!size.ok()) return absl::InternalError(size.status().message());
  if (*size != bytes) {
    return absl::InternalError(
        absl::StrCat("spool file ", path, " does not hold ", bytes, " bytes"));
  }
  RETURN_IF_ERROR(store_->AddReceipt(
      Receipt{header.job_id(), header.round(), attempt, site, header, scale, bytes, path}));
  if (aggregator != nullptr) {
    RETURN_IF_ERROR(aggregator->BeginUpdate(weight, rows, scale));
    if (absl::Status folded = FoldFile(aggregator, **in); !folded.ok()) {
      // An I/O error after the size check (or a value that passed the upload's checks yet not
      // the fold's): the sum now holds part of an update, so this round's aggregate must not
      // be applied; the round is run again.
      aggregator->EndUpdate();
      absl::MutexLock lock(&mu_);
      round_->poisoned = true;
      return absl::DataLossError(absl::StrCat("spool file ", path, ": ", folded.message(),
                                              "; this round will be run again"));
    }
    aggregator->EndUpdate();
  }
  absl::MutexLock lock(&mu_);
  // Under a robust rule the spool is only recorded; CloseRound reads it (it stays until commit).
  if (aggregator == nullptr) round_->spooled.push_back(SpooledUpdate{path, rows, scale, bytes});
  round_->received.insert(site);
  MarkPhase(header.job_id(), header.round(), site, TASK_PHASE_UPLOADED);
  if (header.has_train_loss()) {
    round_->loss_sum += header.train_loss() * static_cast<double>(weight);
    round_->loss_weight += static_cast<double>(weight);
  }
  if (header.privacy().epsilon() > 0) {
    JobStatus& job = jobs_[header.job_id()];
    *SiteEntry(job, site)->mutable_privacy() = header.privacy();
    metrics_->site_epsilon.Add({{"fl_job", header.job_id()}, {"site", site}})
        .Set(header.privacy().epsilon());
  }
  return absl::OkStatus();
}

absl::Status Coordinator::FoldFile(Aggregator* aggregator, const RandomAccessFile& in) const {
  std::vector<float> buffer(config_.chunk_bytes() / sizeof(float));
  uint64_t position = 0;  // in the file, in bytes
  for (size_t k = 0; k < aggregator->layout().shared.size(); ++k) {
    const uint64_t numel = aggregator->layout().shared[k].byte_size() / sizeof(float);
    for (uint64_t offset = 0; offset < numel;) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(buffer.size(), numel - offset));
      RETURN_IF_ERROR(
          in.ReadAt(position, n * sizeof(float), reinterpret_cast<char*>(buffer.data())));
      RETURN_IF_ERROR(aggregator->Fold(k, offset, buffer.data(), n));
      offset += n;
      position += n * sizeof(float);
    }
  }
  return absl::OkStatus();
}

absl::Status Coordinator::CheckReport(const std::string& site, const MetricsReport& report) {
  if (!round_ || round_->job_id != report.job_id() || round_->round != report.round()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "round ", report.round(), " of job ", report.job_id(), " is not open (stale report)"));
  }
  if (!round_->assigned.count(site)) {
    return absl::PermissionDeniedError("this site has no task in this round");
  }
  if (round_->reported.count(site)) {
    return absl::AlreadyExistsError("this site already reported on this round");
  }
  return CheckReportContent(report, sites_[site].info, TrainLabels(round_->spec, site));
}

absl::Status Coordinator::Report(const Identity& who, const MetricsReport& report) {
  absl::Status checked;
  {
    absl::MutexLock lock(&mu_);
    checked = CheckReport(who.name, report);
  }
  absl::StatusOr<JobStatus> job =
      checked.ok() ? ChangeJob(report.job_id(),
                               [&](JobStatus& job) {
                                 mu_.AssertHeld();  // ChangeJob calls it under mu_
                                 return AttachReport(job, who.name, report);
                               })
                   : checked;
  if (absl::IsAlreadyExists(job.status())) {  // resent (its answer was lost): it counts once
    metrics_->ReportsWith("duplicate").Increment();
    return absl::OkStatus();
  }
  if (!job.ok()) {
    CountReportRefusal(who.name, job.status());
    return job.status();
  }
  {
    absl::MutexLock lock(&mu_);
    if (round_ && round_->job_id == report.job_id() && round_->round == report.round()) {
      round_->reported.insert(who.name);
      MarkPhase(report.job_id(), report.round(), who.name, TASK_PHASE_REPORTED);
    }
  }
  metrics_->ReportsWith("accepted").Increment();
  if (report.round() >= 1 && report.round() <= static_cast<uint32_t>(job->rounds_size())) {
    metrics_->job_mean_auroc.Add({{"fl_job", job->job_id()}})
        .Set(job->rounds(static_cast<int>(report.round()) - 1).mean_auroc());
  }
  return absl::OkStatus();
}

void Coordinator::CountReportRefusal(const std::string& site, const absl::Status& status) {
  const bool stale = absl::IsFailedPrecondition(status) || absl::IsNotFound(status);
  const bool refused = stale || absl::IsInvalidArgument(status) || absl::IsPermissionDenied(status);
  if (!refused) return;  // not the report's fault (e.g. the store failed): not counted
  metrics_->ReportsWith(stale ? "stale" : "rejected").Increment();
  Log(absl::StrCat("refused report from ", site, ": ", status.message()));
  if (absl::Status s = store_->Audit(site, "report-refused", std::string(status.message()));
      !s.ok()) {
    Log(absl::StrCat("audit log write failed: ", s.message()));
  }
}

absl::Status Coordinator::AttachReport(JobStatus& job, const std::string& site,
                                       const MetricsReport& report) {
  SiteReport own;
  own.set_site(site);
  *own.mutable_test() = report.test();
  *own.mutable_metrics() = report.metrics();
  own.set_mean_auroc(MeanAuroc(report.test()));
  // A report for round r evaluates the model that round r - 1 produced.
  if (report.round() >= 1 && report.round() <= static_cast<uint32_t>(job.rounds_size())) {
    RoundSummary& summary = *job.mutable_rounds(static_cast<int>(report.round()) - 1);
    for (const SiteReport& earlier : summary.reports()) {
      if (earlier.site() == site) {  // also across a restart
        return absl::AlreadyExistsError("this site already reported on this round");
      }
    }
    SiteReport* kept = summary.add_reports();
    *kept = own;
    for (LabelMetric& m : *kept->mutable_test()) m.clear_roc();  // the latest report keeps them
    PoolMetrics(summary);
  }
  SiteReport* entry = SiteEntry(job, site);
  *entry->mutable_test() = own.test();
  *entry->mutable_metrics() = own.metrics();
  entry->set_mean_auroc(own.mean_auroc());
  return absl::OkStatus();
}

}  // namespace fl
