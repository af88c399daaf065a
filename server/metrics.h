// Every metric of fl-coordinator, declared once on one registry (tests pass their own).
// Names follow Prometheus conventions; label values never carry patient data.
#pragma once

#include <memory>
#include <string>

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

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
  prometheus::Family<prometheus::Gauge>& site_epsilon;    // labels job, site
  prometheus::Family<prometheus::Gauge>& job_mean_auroc;  // label job
  // label result: accepted | rejected (invalid or hostile) | duplicate (a second report of the
  // same site and round, ignored) | stale (for a round that is not open)
  prometheus::Family<prometheus::Counter>& reports;
  prometheus::Family<prometheus::Counter>& tls_reloads;     // label result: ok|refused
  prometheus::Family<prometheus::Counter>& config_reloads;  // label result: ok|refused

  prometheus::Counter& UpdateAccepted() { return updates.Add({{"result", "accepted"}}); }
  prometheus::Counter& UpdateRejected() { return updates.Add({{"result", "rejected"}}); }
  prometheus::Counter& UpdateFailed() { return updates.Add({{"result", "failed"}}); }
  prometheus::Counter& UpdateStale() { return updates.Add({{"result", "stale"}}); }
  prometheus::Counter& ReportsWith(const std::string& result) {
    return reports.Add({{"result", result}});
  }
};

}  // namespace fl
