// Every metric of fl-client, declared once on one registry (tests pass their own).
#pragma once

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

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
  prometheus::Gauge& images;                               // usable images (train + test)
  prometheus::Gauge& images_skipped;                       // files that could not be decoded
  prometheus::Family<prometheus::Gauge>& test_auroc;       // labels job, label (finding name)
  prometheus::Family<prometheus::Gauge>& privacy_epsilon;  // label job
  prometheus::Family<prometheus::Counter>& tls_reloads;    // label result: ok|refused
  // label file: cert | ca (the first of the bundle to expire); Unix seconds
  prometheus::Family<prometheus::Gauge>& tls_certificate_expiry;
  // Set before every scrape (client/main.cc) when the site has a cap (budget.max_epsilon > 0),
  // else 0: the cap, and what the dataset has spent over every job at the cap's delta
  prometheus::Gauge& privacy_budget_epsilon;
  prometheus::Gauge& privacy_spent_epsilon;
};

}  // namespace fl
