#include "tools/job_watch.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"

namespace fl {

const char* JobStateName(JobState state) {
  switch (state) {
    case QUEUED:
      return "queued";
    case RUNNING:
      return "running";
    case DONE:
      return "done";
    case FAILED:
      return "failed";
    case CANCELLED:
      return "cancelled";
    default:
      return "unknown";
  }
}

namespace {

std::string Duration(double seconds) {
  const int64_t s = static_cast<int64_t>(std::max(0.0, std::round(seconds)));
  if (s < 60) return absl::StrCat(s, " s");
  if (s < 3600) return absl::StrFormat("%d min %02d s", s / 60, s % 60);
  return absl::StrFormat("%d h %02d min", s / 3600, (s % 3600) / 60);
}

std::string Headline(const JobStatus& job, std::optional<double> seconds_per_round) {
  const uint32_t planned = job.spec().rounds();
  std::string line = absl::StrFormat("job %s: %s, %d of %d rounds committed", job.job_id(),
                                     JobStateName(job.state()), job.rounds_done(), planned);
  if (job.state() == RUNNING && job.rounds_done() < planned) {
    absl::StrAppend(&line, absl::StrFormat(", round %d open (deadline %d s)", job.rounds_done(),
                                           job.spec().round_deadline_seconds()));
    absl::StrAppend(
        &line,
        seconds_per_round
            ? absl::StrCat(", about ", Duration(*seconds_per_round * (planned - job.rounds_done())),
                           " left at ", Duration(*seconds_per_round), " per round")
            : ", time left known after two rounds");
  }
  if (!job.message().empty()) absl::StrAppend(&line, "\n  ", job.message());
  return line + "\n";
}

std::string Findings(const JobStatus& job) {
  for (int r = job.rounds_size() - 1; r >= 0; --r) {
    const RoundSummary& round = job.rounds(r);
    if (round.test().empty()) continue;
    std::vector<std::string> findings;
    for (const LabelMetric& m : round.test()) {
      findings.push_back(absl::StrFormat("%s %.3f", m.label(), m.auroc()));
    }
    return absl::StrFormat("  AUROC, median over sites, of the model after round %d: %s\n",
                           round.round(), absl::StrJoin(findings, ", "));
  }
  return "  AUROC: no evaluated model yet\n";
}

// A phase as the screen says it: its name in lower case, two of them spelt out.
std::string PhaseName(TaskPhase phase) {
  if (phase == TASK_PHASE_ASSIGNED) return "assigned, waiting";
  if (phase == TASK_PHASE_REPORTED) return "evaluated, reported";
  const std::string name =
      absl::AsciiStrToLower(absl::StripPrefix(TaskPhase_Name(phase), "TASK_PHASE_"));
  return name.empty() ? "unknown" : name;
}

}  // namespace

std::string SiteTaskText(const SiteTask& task, double now) {
  std::string text = PhaseName(task.phase());
  if (task.phase() == TASK_PHASE_DECLINED) return absl::StrCat(text, ": ", task.reason());
  if (task.phase() == TASK_PHASE_TRAINING && task.steps_total() > 0) {
    absl::StrAppend(&text, " ", task.steps_done(), "/", task.steps_total(), " steps");
    if (task.images_per_second() > 0) {
      absl::StrAppend(&text, absl::StrFormat(", %.0f img/s", task.images_per_second()));
    }
  }
  if (task.since_unix_seconds() > 0) {
    absl::StrAppend(&text, " (for ", Duration(now - task.since_unix_seconds()), ")");
  }
  return text;
}

void RoundClock::Observe(uint32_t rounds_done, double now) {
  if (!first_rounds_) {
    first_rounds_ = last_rounds_ = rounds_done;
    first_time_ = last_time_ = now;
    return;
  }
  if (rounds_done == last_rounds_) return;
  if (!seen_commit_) {
    // The first change seen: the clock starts at a commit, not when the watcher started.
    seen_commit_ = true;
    first_rounds_ = rounds_done;
    first_time_ = now;
  }
  last_rounds_ = rounds_done;
  last_time_ = now;
}

std::optional<double> RoundClock::SecondsPerRound() const {
  if (!first_rounds_ || last_rounds_ <= *first_rounds_) return std::nullopt;
  return (last_time_ - first_time_) / (last_rounds_ - *first_rounds_);
}

std::string WatchFrame(const JobStatus& job, const std::vector<SiteInfo>& sites, double now,
                       std::optional<double> seconds_per_round) {
  std::string out = Headline(job, seconds_per_round) + Findings(job);
  std::set<std::string> aggregated;
  std::map<std::string, std::string> declined;
  if (job.rounds_size() > 0) {
    const RoundSummary& last = job.rounds(job.rounds_size() - 1);
    aggregated.insert(last.sites().begin(), last.sites().end());
    for (const std::string& d : last.declined()) {
      const size_t colon = d.find(": ");
      if (colon != std::string::npos) declined[d.substr(0, colon)] = d.substr(colon + 2);
    }
  }
  std::map<std::string, double> epsilon;
  for (const SiteReport& s : job.sites()) epsilon[s.site()] = s.privacy().epsilon();
  // The open round's column only while there is one (a job that ended has none).
  std::map<std::string, std::string> task;
  for (const SiteTask& t : job.current()) task[t.site()] = SiteTaskText(t, now);
  auto row = [&](const std::string& site, const std::string& stream, const std::string& eps,
                 const std::string& now_doing, const std::string& part) {
    return task.empty() ? absl::StrFormat("  %-16s %-28s %-9s %s\n", site, stream, eps, part)
                        : absl::StrFormat("  %-16s %-28s %-9s %-52s %s\n", site, stream, eps,
                                          now_doing, part);
  };
  absl::StrAppend(&out, row("site", "stream", "epsilon", "this round", "last committed round"));
  for (const SiteInfo& site : sites) {
    const std::string stream =
        site.connected()
            ? "connected"
            : absl::StrCat("offline, seen ", Duration(now - site.last_seen_unix_seconds()), " ago");
    const std::string eps = epsilon.count(site.name()) != 0 && epsilon[site.name()] > 0
                                ? absl::StrFormat("%.3f", epsilon[site.name()])
                                : "-";
    std::string part = "-";
    if (aggregated.count(site.name()) != 0) part = "aggregated";
    if (declined.count(site.name()) != 0) part = "declined: " + declined[site.name()];
    const std::string now_doing = task.count(site.name()) != 0 ? task[site.name()] : "-";
    absl::StrAppend(&out, row(site.name(), stream, eps, now_doing, part));
  }
  return out;
}

}  // namespace fl
