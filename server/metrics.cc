#include "server/metrics.h"

#include <algorithm>

namespace fl {

using prometheus::BuildCounter;
using prometheus::BuildGauge;
using prometheus::BuildHistogram;

CoordinatorMetrics::CoordinatorMetrics(prometheus::Registry& r)
    : sites_connected(BuildGauge()
                          .Name("fl_coordinator_sites_connected")
                          .Help("Sites with an open task stream")
                          .Register(r)
                          .Add({})),
      jobs_running(BuildGauge()
                       .Name("fl_coordinator_jobs_running")
                       .Help("Jobs running")
                       .Register(r)
                       .Add({})),
      rounds_completed(BuildCounter()
                           .Name("fl_coordinator_rounds_completed_total")
                           .Help("Rounds aggregated and committed")
                           .Register(r)
                           .Add({})),
      rounds_failed(BuildCounter()
                        .Name("fl_coordinator_rounds_failed_total")
                        .Help("Round attempts that failed (no quorum, or not stored)")
                        .Register(r)
                        .Add({})),
      storage_failures(BuildCounter()
                           .Name("fl_coordinator_storage_failures_total")
                           .Help("Writes to state_dir that failed (out of disk space, I/O "
                                 "error): spooled updates, round commits, job changes")
                           .Register(r)
                           .Add({})),
      round_duration(BuildHistogram()
                         .Name("fl_coordinator_round_duration_seconds")
                         .Help("Wall time from opening a round to committing it")
                         .Register(r)
                         .Add({}, prometheus::Histogram::BucketBoundaries{1, 5, 15, 30, 60, 120,
                                                                          300, 600, 1800, 3600})),
      updates(BuildCounter()
                  .Name("fl_coordinator_updates_total")
                  .Help("Uploaded updates by result: accepted, rejected (invalid or hostile), "
                        "failed (not stored: out of disk space or a write error), stale (for a "
                        "round that is not open, e.g. resent across a coordinator restart)")
                  .Register(r)),
      update_bytes(BuildCounter()
                       .Name("fl_coordinator_update_bytes_total")
                       .Help("Tensor bytes received in updates")
                       .Register(r)
                       .Add({})),
      download_bytes(BuildCounter()
                         .Name("fl_coordinator_download_bytes_total")
                         .Help("Tensor bytes of global models sent to sites")
                         .Register(r)
                         .Add({})),
      declines(BuildCounter()
                   .Name("fl_coordinator_task_declines_total")
                   .Help("Tasks declined by sites (e.g. privacy budget)")
                   .Register(r)
                   .Add({})),
      site_epsilon(BuildGauge()
                       .Name("fl_coordinator_site_privacy_epsilon")
                       .Help("Privacy spent (epsilon) a site reported for a job")
                       .Register(r)),
      job_mean_auroc(BuildGauge()
                         .Name("fl_coordinator_job_mean_auroc")
                         .Help("Mean over findings of the median over sites of the test AUROC "
                               "of the job's latest evaluated global model")
                         .Register(r)),
      reports(BuildCounter()
                  .Name("fl_coordinator_reports_total")
                  .Help("Evaluation reports by result: accepted, rejected (invalid or hostile), "
                        "duplicate (ignored), stale (round not open)")
                  .Register(r)),
      progress(BuildCounter()
                   .Name("fl_coordinator_progress_total")
                   .Help("Sites' task progress messages by result: accepted, rejected (invalid "
                         "or hostile), stale (round not open or task finished)")
                   .Register(r)),
      tls_reloads(
          BuildCounter()
              .Name("fl_coordinator_tls_reloads_total")
              .Help("Changed TLS files picked up (ok) or refused, keeping the last good set")
              .Register(r)),
      config_reloads(BuildCounter()
                         .Name("fl_coordinator_config_reloads_total")
                         .Help("Changed config files whose revocation list was applied (ok) or "
                               "refused")
                         .Register(r)),
      tls_certificate_expiry(
          BuildGauge()
              .Name("fl_coordinator_tls_certificate_expiry_timestamp_seconds")
              .Help("When the TLS certificate in use (file=cert) and the first certificate of "
                    "its CA bundle (file=ca) expire, Unix time")
              .Register(r)),
      site_connected(BuildGauge()
                         .Name("fl_coordinator_site_connected")
                         .Help("1 while the site holds an open task stream, else 0")
                         .Register(r)),
      site_last_seen(BuildGauge()
                         .Name("fl_coordinator_site_last_seen_timestamp_seconds")
                         .Help("Last sign of life of the site (join, or a keepalive of its task "
                               "stream), Unix time")
                         .Register(r)),
      job_rounds_done(BuildGauge()
                          .Name("fl_coordinator_job_rounds_done")
                          .Help("Rounds committed of a running job")
                          .Register(r)),
      job_rounds_planned(BuildGauge()
                             .Name("fl_coordinator_job_rounds_planned")
                             .Help("Rounds a running job will run at most (its spec)")
                             .Register(r)),
      job_round_deadline(BuildGauge()
                             .Name("fl_coordinator_job_round_deadline_seconds")
                             .Help("A running job's round deadline (its spec)")
                             .Register(r)),
      job_progress_time(BuildGauge()
                            .Name("fl_coordinator_job_progress_timestamp_seconds")
                            .Help("When this coordinator last saw a running job commit a round, "
                                  "or first saw it running, Unix time")
                            .Register(r)),
      job_auroc(BuildGauge()
                    .Name("fl_coordinator_job_auroc")
                    .Help("Median over sites of the test AUROC per finding (label) of the latest "
                          "evaluated model of a running job")
                    .Register(r)),
      job_train_loss(BuildGauge()
                         .Name("fl_coordinator_job_train_loss")
                         .Help("Sample-weighted training loss of the last committed round of a "
                               "running job")
                         .Register(r)) {
  // Every result at 0 from the start: increase() and rate() see a series' first increment
  // only when the series existed before it (the alerts of deploy/prometheus/ rely on it).
  for (const char* result : {"accepted", "rejected", "failed", "stale"}) {
    updates.Add({{"result", result}});
  }
  for (const char* result : {"accepted", "rejected", "duplicate", "stale"}) {
    reports.Add({{"result", result}});
  }
  for (const char* result : {"accepted", "rejected", "stale"}) progress.Add({{"result", result}});
  for (const char* result : {"ok", "refused"}) {
    tls_reloads.Add({{"result", result}});
    config_reloads.Add({{"result", result}});
  }
}

void CoordinatorMetrics::RemoveJob(const std::string& job_id, const Progress& progress) {
  const prometheus::Labels labels{{"fl_job", job_id}};
  for (auto* family : {&job_rounds_done, &job_rounds_planned, &job_round_deadline,
                       &job_progress_time, &job_train_loss}) {
    family->Remove(&family->Add(labels));
  }
  for (const std::string& finding : progress.findings) {
    job_auroc.Remove(&job_auroc.Add({{"fl_job", job_id}, {"label", finding}}));
  }
}

void CoordinatorMetrics::RefreshStatus(const std::vector<SiteInfo>& sites,
                                       const std::vector<JobStatus>& jobs, double now) {
  for (const SiteInfo& site : sites) {
    site_connected.Add({{"site", site.name()}}).Set(site.connected() ? 1 : 0);
    site_last_seen.Add({{"site", site.name()}}).Set(site.last_seen_unix_seconds());
  }
  std::map<std::string, Progress> running;
  for (const JobStatus& job : jobs) {
    if (job.state() != RUNNING) continue;
    auto known = progress_.find(job.job_id());
    Progress progress{job.rounds_done(), now, {}};
    if (known != progress_.end()) {
      progress.findings = known->second.findings;
      if (known->second.rounds_done == job.rounds_done()) progress.since = known->second.since;
    }
    const prometheus::Labels labels{{"fl_job", job.job_id()}};
    job_rounds_done.Add(labels).Set(job.rounds_done());
    job_rounds_planned.Add(labels).Set(job.spec().rounds());
    job_round_deadline.Add(labels).Set(job.spec().round_deadline_seconds());
    job_progress_time.Add(labels).Set(progress.since);
    if (job.rounds_size() > 0 && job.rounds(job.rounds_size() - 1).has_train_loss()) {
      job_train_loss.Add(labels).Set(job.rounds(job.rounds_size() - 1).train_loss());
    }
    // A round's AUROCs arrive with the next round's reports (they evaluate the model it made):
    // the latest round that has them.
    for (int r = job.rounds_size() - 1; r >= 0; --r) {
      if (job.rounds(r).test().empty()) continue;
      for (const LabelMetric& finding : job.rounds(r).test()) {
        job_auroc.Add({{"fl_job", job.job_id()}, {"label", finding.label()}}).Set(finding.auroc());
        if (std::find(progress.findings.begin(), progress.findings.end(), finding.label()) ==
            progress.findings.end()) {
          progress.findings.push_back(finding.label());
        }
      }
      break;
    }
    running[job.job_id()] = std::move(progress);
  }
  for (const auto& [job_id, progress] : progress_) {
    if (running.count(job_id) == 0) RemoveJob(job_id, progress);
  }
  progress_ = std::move(running);
}

}  // namespace fl
