// The sites' task phases in the open round: what the sites tell (Federation.Progress) and what
// the coordinator sees itself (downloads, uploads, reports, declines), shown in
// JobStatus.current.
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/coordinator.h"
#include "server/coordinator_internal.h"

namespace fl {

using coordinator_internal::Log;

namespace {

// A declined task's reason is the site's text: kept short in the live state.
constexpr size_t kMaxReasonBytes = 512;

// Phases a site itself may send.
bool SiteSendable(TaskPhase phase) {
  return phase == TASK_PHASE_DOWNLOADING || phase == TASK_PHASE_EVALUATING ||
         phase == TASK_PHASE_TRAINING || phase == TASK_PHASE_UPLOADING;
}

// Moves `task` to `phase`; its clock restarts only when the phase changes. Steps are kept
// (an upload shows the steps it trained), throughput only while training.
void EnterPhase(SiteTask& task, TaskPhase phase) {
  if (task.phase() != phase) {
    task.set_phase(phase);
    task.set_since_unix_seconds(coordinator_internal::NowUnixSeconds());
  }
  if (phase != TASK_PHASE_TRAINING) task.set_images_per_second(0);
}

}  // namespace

void Coordinator::MarkPhase(const std::string& job_id, uint32_t round, const std::string& site,
                            TaskPhase phase, const std::string& reason) {
  if (!round_ || round_->job_id != job_id || round_->round != round) return;
  auto it = round_->tasks.find(site);
  if (it == round_->tasks.end()) return;
  EnterPhase(it->second, phase);
  it->second.set_reason(reason.substr(0, kMaxReasonBytes));
}

absl::Status Coordinator::CheckProgress(const std::string& site,
                                        const ProgressRequest& request) const {
  if (!round_ || round_->job_id != request.job_id() || round_->round != request.round()) {
    return absl::FailedPreconditionError(absl::StrCat("round ", request.round(), " of job ",
                                                      request.job_id(), " is not open (stale)"));
  }
  auto task = round_->tasks.find(site);
  if (task == round_->tasks.end()) {
    return absl::PermissionDeniedError("this site has no task in this round");
  }
  const TaskPhase now = task->second.phase();
  if (now == TASK_PHASE_UPLOADED || now == TASK_PHASE_DECLINED ||
      (round_->evaluate_only && now == TASK_PHASE_REPORTED)) {
    return absl::FailedPreconditionError("this site's task in this round is finished");
  }
  if (!SiteSendable(request.phase()) ||
      (round_->evaluate_only && request.phase() == TASK_PHASE_TRAINING)) {
    return absl::InvalidArgumentError(absl::StrCat("phase ", TaskPhase_Name(request.phase()),
                                                   " is not one this site can be in here"));
  }
  const uint32_t local_steps = round_->spec.local_steps();
  if (request.steps_done() > request.steps_total() || request.steps_total() > local_steps) {
    return absl::InvalidArgumentError(absl::StrCat("steps ", request.steps_done(), " of ",
                                                   request.steps_total(), " exceed the job's ",
                                                   local_steps, " local steps"));
  }
  if (!std::isfinite(request.images_per_second()) || request.images_per_second() < 0) {
    return absl::InvalidArgumentError(absl::StrCat("images_per_second ",
                                                   request.images_per_second(),
                                                   " is not a finite, non-negative number"));
  }
  return absl::OkStatus();
}

absl::Status Coordinator::Progress(const Identity& who, const ProgressRequest& request) {
  absl::Status checked;
  {
    absl::MutexLock lock(&mu_);
    checked = CheckProgress(who.name, request);
    if (checked.ok()) {
      SiteTask& task = round_->tasks[who.name];
      EnterPhase(task, request.phase());
      if (request.phase() == TASK_PHASE_TRAINING) {  // other phases keep the steps trained
        task.set_steps_done(request.steps_done());
        task.set_steps_total(request.steps_total());
        task.set_images_per_second(request.images_per_second());
      }
    }
  }
  if (checked.ok()) {
    metrics_->ProgressWith("accepted").Increment();
    return checked;
  }
  const bool stale = absl::IsFailedPrecondition(checked);
  metrics_->ProgressWith(stale ? "stale" : "rejected").Increment();
  if (!stale) Log(absl::StrCat("refused progress from ", who.name, ": ", checked.message()));
  return checked;
}

JobStatus Coordinator::WithCurrentTasks(JobStatus job) const {
  if (!round_ || round_->job_id != job.job_id() || coordinator_internal::Terminal(job.state())) {
    return job;
  }
  for (const auto& [site, task] : round_->tasks) *job.add_current() = task;
  return job;
}

}  // namespace fl
