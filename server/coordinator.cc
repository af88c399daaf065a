#include "server/coordinator.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>

#include <unistd.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "common/config.h"
#include "common/crc32c.h"
#include "common/json_lite.h"
#include "common/log.h"
#include "common/safetensors.h"
#include "common/status.h"
#include "common/tensor_stream.h"
#include "server/robust_aggregator.h"

namespace fl {

namespace fs = std::filesystem;

struct Coordinator::RoundState {
  std::string job_id;
  JobSpec spec;
  uint32_t round = 0;
  uint32_t attempt = 1;
  bool evaluate_only = false;
  absl::Time deadline;
  std::set<std::string> assigned;
  std::set<std::string> uploading;
  std::set<std::string> received;
  std::set<std::string> reported;
  std::map<std::string, std::string> declined;
  double loss_sum = 0;
  double weight_sum = 0;
  bool poisoned = false;  // the aggregate holds part of an update; never apply it
  UpdateLayout layout;
  std::unique_ptr<Aggregator> aggregator;  // weighted mean only; folded as updates arrive
  std::vector<SpooledUpdate> spooled;      // robust rules only; combined when the round closes
  absl::Time opened;
};

namespace {

void Log(const std::string& line) { LogLine("fl-coordinator", line); }

double NowSeconds() { return absl::ToDoubleSeconds(absl::Now() - absl::UnixEpoch()); }

std::string NewJobId(const std::string& name) {
  std::random_device rd;
  return absl::StrFormat("%s-%08x", name.substr(0, 24), rd());
}

bool Terminal(JobState state) { return state == DONE || state == FAILED || state == CANCELLED; }

bool IsRobust(const JobSpec& spec) {
  return spec.aggregation() == AGGREGATION_MEDIAN ||
         spec.aggregation() == AGGREGATION_TRIMMED_MEAN;
}

// Sample-weighted mean AUROC per label over the sites' reports, and the mean over labels.
void PoolMetrics(const std::map<std::string, SiteReport>& reports, RoundSummary& summary) {
  std::map<std::string, std::pair<double, double>> acc;  // label -> (sum auroc*n, n)
  std::map<std::string, LabelMetric> counts;
  for (const auto& [site, report] : reports) {
    for (const LabelMetric& m : report.test()) {
      if (std::isnan(m.auroc())) continue;
      const double n = static_cast<double>(m.positives() + m.negatives());
      acc[m.label()].first += m.auroc() * n;
      acc[m.label()].second += n;
      LabelMetric& c = counts[m.label()];
      c.set_positives(c.positives() + m.positives());
      c.set_negatives(c.negatives() + m.negatives());
    }
  }
  summary.clear_test();
  double mean = 0;
  for (const auto& [label, sums] : acc) {
    LabelMetric* m = summary.add_test();
    *m = counts[label];
    m->set_label(label);
    m->set_auroc(sums.first / sums.second);
    mean += m->auroc();
  }
  summary.set_mean_auroc(acc.empty() ? std::nan("") : mean / acc.size());
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

}  // namespace

namespace {

SiteReport* SiteEntry(JobStatus& job, const std::string& site) {
  for (SiteReport& s : *job.mutable_sites()) {
    if (s.site() == site) return &s;
  }
  SiteReport* entry = job.add_sites();
  entry->set_site(site);
  return entry;
}

}  // namespace

Coordinator::Coordinator(CoordinatorConfig config, Store* store, CoordinatorMetrics* metrics,
                         ModelInitFn init)
    : config_(std::move(config)), store_(store), metrics_(metrics), init_(std::move(init)) {}

Coordinator::~Coordinator() { Shutdown(); }

absl::Status Coordinator::Start() {
  std::error_code ec;
  fs::create_directories(fs::path(config_.state_dir()) / "spool", ec);
  fs::create_directories(fs::path(config_.state_dir()) / "checkpoints", ec);
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot create state folders under ", config_.state_dir(), ": ", ec.message()));
  }
  ASSIGN_OR_RETURN(std::vector<JobStatus> jobs, store_->Jobs());
  ASSIGN_OR_RETURN(std::vector<SiteInfo> sites, store_->Sites());
  {
    absl::MutexLock lock(&mu_);
    for (JobStatus& job : jobs) {
      job_order_.push_back(job.job_id());
      if (job.state() == RUNNING) Log(absl::StrCat("resuming job ", job.job_id(), " after round ",
                                                   job.rounds_done()));
      jobs_[job.job_id()] = std::move(job);
    }
    for (SiteInfo& site : sites) {
      site.set_connected(false);
      sites_[site.name()].info = std::move(site);
    }
  }
  scheduler_ = std::thread([this] { SchedulerLoop(); });
  return absl::OkStatus();
}

void Coordinator::Shutdown() {
  {
    absl::MutexLock lock(&mu_);
    shutdown_ = true;
  }
  {
    absl::MutexLock lock(&transfer_mu_);
    transfers_closed_ = true;
  }
  if (scheduler_.joinable()) scheduler_.join();
}

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
    site.set_last_seen_unix_seconds(NowSeconds());
    info = site;
  }
  RETURN_IF_ERROR(store_->PutSite(info));
  RETURN_IF_ERROR(store_->Audit(who.name, "join", absl::StrCat(request.num_images(), " images, ",
                                                               request.labels_size(), " labels")));
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
    const bool owes_task = round_ && round_->assigned.count(who.name) &&
                           !round_->received.count(who.name) &&
                           !round_->uploading.count(who.name) &&
                           !round_->declined.count(who.name) &&
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
      site.info.set_last_seen_unix_seconds(NowSeconds());
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
  }
  metrics_->declines.Increment();
  Log(absl::StrCat(who.name, " declined round ", request.round(), " of ", request.job_id(), ": ",
                   request.reason()));
  return store_->Audit(who.name, "decline", absl::StrCat(request.job_id(), " round ",
                                                         request.round(), ": ", request.reason()));
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
    model = global_;
  }
  ASSIGN_OR_RETURN(std::unique_ptr<TransferSlot> slot, AcquireTransferSlot(cancelled));
  uint64_t bytes = 0;
  RETURN_IF_ERROR(WriteTensorChunks(*model, config_.chunk_bytes(), [&](const TensorChunk& c) {
    bytes += c.data().size();
    return emit(c);
  }));
  metrics_->download_bytes.Increment(static_cast<double>(bytes));
  return absl::OkStatus();
}

absl::StatusOr<Coordinator::UploadPlan> Coordinator::AdmitUpload(const Identity& who,
                                                                 const UploadHeader& header) {
  absl::MutexLock lock(&mu_);
  if (!round_ || round_->evaluate_only || round_->job_id != header.job_id() ||
      round_->round != header.round()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "round ", header.round(), " of job ", header.job_id(), " is not open (stale round)"));
  }
  if (!round_->assigned.count(who.name)) {
    return absl::PermissionDeniedError("this site has no task in this round");
  }
  if (round_->received.count(who.name) || round_->uploading.count(who.name)) {
    return absl::AlreadyExistsError("an update for this round was already received");
  }
  const JobSpec& spec = round_->spec;
  // A site cannot weigh more than the samples its task allows (twice the nominal count leaves
  // room for Poisson-sampled batches).
  const uint64_t max_samples = 2 * uint64_t{spec.local_steps()} * spec.batch_size();
  if (header.num_samples() == 0 || header.num_samples() > max_samples) {
    return absl::InvalidArgumentError(absl::StrCat("num_samples ", header.num_samples(),
                                                   " is outside [1, ", max_samples, "]"));
  }
  ASSIGN_OR_RETURN(std::vector<size_t> rows, LabelRows(who.name, header));
  round_->uploading.insert(who.name);
  return UploadPlan{round_->layout.shared, std::move(rows), spec.max_update_norm(),
                    spec.clip_update_norm(), round_->attempt};
}

absl::StatusOr<double> Coordinator::ReceiveToSpool(
    const std::function<bool(UploadMessage*)>& next, const std::vector<TensorMeta>& expected,
    const std::string& spool, uint64_t* bytes) {
  std::unique_ptr<FILE, int (*)(FILE*)> out(std::fopen(spool.c_str(), "wb"), &std::fclose);
  if (!out) return absl::UnavailableError(absl::StrCat("cannot write spool file ", spool));
  ChunkReader reader(expected);
  double sum_squares = 0;
  auto sink = [&](size_t, uint64_t, const float* data, size_t n) -> absl::Status {
    for (size_t i = 0; i < n; ++i) sum_squares += double{data[i]} * data[i];
    if (std::fwrite(data, sizeof(float), n, out.get()) != n) {
      return absl::ResourceExhaustedError(
          absl::StrCat("cannot write spool file ", spool, " (disk full?)"));
    }
    return absl::OkStatus();
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
  if (std::fflush(out.get()) != 0 || ::fsync(fileno(out.get())) != 0) {
    return absl::ResourceExhaustedError(absl::StrCat("cannot write spool file ", spool));
  }
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
    absl::StatusOr<double> norm =
        !slot.ok()        ? absl::StatusOr<double>(slot.status())
        : !stream.grant() ? absl::CancelledError("the site went away before its grant")
                          : ReceiveToSpool(stream.next, plan->expected, spool, &bytes);
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
    std::error_code ec;
    if (!status.ok()) fs::remove(spool, ec);  // a folded update's spool stays until the commit
    absl::MutexLock lock(&mu_);
    if (round_ && round_->job_id == header.job_id()) round_->uploading.erase(who.name);
  }
  if (absl::IsCancelled(status)) {  // the site left while it waited: nothing was refused
    Log(absl::StrCat("upload of ", who.name, " abandoned: ", status.message()));
    return status;
  }
  if (!status.ok()) {
    metrics_->UpdateRejected().Increment();
    Log(absl::StrCat("refused update from ", who.name, ": ", status.message()));
    if (absl::Status s = store_->Audit(who.name, "upload-refused", std::string(status.message()));
        !s.ok()) {
      Log(absl::StrCat("audit log write failed: ", s.message()));
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
  {
    absl::MutexLock lock(&mu_);
    if (!round_ || round_->job_id != header.job_id() || round_->round != header.round()) {
      return absl::FailedPreconditionError("the round closed before the update completed");
    }
    if (round_->attempt != attempt) {
      return absl::FailedPreconditionError(
          "the round was retried while the update arrived; the site is asked again");
    }
    aggregator = round_->aggregator.get();  // null under a robust rule
  }
  // Once folding starts it must finish, so everything that can fail is checked first: the
  // spool holds exactly the update's bytes, and the receipt (refusing a duplicate) is written.
  std::error_code ec;
  if (fs::file_size(path, ec) != bytes || ec) {
    return absl::InternalError(absl::StrCat("spool file ", path, " does not hold ", bytes,
                                            " bytes"));
  }
  std::unique_ptr<FILE, int (*)(FILE*)> in(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!in) return absl::InternalError(absl::StrCat("cannot reread spool file ", path));
  RETURN_IF_ERROR(store_->AddReceipt(
      Receipt{header.job_id(), header.round(), attempt, site, header, scale, bytes, path}));
  if (aggregator != nullptr) {
    aggregator->BeginUpdate(static_cast<double>(header.num_samples()), rows, scale);
    if (!FoldFile(aggregator, in.get())) {
      // An I/O error after the size check: the sum now holds part of an update, so this
      // round's aggregate must not be applied; the round is run again.
      absl::MutexLock lock(&mu_);
      round_->poisoned = true;
      return absl::DataLossError(absl::StrCat("read error in spool file ", path,
                                              "; this round will be run again"));
    }
    aggregator->EndUpdate();
  }
  absl::MutexLock lock(&mu_);
  // Under a robust rule the spool is only recorded; CloseRound reads it (it stays until commit).
  if (aggregator == nullptr) round_->spooled.push_back(SpooledUpdate{path, rows, scale, bytes});
  round_->received.insert(site);
  round_->loss_sum += header.train_loss() * header.num_samples();
  round_->weight_sum += header.num_samples();
  if (header.privacy().epsilon() > 0) {
    JobStatus& job = jobs_[header.job_id()];
    *SiteEntry(job, site)->mutable_privacy() = header.privacy();
    metrics_->site_epsilon.Add({{"job", header.job_id()}, {"site", site}})
        .Set(header.privacy().epsilon());
  }
  return absl::OkStatus();
}

bool Coordinator::FoldFile(Aggregator* aggregator, FILE* in) const {
  std::vector<float> buffer(config_.chunk_bytes() / sizeof(float));
  for (size_t k = 0; k < aggregator->layout().shared.size(); ++k) {
    const uint64_t numel = aggregator->layout().shared[k].byte_size() / sizeof(float);
    for (uint64_t offset = 0; offset < numel;) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(buffer.size(), numel - offset));
      if (std::fread(buffer.data(), sizeof(float), n, in) != n) return false;
      aggregator->Fold(k, offset, buffer.data(), n);
      offset += n;
    }
  }
  return true;
}

absl::Status Coordinator::Report(const Identity& who, const MetricsReport& report) {
  JobStatus copy;
  {
    absl::MutexLock lock(&mu_);
    auto it = jobs_.find(report.job_id());
    if (it == jobs_.end()) return absl::NotFoundError(absl::StrCat("no job ", report.job_id()));
    AttachReport(it->second, who.name, report);
    if (round_ && round_->job_id == report.job_id() && round_->round == report.round()) {
      round_->reported.insert(who.name);
    }
    copy = it->second;
  }
  return store_->PutJob(copy);  // outside the lock: an fsync must not stall every site
}


void Coordinator::AttachReport(JobStatus& job, const std::string& site,
                               const MetricsReport& report) {
  SiteReport* entry = SiteEntry(job, site);
  *entry->mutable_test() = report.test();
  entry->set_mean_auroc(MeanAuroc(report.test()));
  // A report for round r evaluates the model that round r - 1 produced.
  if (report.round() == 0 || report.round() > static_cast<uint32_t>(job.rounds_size())) return;
  std::map<std::string, SiteReport> by_site;
  for (const SiteReport& s : job.sites()) by_site[s.site()] = s;
  RoundSummary& summary = *job.mutable_rounds(static_cast<int>(report.round()) - 1);
  PoolMetrics(by_site, summary);
  metrics_->job_mean_auroc.Add({{"job", job.job_id()}}).Set(summary.mean_auroc());
}

// ---------------------------------------------------------------------------------------------
// Scheduling

void Coordinator::SchedulerLoop() {
  while (true) {
    std::string job_id;
    {
      absl::MutexLock lock(&mu_);
      auto pick = [&] {
        mu_.AssertHeld();
        if (shutdown_) return true;
        for (const std::string& id : job_order_) {
          if (!Terminal(jobs_[id].state())) {
            job_id = id;
            return true;
          }
        }
        return false;
      };
      mu_.AwaitWithTimeout(absl::Condition(&pick), absl::Seconds(1));
      if (shutdown_) return;
    }
    if (job_id.empty()) continue;
    metrics_->jobs_running.Set(1);
    absl::Status status = RunJob(job_id);
    metrics_->jobs_running.Set(0);
    absl::MutexLock fold_lock(&fold_mu_);
    absl::MutexLock lock(&mu_);
    round_.reset();
    global_.reset();
    if (shutdown_) return;
    JobStatus& job = jobs_[job_id];
    if (Terminal(job.state())) continue;
    job.set_state(status.ok() ? DONE : FAILED);
    job.set_message(status.ok() ? "" : std::string(status.message()));
    Log(absl::StrCat("job ", job_id, status.ok() ? " done" : " failed: ",
                     status.ok() ? "" : status.message()));
    if (absl::Status s = store_->PutJob(job); !s.ok()) {
      Log(absl::StrCat("cannot record the end of job ", job_id, ": ", s.message()));
    }
  }
}

absl::Status Coordinator::SetJobState(const std::string& job_id, JobState state,
                                      const std::string& message) {
  JobStatus copy;
  {
    absl::MutexLock lock(&mu_);
    JobStatus& job = jobs_[job_id];
    job.set_state(state);
    job.set_message(message);
    copy = job;
  }
  return store_->PutJob(copy);
}

bool Coordinator::JobCancelled(const std::string& job_id) {
  return shutdown_ || jobs_[job_id].state() == CANCELLED;
}

absl::Status Coordinator::PrepareModel(const JobStatus& job) {
  ASSIGN_OR_RETURN(ModelInit init, init_(job.spec()));
  moments_ = OptimizerMoments{};
  if (job.rounds_done() > 0) {
    ASSIGN_OR_RETURN(Checkpoint checkpoint, store_->LatestCheckpoint(job.job_id()));
    ASSIGN_OR_RETURN(TensorList weights, ReadSafetensors(checkpoint.path));
    if (MetasOf(weights).size() != init.weights.size()) {
      return absl::DataLossError(absl::StrCat("checkpoint ", checkpoint.path,
                                              " does not match the job's model"));
    }
    const ServerOptimizerKind kind = job.spec().server_optimizer().kind();
    if (kind == FEDADAM || kind == FEDYOGI) {
      ASSIGN_OR_RETURN(moments_, ReadMoments(MomentsPath(checkpoint.path), weights));
    }
    init.weights = std::move(weights);
  }
  absl::MutexLock lock(&mu_);
  global_ = std::make_shared<const TensorList>(std::move(init.weights));
  head_prefix_ = init.head_prefix;
  return absl::OkStatus();
}

absl::Status Coordinator::WaitForSites(const JobSpec& spec) {
  absl::MutexLock lock(&mu_);
  auto enough = [&] {
    mu_.AssertHeld();
    return shutdown_ || EligibleSites(spec).size() >= spec.min_sites();
  };
  mu_.AwaitWithTimeout(absl::Condition(&enough), absl::Seconds(spec.start_timeout_seconds()));
  if (shutdown_) return absl::CancelledError("coordinator is shutting down");
  const size_t have = EligibleSites(spec).size();
  if (have < spec.min_sites()) {
    return absl::UnavailableError(absl::StrCat("only ", have, " eligible sites connected within ",
                                               spec.start_timeout_seconds(), " s; job needs ",
                                               spec.min_sites()));
  }
  return absl::OkStatus();
}

absl::Status Coordinator::RunJob(const std::string& job_id) {
  JobStatus job;
  {
    absl::MutexLock lock(&mu_);
    job = jobs_[job_id];
  }
  RETURN_IF_ERROR(PrepareModel(job));
  RETURN_IF_ERROR(SetJobState(job_id, RUNNING, ""));
  RETURN_IF_ERROR(WaitForSites(job.spec()));
  constexpr int kMaxAttempts = 3;
  for (uint32_t round = job.rounds_done(); round < job.spec().rounds(); ++round) {
    absl::Status status;
    ASSIGN_OR_RETURN(std::vector<Receipt> earlier, store_->Receipts(job_id, round));
    const uint32_t first = earlier.empty() ? 1 : earlier.back().attempt + 1;  // after a restart
    for (uint32_t attempt = first; attempt < first + kMaxAttempts; ++attempt) {
      status = RunRound(job_id, round, attempt, /*evaluate_only=*/false);
      if (status.ok() || absl::IsCancelled(status)) break;
      metrics_->rounds_failed.Increment();
      Log(absl::StrCat("job ", job_id, " round ", round, " attempt ", attempt, ": ",
                       status.message()));
    }
    RETURN_IF_ERROR(status);
  }
  // Every site evaluates the final model on its own test split.
  return RunRound(job_id, job.spec().rounds(), /*attempt=*/1, /*evaluate_only=*/true);
}

Task Coordinator::MakeTask(const std::string& site) const {
  Task task;
  task.set_job_id(round_->job_id);
  task.set_round(round_->round);
  *task.mutable_spec() = round_->spec;
  for (const std::string& label : TrainLabels(round_->spec, site)) task.add_train_labels(label);
  task.set_deadline_unix_seconds(absl::ToDoubleSeconds(round_->deadline - absl::UnixEpoch()));
  task.set_final_round(round_->round + 1 >= round_->spec.rounds());
  task.set_evaluate_only(round_->evaluate_only);
  return task;
}

std::set<std::string> Coordinator::CarryOverUpdates() {
  std::string job_id;
  uint32_t round, attempt;
  {
    absl::MutexLock lock(&mu_);
    job_id = round_->job_id;
    round = round_->round;
    attempt = round_->attempt;
  }
  std::set<std::string> carried;
  absl::StatusOr<std::vector<Receipt>> receipts = store_->Receipts(job_id, round);
  if (!receipts.ok()) {
    Log(absl::StrCat("cannot read the receipts of round ", round, ": ", receipts.status().message()));
    return carried;
  }
  std::map<std::string, Receipt> latest;  // per site, its update of the newest earlier attempt
  for (Receipt& r : *receipts) {
    if (r.attempt < attempt) latest[r.site] = std::move(r);
  }
  for (const auto& [site, r] : latest) {
    absl::StatusOr<std::vector<size_t>> rows;
    {
      absl::MutexLock lock(&mu_);
      rows = LabelRows(site, r.header);
    }
    absl::Status status = rows.status();
    if (status.ok()) {
      status = FoldSpool(r.spool, r.header, site, *rows, r.bytes, r.scale, attempt);
    }
    if (status.ok()) {
      carried.insert(site);
    } else {
      Log(absl::StrCat("update of ", site, " from attempt ", r.attempt, " not reused: ",
                       status.message()));
    }
  }
  return carried;
}

absl::Status Coordinator::RunRound(const std::string& job_id, uint32_t round, uint32_t attempt,
                                   bool evaluate_only) {
  {
    absl::MutexLock fold_lock(&fold_mu_);  // no fold is using the aggregator being replaced
    absl::MutexLock lock(&mu_);
    auto state = std::make_unique<RoundState>();
    state->job_id = job_id;
    state->spec = jobs_[job_id].spec();
    state->round = round;
    state->attempt = attempt;
    state->evaluate_only = evaluate_only;
    state->opened = absl::Now();
    state->deadline = state->opened + absl::Seconds(state->spec.round_deadline_seconds());
    state->layout = MakeLayout(*global_, head_prefix_, state->spec.head_mode(),
                               state->spec.labels_size());
    if (!IsRobust(state->spec)) {
      state->aggregator = std::make_unique<Aggregator>(state->layout, state->spec.labels_size());
    }
    round_ = std::move(state);
  }
  const std::set<std::string> carried = evaluate_only ? std::set<std::string>() : CarryOverUpdates();
  absl::MutexLock lock(&mu_);
  RoundState* r = round_.get();
  std::vector<std::string> chosen;
  for (const std::string& site : EligibleSites(r->spec)) {
    if (!carried.count(site)) chosen.push_back(site);
  }
  if (!evaluate_only && r->spec.fraction() < 1.0) {
    std::mt19937_64 rng(std::hash<std::string>()(job_id) ^ round);
    std::shuffle(chosen.begin(), chosen.end(), rng);
    const size_t want = std::max<size_t>(
        r->spec.min_sites(), static_cast<size_t>(std::ceil(r->spec.fraction() * chosen.size())));
    chosen.resize(std::min(chosen.size(), want > carried.size() ? want - carried.size() : 0));
  }
  for (auto& [name, site] : sites_) {  // tasks of an earlier attempt that were never taken
    auto& pending = site.pending;
    pending.erase(std::remove_if(pending.begin(), pending.end(),
                                 [&](const Task& t) { return t.job_id() == job_id; }),
                  pending.end());
  }
  r->assigned = carried;
  for (const std::string& site : chosen) {
    sites_[site].pending.push_back(MakeTask(site));
    r->assigned.insert(site);
  }
  if (!carried.empty()) {
    Log(absl::StrCat("job ", job_id, " round ", round, ": reusing the updates of ",
                     absl::StrJoin(carried, ", "), " received before"));
  }
  Log(absl::StrCat("job ", job_id, evaluate_only ? " final evaluation" : " round ",
                   evaluate_only ? "" : absl::StrCat(round), ": ", chosen.size(), " sites (",
                   absl::StrJoin(chosen, ", "), ")"));
  auto finished = [&] {
    mu_.AssertHeld();
    const auto& done = r->evaluate_only ? r->reported : r->received;
    return JobCancelled(job_id) || done.size() + r->declined.size() >= r->assigned.size();
  };
  mu_.AwaitWithDeadline(absl::Condition(&finished), r->deadline);
  if (JobCancelled(job_id)) return absl::CancelledError("job cancelled");
  if (evaluate_only) return absl::OkStatus();
  if (r->poisoned) return absl::DataLossError(absl::StrCat("round ", round, ": aggregate damaged"));
  const size_t received = r->received.size();
  if (received < r->spec.min_sites()) {
    std::vector<std::string> declined;
    for (const auto& [site, why] : r->declined) declined.push_back(site + ": " + why);
    return absl::UnavailableError(absl::StrCat(
        "round ", round, ": only ", received, " of ", r->spec.min_sites(),
        " required updates arrived", declined.empty() ? "" : " (declined: ",
        absl::StrJoin(declined, "; "), declined.empty() ? "" : ")"));
  }
  mu_.Unlock();
  absl::Status status = CloseRound(job_id, round);
  mu_.Lock();
  return status;
}

void Coordinator::RemoveSpools(const std::string& job_id, uint32_t round) {
  // Every attempt's spools: also those of uploads a crash cut before their receipt was written.
  const std::string prefix = absl::StrCat(job_id, "-", round, "-");
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(fs::path(config_.state_dir()) / "spool", ec)) {
    if (absl::StartsWith(entry.path().filename().string(), prefix)) {
      std::error_code ignored;
      fs::remove(entry.path(), ignored);
    }
  }
}

std::string Coordinator::SpoolPath(const std::string& job_id, uint32_t round, uint32_t attempt,
                                   const std::string& site) const {
  return (fs::path(config_.state_dir()) / "spool" /
          absl::StrCat(job_id, "-", round, "-", attempt, "-", site))
      .string();
}

std::string Coordinator::CheckpointPath(const std::string& job_id, uint32_t round) const {
  return (fs::path(config_.state_dir()) / "checkpoints" /
          absl::StrCat(job_id, "-round-", round, ".safetensors"))
      .string();
}

absl::Status Coordinator::CloseRound(const std::string& job_id, uint32_t round) {
  absl::MutexLock fold_lock(&fold_mu_);
  absl::Status status = CommitNextModel(job_id, round);
  if (status.ok() || moments_.m.empty()) return status;
  // FedAdam/FedYogi moments stepped before the commit failed: take them back from the last
  // commit, so that the round's retry steps them once.
  moments_ = OptimizerMoments{};
  absl::StatusOr<Checkpoint> last = store_->LatestCheckpoint(job_id);
  if (!last.ok() && !absl::IsNotFound(last.status())) {
    return Annotate(last.status(), status.message());
  }
  if (last.ok()) {  // else the failed round was the first: the moments start from zero
    std::shared_ptr<const TensorList> global;
    {
      absl::MutexLock lock(&mu_);
      global = global_;
    }
    absl::StatusOr<OptimizerMoments> moments = ReadMoments(MomentsPath(last->path), *global);
    if (!moments.ok()) return Annotate(moments.status(), status.message());
    moments_ = *std::move(moments);
  }
  return status;
}

absl::Status Coordinator::CommitNextModel(const std::string& job_id, uint32_t round) {
  std::shared_ptr<const TensorList> global;
  JobSpec spec;
  RoundSummary summary;
  {
    absl::MutexLock lock(&mu_);
    global = global_;
    spec = round_->spec;
    summary.set_round(round);
    for (const std::string& site : round_->received) summary.add_sites(site);
    for (const auto& [site, why] : round_->declined) summary.add_declined(site + ": " + why);
    summary.set_train_loss(round_->loss_sum / round_->weight_sum);
    summary.set_mean_auroc(std::nan(""));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<Aggregator> robust, CombineRobust());
  Aggregator* aggregator = robust ? robust.get() : MeanAggregator();
  ASSIGN_OR_RETURN(TensorList next,
                   aggregator->NextModel(spec.server_optimizer(), *global, &moments_));
  global.reset();
  const std::string path = CheckpointPath(job_id, round + 1);
  RETURN_IF_ERROR(WriteSafetensors(path, next, {{"job_id", job_id},
                                                {"round", absl::StrCat(round + 1)}}));
  // FedAdam/FedYogi state goes next to the checkpoint, so a restart resumes the same optimizer.
  if (!moments_.m.empty()) RETURN_IF_ERROR(WriteMoments(MomentsPath(path), moments_));
  uint32_t crc = 0;
  for (const NamedTensor& t : next) crc = Crc32cExtend(crc, t.data.data(), t.byte_size());
  JobStatus copy;
  {
    absl::MutexLock lock(&mu_);
    copy = jobs_[job_id];
  }
  *copy.add_rounds() = summary;
  copy.set_rounds_done(round + 1);
  RETURN_IF_ERROR(store_->CommitRound(copy, Checkpoint{path, crc, round + 1}));
  std::error_code ec;
  if (round >= 1) {  // keep the last two
    fs::remove(CheckpointPath(job_id, round - 1), ec);
    fs::remove(MomentsPath(CheckpointPath(job_id, round - 1)), ec);
  }
  RemoveSpools(job_id, round);
  absl::MutexLock lock(&mu_);
  JobStatus& job = jobs_[job_id];  // only once stored: a failed commit leaves no trace here
  *job.add_rounds() = summary;
  job.set_rounds_done(round + 1);
  global_ = std::make_shared<const TensorList>(std::move(next));
  metrics_->rounds_completed.Increment();
  metrics_->round_duration.Observe(absl::ToDoubleSeconds(absl::Now() - round_->opened));
  Log(absl::StrFormat("job %s round %d committed: %d sites, loss %.4f", job_id, round,
                      summary.sites_size(), summary.train_loss()));
  return absl::OkStatus();
}

Aggregator* Coordinator::MeanAggregator() {
  absl::MutexLock lock(&mu_);
  return round_->aggregator.get();  // round_ is replaced only by the scheduler thread
}

absl::StatusOr<std::unique_ptr<Aggregator>> Coordinator::CombineRobust() {
  UpdateLayout layout;
  size_t num_labels;
  RobustOptions options;
  std::vector<SpooledUpdate> spooled;
  {
    absl::MutexLock lock(&mu_);
    if (!IsRobust(round_->spec)) return std::unique_ptr<Aggregator>();
    layout = round_->layout;
    num_labels = static_cast<size_t>(round_->spec.labels_size());
    options.rule = round_->spec.aggregation();
    options.trim_fraction = round_->spec.trim_fraction();
    spooled = round_->spooled;
  }
  // A spool that cannot be read fails the round before anything is applied; the next attempt
  // re-admits the spools that are still sound (CarryOverUpdates).
  absl::StatusOr<RobustResult> result = CombineSpools(layout, num_labels, spooled, options);
  if (!result.ok()) {
    return Annotate(result.status(), absl::StrCat("robust aggregation (",
                                                  Aggregation_Name(options.rule), ")"));
  }
  ASSIGN_OR_RETURN(Aggregator combined,
                   Aggregator::FromAverage(std::move(layout), num_labels,
                                           std::move(result->combined), result->row_covered,
                                           result->updates));
  return std::make_unique<Aggregator>(std::move(combined));
}

std::vector<std::string> Coordinator::EligibleSites(const JobSpec& spec) const {
  std::vector<std::string> out;
  for (const auto& [name, site] : sites_) {
    if (!site.info.connected()) continue;
    if (!spec.sites().empty() &&
        std::find(spec.sites().begin(), spec.sites().end(), name) == spec.sites().end()) {
      continue;
    }
    if (!TrainLabels(spec, name).empty()) out.push_back(name);
  }
  return out;
}

std::vector<std::string> Coordinator::TrainLabels(const JobSpec& spec,
                                                  const std::string& site) const {
  std::vector<std::string> out;
  auto it = sites_.find(site);
  if (it == sites_.end()) return out;
  for (const std::string& label : spec.labels()) {
    for (const SiteLabel& have : it->second.info.labels()) {
      if (have.name() == label) out.push_back(label);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Admin

absl::StatusOr<JobStatus> Coordinator::SubmitJob(const Identity& who, const JobSpec& spec) {
  ASSIGN_OR_RETURN(JobSpec valid, ValidateJobSpecForModel(spec));
  JobStatus job;
  job.set_job_id(NewJobId(valid.name()));
  *job.mutable_spec() = valid;
  job.set_state(QUEUED);
  RETURN_IF_ERROR(store_->PutJob(job));
  RETURN_IF_ERROR(store_->Audit(who.name, "submit-job", job.job_id()));
  absl::MutexLock lock(&mu_);
  jobs_[job.job_id()] = job;
  job_order_.push_back(job.job_id());
  Log(absl::StrCat(who.name, " submitted job ", job.job_id()));
  return job;
}

absl::StatusOr<JobSpec> Coordinator::ValidateJobSpecForModel(const JobSpec& spec) {
  ASSIGN_OR_RETURN(JobSpec valid, ValidateJobSpec(spec));
  // Building the model once checks the name and the sizes before the job is queued.
  RETURN_IF_ERROR(init_(valid).status());
  return valid;
}

std::vector<JobStatus> Coordinator::ListJobs() {
  absl::MutexLock lock(&mu_);
  std::vector<JobStatus> out;
  for (const std::string& id : job_order_) out.push_back(jobs_[id]);
  return out;
}

absl::StatusOr<JobStatus> Coordinator::GetJob(const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(job_id);
  if (it == jobs_.end()) return absl::NotFoundError(absl::StrCat("no job ", job_id));
  return it->second;
}

absl::StatusOr<JobStatus> Coordinator::CancelJob(const Identity& who, const std::string& job_id) {
  JobStatus copy;
  {
    absl::MutexLock lock(&mu_);
    auto it = jobs_.find(job_id);
    if (it == jobs_.end()) return absl::NotFoundError(absl::StrCat("no job ", job_id));
    if (Terminal(it->second.state())) {
      return absl::FailedPreconditionError(absl::StrCat("job ", job_id, " already ended"));
    }
    it->second.set_state(CANCELLED);
    it->second.set_message(absl::StrCat("cancelled by ", who.name));
    copy = it->second;
  }
  RETURN_IF_ERROR(store_->PutJob(copy));
  RETURN_IF_ERROR(store_->Audit(who.name, "cancel-job", job_id));
  return copy;
}

std::vector<SiteInfo> Coordinator::ListSites() {
  absl::MutexLock lock(&mu_);
  std::vector<SiteInfo> out;
  for (const auto& [name, site] : sites_) out.push_back(site.info);
  return out;
}

namespace {

// The sidecar a researcher needs to use the exported weights.
std::string Sidecar(const JobStatus& job) {
  const JobSpec& spec = job.spec();
  std::vector<std::string> labels;
  for (const std::string& l : spec.labels()) labels.push_back(JsonQuote(l));
  return absl::StrCat(
      "{\n  \"job_id\": ", JsonQuote(job.job_id()), ",\n  \"architecture\": ",
      JsonQuote(spec.model()), ",\n  \"labels\": [", absl::StrJoin(labels, ", "),
      "],\n  \"input_size\": ", spec.image_size(), ",\n  \"in_channels\": ", spec.in_channels(),
      ",\n  \"head_mode\": ", JsonQuote(spec.head_mode() == HEAD_MODE_SITE ? "site" : "label"),
      ",\n  \"output\": \"one logit per label; sigmoid gives the probability\"",
      ",\n  \"preprocessing\": \"DICOM pixel data -> modality LUT -> VOI window (first in file, "
      "else VOI LUT, else min-max) -> MONOCHROME1 inverted -> area resize to input_size x "
      "input_size -> scale to [0, 1]\",\n  \"rounds\": ",
      job.rounds_done(), "\n}\n");
}

absl::Status StreamFile(const std::string& name, const std::string& path, size_t chunk_bytes,
                        const std::function<bool(const FileChunk&)>& emit) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::string buffer(chunk_bytes, '\0');
  FileChunk chunk;
  uint64_t offset = 0;
  while (in) {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    const size_t n = static_cast<size_t>(in.gcount());
    if (n == 0) break;
    chunk.set_file(name);
    chunk.set_offset(offset);
    chunk.set_data(buffer.data(), n);
    offset += n;
    if (!emit(chunk)) return absl::CancelledError("export stream closed by the peer");
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status Coordinator::ExportModel(const Identity& who, const std::string& job_id,
                                      const std::function<bool(const FileChunk&)>& emit) {
  ASSIGN_OR_RETURN(JobStatus job, GetJob(job_id));
  ASSIGN_OR_RETURN(Checkpoint checkpoint, store_->LatestCheckpoint(job_id));
  RETURN_IF_ERROR(store_->Audit(who.name, "export-model", job_id));
  RETURN_IF_ERROR(StreamFile("model.safetensors", checkpoint.path, config_.chunk_bytes(), emit));
  FileChunk sidecar;
  sidecar.set_file("model.json");
  sidecar.set_data(Sidecar(job));
  if (!emit(sidecar)) return absl::CancelledError("export stream closed by the peer");
  return absl::OkStatus();
}

}  // namespace fl
