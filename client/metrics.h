// Every metric of fl-client, declared once on one registry (tests pass their own).
#pragma once

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <string>

#include "client/pacs.h"

namespace fl {

struct ClientMetrics {
  explicit ClientMetrics(prometheus::Registry& registry);

  prometheus::Gauge& connected;
  prometheus::Family<prometheus::Counter>& tasks;  // label result: done|declined|failed
  prometheus::Counter& reconnects;
  // Calls sent again after a transient failure; label rpc: upload|report
  prometheus::Family<prometheus::Counter>& send_retries;
  prometheus::Histogram& train_duration;
  prometheus::Counter& upload_bytes;
  prometheus::Counter& download_bytes;
  prometheus::Gauge& images;  // usable images (train + test)
  // Files (or CSV rows) the data source skipped when it listed the data; label reason:
  // unreadable | missing_file | duplicate | bad_row (SkipKind, client/dataset.h)
  prometheus::Family<prometheus::Gauge>& images_skipped;
  prometheus::Family<prometheus::Gauge>& test_auroc;       // labels fl_job, label (finding name)
  prometheus::Family<prometheus::Gauge>& privacy_epsilon;  // label fl_job
  prometheus::Family<prometheus::Counter>& tls_reloads;    // label result: ok|refused
  // label file: cert | ca (the first of the bundle to expire); Unix seconds
  prometheus::Family<prometheus::Gauge>& tls_certificate_expiry;
  // Set before every scrape (client/main.cc) when the site has a cap (budget.max_epsilon > 0),
  // else 0: the cap, and what the dataset has spent over every job at the cap's delta
  prometheus::Gauge& privacy_budget_epsilon;
  prometheus::Gauge& privacy_spent_epsilon;
  // The current task: label phase (idle, downloading, evaluating, training, uploading), 1 for
  // the phase the site is in and 0 for the others (SetTaskPhase)
  prometheus::Family<prometheus::Gauge>& task_phase;
  // Local training of the current (or last) task: steps done of the round's total, and the
  // images per second trained so far
  prometheus::Gauge& train_steps_done;
  prometheus::Gauge& train_steps_total;
  prometheus::Gauge& train_images_per_second;
  // The data scan at start: files looked at so far of those found (equal once it is done)
  prometheus::Gauge& data_scan_files_done;
  prometheus::Gauge& data_scan_files;

  // The PACS sync at start (a pacs source only; no series otherwise): instances of that sync by
  // result (fetched, already_cached, rejected, failed), the bytes it fetched, the instances in
  // the cache after it, 1 if it succeeded (0: the daemon went on with the cache), and when it
  // ended (Unix seconds)
  prometheus::Family<prometheus::Gauge>& pacs_sync_instances;
  prometheus::Family<prometheus::Gauge>& pacs_sync_fetched_bytes;
  prometheus::Family<prometheus::Gauge>& pacs_cached_instances;
  prometheus::Family<prometheus::Gauge>& pacs_sync_success;
  prometheus::Family<prometheus::Gauge>& pacs_sync_timestamp;

  // Sets task_phase: 1 for `phase` (one of the labels above), 0 for the others.
  void SetTaskPhase(const std::string& phase);
  // Sets the pacs_* gauges from the sync at start, which ended at `unix_seconds`.
  void ExportPacsSync(const PacsSyncOutcome& outcome, double unix_seconds);
};

}  // namespace fl
