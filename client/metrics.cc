#include "client/metrics.h"

namespace fl {

using prometheus::BuildCounter;
using prometheus::BuildGauge;
using prometheus::BuildHistogram;

ClientMetrics::ClientMetrics(prometheus::Registry& r)
    : connected(BuildGauge()
                    .Name("fl_client_connected")
                    .Help("1 while the task stream to the coordinator is open")
                    .Register(r)
                    .Add({})),
      tasks(BuildCounter()
                .Name("fl_client_tasks_total")
                .Help("Tasks by result (done, declined, failed)")
                .Register(r)),
      reconnects(BuildCounter()
                     .Name("fl_client_reconnects_total")
                     .Help("Connection attempts after a failure")
                     .Register(r)
                     .Add({})),
      send_retries(BuildCounter()
                       .Name("fl_client_send_retries_total")
                       .Help("Updates (rpc upload) and final evaluation reports (rpc report) "
                             "sent again after a transient failure, within the round's deadline")
                       .Register(r)),
      train_duration(BuildHistogram()
                         .Name("fl_client_train_duration_seconds")
                         .Help("Local training time per task")
                         .Register(r)
                         .Add({}, prometheus::Histogram::BucketBoundaries{0.5, 1, 2, 5, 10, 30, 60,
                                                                          120, 300, 600, 1800})),
      upload_bytes(BuildCounter()
                       .Name("fl_client_upload_bytes_total")
                       .Help("Tensor bytes of updates sent")
                       .Register(r)
                       .Add({})),
      download_bytes(BuildCounter()
                         .Name("fl_client_download_bytes_total")
                         .Help("Tensor bytes of global models received")
                         .Register(r)
                         .Add({})),
      images(BuildGauge()
                 .Name("fl_client_images")
                 .Help("Usable labelled images in the local dataset")
                 .Register(r)
                 .Add({})),
      images_skipped(BuildGauge()
                         .Name("fl_client_images_skipped")
                         .Help("Files or labels-CSV rows the data source skipped at listing, by "
                               "reason (unreadable, missing_file, duplicate, bad_row)")
                         .Register(r)),
      test_auroc(BuildGauge()
                     .Name("fl_client_test_auroc")
                     .Help("AUROC of the latest global model on the local test split")
                     .Register(r)),
      privacy_epsilon(BuildGauge()
                          .Name("fl_client_privacy_epsilon")
                          .Help("Privacy spent (epsilon at the job's delta) recorded for a job")
                          .Register(r)),
      tls_reloads(
          BuildCounter()
              .Name("fl_client_tls_reloads_total")
              .Help("Changed TLS files picked up (ok) or refused, keeping the last good set")
              .Register(r)),
      tls_certificate_expiry(
          BuildGauge()
              .Name("fl_client_tls_certificate_expiry_timestamp_seconds")
              .Help("When the TLS certificate in use (file=cert) and the first certificate of "
                    "its CA bundle (file=ca) expire, Unix time")
              .Register(r)),
      privacy_budget_epsilon(BuildGauge()
                                 .Name("fl_client_privacy_budget_epsilon")
                                 .Help("The site's privacy cap: the most epsilon its dataset may "
                                       "spend over every job; 0: no cap")
                                 .Register(r)
                                 .Add({})),
      privacy_spent_epsilon(BuildGauge()
                                .Name("fl_client_privacy_spent_epsilon")
                                .Help("Epsilon the dataset has spent over every job, at the "
                                      "cap's delta (0 when no cap is set)")
                                .Register(r)
                                .Add({})),
      task_phase(BuildGauge()
                     .Name("fl_client_task_phase")
                     .Help("1 for the phase of the current task the site is in (idle, "
                           "downloading, evaluating, training, uploading), 0 for the others")
                     .Register(r)),
      train_steps_done(BuildGauge()
                           .Name("fl_client_train_steps_done")
                           .Help("Local steps done in the current (or last) training")
                           .Register(r)
                           .Add({})),
      train_steps_total(BuildGauge()
                            .Name("fl_client_train_steps")
                            .Help("Local steps of the current (or last) training")
                            .Register(r)
                            .Add({})),
      train_images_per_second(BuildGauge()
                                  .Name("fl_client_train_images_per_second")
                                  .Help("Images per second of the current (or last) training")
                                  .Register(r)
                                  .Add({})),
      data_scan_files_done(BuildGauge()
                               .Name("fl_client_data_scan_files_done")
                               .Help("Files of the data folder looked at by the scan at start")
                               .Register(r)
                               .Add({})),
      data_scan_files(BuildGauge()
                          .Name("fl_client_data_scan_files")
                          .Help("Files the scan at start found to look at")
                          .Register(r)
                          .Add({})),
      pacs_sync_instances(BuildGauge()
                              .Name("fl_client_pacs_sync_instances")
                              .Help("Instances of the PACS sync at start, by result (fetched, "
                                    "already_cached, rejected, failed)")
                              .Register(r)),
      pacs_sync_fetched_bytes(BuildGauge()
                                  .Name("fl_client_pacs_sync_fetched_bytes")
                                  .Help("Bytes the PACS sync at start fetched")
                                  .Register(r)),
      pacs_cached_instances(BuildGauge()
                                .Name("fl_client_pacs_cached_instances")
                                .Help("Instances in the PACS cache after the sync at start")
                                .Register(r)),
      pacs_sync_success(BuildGauge()
                            .Name("fl_client_pacs_sync_success")
                            .Help("1 if the PACS sync at start succeeded, 0 if the daemon went "
                                  "on with the cache")
                            .Register(r)),
      pacs_sync_timestamp(BuildGauge()
                              .Name("fl_client_pacs_sync_timestamp_seconds")
                              .Help("When the PACS sync at start ended (Unix time)")
                              .Register(r)) {
  // Every result at 0 from the start: increase() sees a series' first increment only when the
  // series existed before it (the alerts of deploy/prometheus/ rely on it).
  for (const char* result : {"done", "declined", "failed"}) tasks.Add({{"result", result}});
  for (const char* rpc : {"upload", "report"}) send_retries.Add({{"rpc", rpc}});
  for (const char* result : {"ok", "refused"}) tls_reloads.Add({{"result", result}});
  SetTaskPhase("idle");
}

void ClientMetrics::ExportPacsSync(const PacsSyncOutcome& outcome, double unix_seconds) {
  const PacsSyncReport& r = outcome.report;
  for (const auto& [result, count] : {std::pair<const char*, int>{"fetched", r.fetched},
                                      {"already_cached", r.already_cached},
                                      {"rejected", r.rejected},
                                      {"failed", r.failed}}) {
    pacs_sync_instances.Add({{"result", result}}).Set(count);
  }
  pacs_sync_fetched_bytes.Add({}).Set(static_cast<double>(r.fetched_bytes));
  pacs_cached_instances.Add({}).Set(outcome.cached);
  pacs_sync_success.Add({}).Set(outcome.sync.ok() ? 1 : 0);
  pacs_sync_timestamp.Add({}).Set(unix_seconds);
}

void ClientMetrics::SetTaskPhase(const std::string& phase) {
  for (const char* p : {"idle", "downloading", "evaluating", "training", "uploading"}) {
    task_phase.Add({{"phase", p}}).Set(phase == p ? 1 : 0);
  }
}

}  // namespace fl
