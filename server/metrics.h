// Every metric of fl-coordinator, declared once on one registry (tests pass their own).
// Names follow Prometheus conventions; label values never carry patient data.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "fl/federation.pb.h"

namespace fl {

struct CoordinatorMetrics {
  explicit CoordinatorMetrics(prometheus::Registry& registry);

  prometheus::Gauge& sites_connected;
  prometheus::Gauge& jobs_running;
  prometheus::Counter& rounds_completed;
  prometheus::Counter& rounds_failed;
  prometheus::Counter& storage_failures;  // alert on it: the disk is likely full
  prometheus::Histogram& round_duration;
  // label result: accepted | rejected (invalid or hostile) | failed (not stored: out of disk
  // space, write error) | stale (for a round that is not open: e.g. resent across a restart)
  prometheus::Family<prometheus::Counter>& updates;
  prometheus::Counter& update_bytes;
  prometheus::Counter& download_bytes;
  prometheus::Counter& declines;
  prometheus::Family<prometheus::Gauge>& site_epsilon;    // labels fl_job, site
  prometheus::Family<prometheus::Gauge>& job_mean_auroc;  // label fl_job
  // label result: accepted | rejected (invalid or hostile) | duplicate (a second report of the
  // same site and round, ignored) | stale (for a round that is not open)
  prometheus::Family<prometheus::Counter>& reports;
  // Sites' progress messages (Federation.Progress), label result: accepted | rejected (invalid
  // or hostile) | stale (for a round that is not open, or a task already finished)
  prometheus::Family<prometheus::Counter>& progress;
  prometheus::Family<prometheus::Counter>& tls_reloads;     // label result: ok|refused
  prometheus::Family<prometheus::Counter>& config_reloads;  // label result: ok|refused
  // label file: cert | ca (the first of the bundle to expire); Unix seconds
  prometheus::Family<prometheus::Gauge>& tls_certificate_expiry;

  // Mirrors of the core's state, set by RefreshStatus before every scrape (server/main.cc).
  prometheus::Family<prometheus::Gauge>& site_connected;  // label site: 1 with an open stream
  // label site: Unix time of the site's last sign of life (join, or its stream's keepalive
  // each second); the "site silent" alert (deploy/prometheus/) compares it with time()
  prometheus::Family<prometheus::Gauge>& site_last_seen;
  // Running jobs only (queued ones wait their turn), label fl_job (Prometheus keeps `job` for
  // the scrape job):
  prometheus::Family<prometheus::Gauge>& job_rounds_done;
  prometheus::Family<prometheus::Gauge>& job_rounds_planned;
  prometheus::Family<prometheus::Gauge>& job_round_deadline;  // the spec's, in seconds
  // Unix time at which this process last saw the job's rounds_done change, or first saw it
  // running (its start, or the coordinator's): a round open for much longer than its deadline
  // is stuck (a restart reopens the round, so restarting the clock then is right)
  prometheus::Family<prometheus::Gauge>& job_progress_time;
  // The median over sites of the test AUROC of the latest evaluated model (the last
  // RoundSummary with reports; a round's come with the next round's), labels fl_job and label
  // (the finding); the last committed round's sample-weighted training loss, label fl_job
  prometheus::Family<prometheus::Gauge>& job_auroc;
  prometheus::Family<prometheus::Gauge>& job_train_loss;

  // Sets the mirrors from the core's lists (Coordinator::ListSites, ListJobs) at time `now`
  // (Unix seconds); a job that ended loses its series. REQUIRES: one caller at a time.
  void RefreshStatus(const std::vector<SiteInfo>& sites, const std::vector<JobStatus>& jobs,
                     double now);

  prometheus::Counter& UpdateAccepted() { return updates.Add({{"result", "accepted"}}); }
  prometheus::Counter& UpdateRejected() { return updates.Add({{"result", "rejected"}}); }
  prometheus::Counter& UpdateFailed() { return updates.Add({{"result", "failed"}}); }
  prometheus::Counter& UpdateStale() { return updates.Add({{"result", "stale"}}); }
  prometheus::Counter& ReportsWith(const std::string& result) {
    return reports.Add({{"result", result}});
  }
  prometheus::Counter& ProgressWith(const std::string& result) {
    return progress.Add({{"result", result}});
  }

 private:
  struct Progress {
    uint32_t rounds_done = 0;
    double since = 0;
    std::vector<std::string> findings;  // job_auroc's label values set for the job
  };
  void RemoveJob(const std::string& job_id, const Progress& progress);
  std::map<std::string, Progress> progress_;  // by job id, running jobs
};

}  // namespace fl
