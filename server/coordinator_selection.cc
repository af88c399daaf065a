// Model selection on the sites' validation figures (JobSpec.early_stopping): which round's model
// is the best so far, keeping it, and whether the job stops early.
#include <cmath>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status.h"
#include "models/spec.h"
#include "server/coordinator.h"
#include "server/coordinator_internal.h"

namespace fl {

namespace fs = std::filesystem;
using coordinator_internal::Log;

namespace coordinator_internal {

double SelectionScore(const Selection& selection, const RoundSummary& summary) {
  if (selection.metric == "mean_auroc") return summary.mean_auroc();
  for (const Metric& m : summary.metrics()) {
    if (m.name() == selection.metric) return m.value();
  }
  return std::nan("");
}

bool Improves(const Selection& selection, double score, const JobStatus& job) {
  if (std::isnan(score)) return false;
  if (job.best_round() == 0) return true;
  const double gain =
      selection.higher_is_better ? score - job.best_score() : job.best_score() - score;
  return gain > job.spec().early_stopping().min_delta();
}

bool PatienceSpent(const JobStatus& job, uint32_t done) {
  const uint32_t patience = job.spec().early_stopping().patience_rounds();
  return patience > 0 && job.best_round() > 0 && done >= job.best_round() + patience;
}

}  // namespace coordinator_internal

std::string Coordinator::BestPath(const std::string& job_id, uint32_t round) const {
  return (fs::path(config_.state_dir()) / "checkpoints" /
          absl::StrCat(job_id, "-best-round-", round, ".safetensors"))
      .string();
}

absl::StatusOr<std::string> Coordinator::KeepIfBest(JobStatus& job, uint32_t done) {
  if (done == 0 || done > static_cast<uint32_t>(job.rounds_size())) return std::string();
  const Selection selection = SelectionFor(job.spec());
  const double score =
      coordinator_internal::SelectionScore(selection, job.rounds(static_cast<int>(done) - 1));
  if (!coordinator_internal::Improves(selection, score, job)) return std::string();
  // A second name for the checkpoint, which outlives the round's own (only the last two are
  // kept). A name left by a try that was not stored is replaced.
  const std::string best = BestPath(job.job_id(), done);
  env_->RemoveFile(best).IgnoreError();  // usually not there
  RETURN_IF_ERROR(Annotate(env_->LinkFile(CheckpointPath(job.job_id(), done), best),
                           absl::StrCat("keeping round ", done, "'s model as the best")));
  const std::string former = job.best_round() > 0 ? BestPath(job.job_id(), job.best_round()) : "";
  job.set_best_round(done);
  job.set_best_score(score);
  Log(absl::StrFormat("job %s: the model after round %d is the best so far (%s %.4f)", job.job_id(),
                      done, selection.metric, score));
  return former;
}

absl::Status Coordinator::KeepFinalIfBest(const std::string& job_id) {
  ASSIGN_OR_RETURN(JobStatus job, GetJob(job_id));
  ASSIGN_OR_RETURN(std::string former, KeepIfBest(job, job.rounds_done()));
  if (job.best_round() != job.rounds_done()) return absl::OkStatus();  // not better
  RETURN_IF_ERROR(ChangeJob(job_id, [&](JobStatus& stored) {
                    stored.set_best_round(job.best_round());
                    stored.set_best_score(job.best_score());
                    return absl::OkStatus();
                  }).status());
  if (!former.empty()) env_->RemoveFile(former).IgnoreError();
  return absl::OkStatus();
}

}  // namespace fl
