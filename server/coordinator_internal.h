// Shared by the coordinator's source files (coordinator.cc: lifecycle and admin calls,
// coordinator_sites.cc: the sites' calls, coordinator_rounds.cc: the scheduler). Not an API.
#pragma once

#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/cord.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/log.h"
#include "models/spec.h"
#include "server/coordinator.h"
#include "server/robust_aggregator.h"

namespace fl {

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
  // Per assigned site, its task's phase and progress (JobStatus.current): one entry each.
  std::map<std::string, SiteTask> tasks;
  double loss_sum = 0;
  double loss_weight = 0;  // weights of the updates that reported a loss
  bool poisoned = false;   // the aggregate holds part of an update; never apply it
  UpdateLayout layout;
  std::unique_ptr<Aggregator> aggregator;  // weighted mean only; folded as updates arrive
  std::vector<SpooledUpdate> spooled;      // robust rules only; combined when the round closes
  absl::Time opened;
};

namespace coordinator_internal {

inline void Log(const std::string& line) { LogLine("fl-coordinator", line); }

// Wall time as Unix seconds, for what the coordinator shows (last seen, a task's phase since).
inline double NowUnixSeconds() { return absl::ToDoubleSeconds(absl::Now() - absl::UnixEpoch()); }

// Marks a failure of this side's storage (a file under state_dir, or the store), whatever its
// code: a round that fails with it is tried again without spending the job's attempts.
constexpr char kStorageFailure[] = "fl/storage-failure";

inline absl::Status MarkedStorageFailure(absl::Status status) {
  status.SetPayload(kStorageFailure, absl::Cord("1"));
  return status;
}

inline bool IsStorageFailure(const absl::Status& status) {
  return status.GetPayload(kStorageFailure).has_value();
}

inline bool Terminal(JobState state) {
  return state == DONE || state == FAILED || state == CANCELLED;
}

// Model selection (coordinator_selection.cc). The score of a round's pooled validation figures
// (NaN when the round has none).
double SelectionScore(const Selection& selection, const RoundSummary& summary);
// Whether `score` beats the job's best by more than its early_stopping.min_delta (any score
// does when there is no best yet; NaN never does).
bool Improves(const Selection& selection, double score, const JobStatus& job);
// Whether, with the model after `done` rounds evaluated, patience_rounds models have passed
// since the best one without a gain.
bool PatienceSpent(const JobStatus& job, uint32_t done);

}  // namespace coordinator_internal
}  // namespace fl
