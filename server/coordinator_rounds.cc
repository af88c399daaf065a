// The coordinator's scheduler: jobs run one after another, in rounds (see docs/ARCHITECTURE.md).
#include "server/coordinator.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <random>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "common/config.h"
#include "common/crc32c.h"
#include "common/safetensors.h"
#include "common/status.h"
#include "common/tensor_stream.h"
#include "models/spec.h"
#include "server/coordinator_internal.h"
#include "server/robust_aggregator.h"

namespace fl {

namespace fs = std::filesystem;
using coordinator_internal::IsStorageFailure;
using coordinator_internal::Log;
using coordinator_internal::MarkedStorageFailure;
using coordinator_internal::Terminal;

namespace {

bool IsRobust(const JobSpec& spec) {
  return spec.aggregation() == AGGREGATION_MEDIAN || spec.aggregation() == AGGREGATION_TRIMMED_MEAN;
}

}  // namespace

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
    {
      absl::MutexLock fold_lock(&fold_mu_);
      absl::MutexLock lock(&mu_);
      round_.reset();
      global_.reset();
      if (shutdown_) return;  // a job cut by shutdown resumes after the restart
    }
    const std::string ending =
        absl::StrCat("job ", job_id, status.ok() ? " done" : " failed: ", status.message());
    // Until the ending is stored the job is not over (memory changes only once it is): a full
    // disk is waited out here, 1 s doubling to 60 s, rather than running the job again.
    for (double pause = 1;; pause = std::min(pause * 2, 60.0)) {
      bool ends = false;  // stays false when the job ended meanwhile (cancelled)
      absl::StatusOr<JobStatus> stored = ChangeJob(job_id, [&](JobStatus& job) {
        if (Terminal(job.state())) return absl::FailedPreconditionError("already ended");
        ends = true;
        job.set_state(status.ok() ? DONE : FAILED);
        job.set_message(status.ok() ? "" : std::string(status.message()));
        return absl::OkStatus();
      });
      if (!ends) break;
      if (stored.ok()) {
        Log(ending);
        RemoveJobCopies(job_id);  // a stored ending is never resumed
        break;
      }
      Log(absl::StrFormat("%s, but that cannot be recorded (%s); trying again in %.0f s", ending,
                          stored.status().message(), pause));
      if (!PauseUnlessCancelled(job_id, pause)) break;  // a shutdown: resumed after the restart
    }
  }
}

absl::StatusOr<JobStatus> Coordinator::ChangeJob(
    const std::string& job_id, const std::function<absl::Status(JobStatus&)>& change) {
  absl::MutexLock write_lock(&job_write_mu_);
  JobStatus copy;
  {
    absl::MutexLock lock(&mu_);
    auto it = jobs_.find(job_id);
    if (it == jobs_.end()) return absl::NotFoundError(absl::StrCat("no job ", job_id));
    copy = it->second;
    RETURN_IF_ERROR(change(copy));
  }
  if (absl::Status stored = store_->PutJob(copy); !stored.ok()) {
    metrics_->storage_failures.Increment();
    return stored;
  }
  // Stored: now the same change in memory (applied again rather than assigned, so that what a
  // fold recorded meanwhile stays). A write that failed (disk full) changed nothing.
  absl::MutexLock lock(&mu_);
  if (absl::Status again = change(jobs_[job_id]); !again.ok()) return again;
  return jobs_[job_id];
}

bool Coordinator::PauseUnlessCancelled(const std::string& job_id, double seconds) {
  absl::MutexLock lock(&mu_);
  auto cancelled = [&] {
    mu_.AssertHeld();
    return JobCancelled(job_id);
  };
  return !clock_->AwaitWithTimeout(mu_, absl::Condition(&cancelled), absl::Seconds(seconds));
}

bool Coordinator::JobCancelled(const std::string& job_id) {
  return shutdown_ || jobs_[job_id].state() == CANCELLED;
}

absl::Status Coordinator::PrepareModel(const JobStatus& job) {
  JobSpec spec = job.spec();
  if (job.rounds_done() > 0) {
    spec.clear_initial_model();  // the checkpoint below replaces the weights: no need to read it
  } else if (!spec.initial_model().empty()) {
    spec.set_initial_model(InitialModelPath(job.job_id()));
  }
  ASSIGN_OR_RETURN(ModelInit init, init_(spec));
  moments_ = OptimizerMoments{};
  if (job.rounds_done() > 0) {
    ASSIGN_OR_RETURN(Checkpoint checkpoint, store_->LatestCheckpoint(job.job_id()));
    ASSIGN_OR_RETURN(TensorList weights, ReadSafetensors(checkpoint.path, nullptr, env_));
    if (MetasOf(weights).size() != init.weights.size()) {
      return absl::DataLossError(
          absl::StrCat("checkpoint ", checkpoint.path, " does not match the job's model"));
    }
    if (HasServerState(job.spec().server_optimizer())) {
      ASSIGN_OR_RETURN(moments_, ReadMoments(MomentsPath(checkpoint.path), weights, env_));
    }
    init.weights = std::move(weights);
  }
  absl::MutexLock lock(&mu_);
  global_ = std::make_shared<const TensorList>(std::move(init.weights));
  head_prefix_ = init.head_prefix;
  return absl::OkStatus();
}

absl::Status Coordinator::WaitForSites(const std::string& job_id, const JobSpec& spec) {
  absl::MutexLock lock(&mu_);
  auto enough = [&] {
    mu_.AssertHeld();
    return JobCancelled(job_id) || EligibleSites(spec).size() >= spec.min_sites();
  };
  mu_.AwaitWithTimeout(absl::Condition(&enough), absl::Seconds(spec.start_timeout_seconds()));
  if (shutdown_) return absl::CancelledError("coordinator is shutting down");
  if (JobCancelled(job_id)) return absl::CancelledError("job cancelled");
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
  // Not over a cancel that came while the model was prepared: the job would run (and resume
  // after a restart) although its operator cancelled it.
  RETURN_IF_ERROR(ChangeJob(job_id, [](JobStatus& stored) {
                    if (Terminal(stored.state())) return absl::CancelledError("job cancelled");
                    stored.set_state(RUNNING);
                    stored.clear_message();
                    return absl::OkStatus();
                  }).status());
  RETURN_IF_ERROR(WaitForSites(job_id, job.spec()));
  uint32_t done = job.rounds_done();
  for (bool stop = job.stopped_early(); done < job.spec().rounds() && !stop; ++done) {
    RETURN_IF_ERROR(RunTrainingRound(job_id, done));
    absl::MutexLock lock(&mu_);
    stop = jobs_[job_id].stopped_early();
  }
  // Every site evaluates the final model on its own test split.
  RETURN_IF_ERROR(RunRound(job_id, done, /*attempt=*/1, /*evaluate_only=*/true));
  if (absl::Status kept = KeepFinalIfBest(job_id); !kept.ok()) {  // the best so far stays
    Log(absl::StrCat("job ", job_id,
                     ": the final model's selection was not recorded: ", kept.message()));
  }
  return absl::OkStatus();
}

absl::Status Coordinator::RunTrainingRound(const std::string& job_id, uint32_t round) {
  ASSIGN_OR_RETURN(std::vector<Receipt> earlier, store_->Receipts(job_id, round));
  const uint32_t first = earlier.empty() ? 1 : earlier.back().attempt + 1;  // after a restart
  const RoundRetry retry = RoundRetryWithDefaults(config_.round_retry());
  double storage_pause = 1;  // before the next try after a commit that could not be stored
  double quorum_pause = retry.initial_seconds();
  absl::Status status;
  for (uint32_t attempt = first, failed = 0; failed < retry.attempts(); ++attempt) {
    status = RunRound(job_id, round, attempt, /*evaluate_only=*/false);
    if (status.ok() || absl::IsCancelled(status)) return status;
    metrics_->rounds_failed.Increment();
    Log(absl::StrCat("job ", job_id, " round ", round, " attempt ", attempt, ": ",
                     absl::StatusCodeToString(status.code()), ": ", status.message()));
    double pause = 0;
    if (IsStorageFailure(status)) {
      // Out of disk space, an I/O error, a failed fsync or rename: the round's updates stay
      // spooled, and the next attempt, once storage is back, commits them. That costs the job
      // no attempt.
      pause = storage_pause;
      storage_pause = std::min(storage_pause * 2, 60.0);
    } else if (++failed < retry.attempts() && absl::IsUnavailable(status)) {
      // Quorum lost (declines, a deadline): the cause may pass (a site's full disk, a restart).
      pause = quorum_pause;
      quorum_pause = std::min(quorum_pause * 2, retry.max_seconds());
    }
    if (pause <= 0) continue;
    Log(absl::StrFormat("job %s round %d: trying again in %g s", job_id, round, pause));
    if (!PauseUnlessCancelled(job_id, pause)) return absl::CancelledError("job cancelled");
  }
  return status;
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
  auto job = jobs_.find(round_->job_id);
  if (job != jobs_.end() && !job->second.frozen_digest().empty()) {
    *task.mutable_frozen_spec() = job->second.frozen_spec();
    task.set_frozen_digest(job->second.frozen_digest());
  }
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
    Log(absl::StrCat("cannot read the receipts of round ", round, ": ",
                     receipts.status().message()));
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
      Log(absl::StrCat("update of ", site, " from attempt ", r.attempt,
                       " not reused: ", status.message()));
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
    state->layout =
        MakeLayout(*global_, head_prefix_, state->spec.head_mode(), state->spec.labels_size());
    if (!IsRobust(state->spec)) {
      state->aggregator = std::make_unique<Aggregator>(state->layout, state->spec.labels_size());
    }
    round_ = std::move(state);
  }
  const std::set<std::string> carried =
      evaluate_only ? std::set<std::string>() : CarryOverUpdates();
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
  for (const std::string& site : r->assigned) {
    SiteTask& task = r->tasks[site];
    task.set_site(site);
    task.set_round(round);
    task.set_phase(carried.count(site) ? TASK_PHASE_UPLOADED : TASK_PHASE_ASSIGNED);
    task.set_since_unix_seconds(coordinator_internal::NowUnixSeconds());
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
    return absl::UnavailableError(
        absl::StrCat("round ", round, ": only ", received, " of ", r->spec.min_sites(),
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
  const fs::path spool = fs::path(config_.state_dir()) / "spool";
  const std::vector<std::string> names =
      env_->ListDir(spool.string()).value_or(std::vector<std::string>());
  for (const std::string& name : names) {
    if (absl::StartsWith(name, prefix)) {
      env_->RemoveFile((spool / name).string()).IgnoreError();  // a leftover, removed later
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
    absl::StatusOr<OptimizerMoments> moments = ReadMoments(MomentsPath(last->path), *global, env_);
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
    if (round_->loss_weight > 0) summary.set_train_loss(round_->loss_sum / round_->loss_weight);
    summary.set_mean_auroc(std::nan(""));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<Aggregator> robust, CombineRobust());
  Aggregator* aggregator = robust ? robust.get() : MeanAggregator();
  ASSIGN_OR_RETURN(TensorList next,
                   aggregator->NextModel(spec.server_optimizer(), *global, &moments_));
  global.reset();
  // A write that fails keeps its code (RESOURCE_EXHAUSTED for a full disk, UNAVAILABLE for an
  // I/O error, ...: ErrnoStatus) and is marked as a storage failure: RunTrainingRound waits for
  // storage instead of spending the job's attempts.
  const auto stored = [&](const absl::Status& s) {
    if (s.ok()) return s;
    metrics_->storage_failures.Increment();
    return MarkedStorageFailure(Annotate(s, absl::StrCat("cannot store round ", round)));
  };
  const std::string path = CheckpointPath(job_id, round + 1);
  RETURN_IF_ERROR(stored(WriteSafetensors(
      path, next, {{"job_id", job_id}, {"round", absl::StrCat(round + 1)}}, env_)));
  // FedAdam/FedYogi state goes next to the checkpoint, so a restart resumes the same optimizer.
  if (!moments_.m.empty()) {
    RETURN_IF_ERROR(stored(WriteMoments(MomentsPath(path), moments_, env_)));
  }
  uint32_t crc = 0;
  for (const NamedTensor& t : next) crc = Crc32cExtend(crc, t.data.data(), t.byte_size());
  absl::MutexLock write_lock(&job_write_mu_);  // the stored job stays the latest (ChangeJob)
  JobStatus copy;
  {
    absl::MutexLock lock(&mu_);
    copy = jobs_[job_id];
  }
  *copy.add_rounds() = summary;
  copy.set_rounds_done(round + 1);
  // The sites evaluated the model after `round` rounds during this round: select on it.
  absl::StatusOr<std::string> former_best = KeepIfBest(copy, round);
  RETURN_IF_ERROR(stored(former_best.status()));
  if (coordinator_internal::PatienceSpent(copy, round)) copy.set_stopped_early(true);
  RETURN_IF_ERROR(stored(store_->CommitRound(copy, Checkpoint{path, crc, round + 1})));
  if (!former_best->empty()) env_->RemoveFile(*former_best).IgnoreError();
  if (round >= 1) {  // keep the last two; one not there (no moments) is no error
    env_->RemoveFile(CheckpointPath(job_id, round - 1)).IgnoreError();
    env_->RemoveFile(MomentsPath(CheckpointPath(job_id, round - 1))).IgnoreError();
  }
  RemoveSpools(job_id, round);
  if (round == 0) RemoveInitialModel(job_id);  // from now on the job resumes from checkpoints
  absl::MutexLock lock(&mu_);
  JobStatus& job = jobs_[job_id];  // only once stored: a failed commit leaves no trace here
  *job.add_rounds() = summary;
  job.set_rounds_done(round + 1);
  job.set_best_round(copy.best_round());
  job.set_best_score(copy.best_score());
  job.set_stopped_early(copy.stopped_early());
  global_ = std::make_shared<const TensorList>(std::move(next));
  metrics_->rounds_completed.Increment();
  metrics_->round_duration.Observe(absl::ToDoubleSeconds(absl::Now() - round_->opened));
  Log(absl::StrFormat("job %s round %d committed: %d sites%s", job_id, round, summary.sites_size(),
                      summary.has_train_loss()
                          ? absl::StrFormat(", loss %.4f", summary.train_loss())
                          : std::string(" (no loss reported: DP)")));
  if (job.stopped_early()) {
    Log(
        absl::StrFormat("job %s stops early: no validation gain over round %d's model in %d "
                        "rounds",
                        job_id, job.best_round(), spec.early_stopping().patience_rounds()));
  }
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
    options.env = env_;
    spooled = round_->spooled;
  }
  // A spool that cannot be read fails the round before anything is applied; the next attempt
  // re-admits the spools that are still sound (CarryOverUpdates).
  absl::StatusOr<RobustResult> result = CombineSpools(layout, num_labels, spooled, options);
  if (!result.ok()) {
    return Annotate(result.status(),
                    absl::StrCat("robust aggregation (", Aggregation_Name(options.rule), ")"));
  }
  ASSIGN_OR_RETURN(
      Aggregator combined,
      Aggregator::FromAverage(std::move(layout), num_labels, std::move(result->combined),
                              result->row_covered, result->updates));
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
    if (SiteTrainLabels(spec, name).has_value()) out.push_back(name);
  }
  return out;
}

std::optional<std::vector<std::string>> Coordinator::SiteTrainLabels(
    const JobSpec& spec, const std::string& site) const {
  auto it = sites_.find(site);
  if (it == sites_.end()) return std::nullopt;
  std::vector<std::string> have;
  for (const SiteLabel& label : it->second.info.labels()) have.push_back(label.name());
  return TrainLabelsFor(spec, have);
}

std::vector<std::string> Coordinator::TrainLabels(const JobSpec& spec,
                                                  const std::string& site) const {
  return SiteTrainLabels(spec, site).value_or(std::vector<std::string>{});
}

}  // namespace fl
