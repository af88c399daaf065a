// `flctl job watch`: what one screen of the live view shows, from the Admin API's job status and
// site list. Plain text that fits a terminal over SSH; the command redraws it.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "fl/federation.pb.h"

namespace fl {

// Seconds per round as the watcher saw them: it notes when rounds_done changes.
class RoundClock {
 public:
  // Notes `rounds_done` at time `now` (seconds).
  void Observe(uint32_t rounds_done, double now);
  // Mean seconds per round over the rounds seen committing; nullopt before two commits.
  std::optional<double> SecondsPerRound() const;

 private:
  bool seen_commit_ = false;
  std::optional<uint32_t> first_rounds_;
  double first_time_ = 0;
  uint32_t last_rounds_ = 0;
  double last_time_ = 0;
};

// "queued", "running", "done", "failed", "cancelled" ("unknown" otherwise).
const char* JobStateName(JobState state);

// A site's task in the open round, as one short phrase with how long it has been in it:
// "training 12/30 steps, 35 img/s (for 40 s)", "uploading (for 2 s)", "declined: <reason>".
std::string SiteTaskText(const SiteTask& task, double now);

// The screen: the job's state and round with an estimate of the time left; the median AUROC
// per finding of the latest evaluated model; one line per site: its stream (connected or not,
// seconds since its last sign of life), its task in the open round (SiteTaskText), its part in
// the last committed round (aggregated, or declined with the reason) and the epsilon it
// reported for this job. `now` in Unix seconds.
std::string WatchFrame(const JobStatus& job, const std::vector<SiteInfo>& sites, double now,
                       std::optional<double> seconds_per_round);

}  // namespace fl
