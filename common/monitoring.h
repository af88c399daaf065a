// The daemons' plain-HTTP side, next to gRPC on `metrics_address`: Prometheus metrics and the
// health probes systemd, load balancers and Kubernetes ask (deploy/). Nothing here carries
// patient data; the address is meant for loopback or the operator's monitoring network.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <prometheus/registry.h>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

class CivetServer;

namespace fl {

// One condition a daemon needs to do its work: OK, or a status that says what is missing.
// Called from the server's threads at every /readyz request, so it must be thread-safe and
// quick (a stat, a one-row SQLite read).
using ReadinessCheck = std::function<absl::Status()>;

class MonitoringServer {
 public:
  // Serves on `address` (host:port; port 0 picks a free one):
  //   GET /metrics  `registry` in Prometheus text format 0.0.4, after every scrape hook ran
  //   GET /healthz  200 "ok": the process is up and answers (liveness; restart when it fails)
  //   GET /readyz   200 "ready" when every readiness check passes, else 503 with one line per
  //                 failing check, "NAME: message" (readiness; send no work while it fails).
  //                 With no check registered the daemon is not ready ("starting").
  // Anything else is 404. UNAVAILABLE when the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<MonitoringServer>> Start(
      const std::string& address, std::shared_ptr<prometheus::Registry> registry);
  ~MonitoringServer();
  MonitoringServer(const MonitoringServer&) = delete;
  MonitoringServer& operator=(const MonitoringServer&) = delete;

  // Adds a check run at every /readyz request, in the order added.
  void AddReadinessCheck(std::string name, ReadinessCheck check);
  // Adds a function run before every /metrics answer (one scrape at a time): it sets the
  // gauges that mirror state kept elsewhere (sites, jobs, the privacy ledger).
  void AddScrapeHook(std::function<void()> hook);

  // The bound ports (the real one when the address asked for port 0).
  std::vector<int> ports() const { return ports_; }

  // What /readyz answers: 200 or 503, and the body.
  std::pair<int, std::string> Readiness() const;
  // What /metrics answers: the registry's text after the scrape hooks.
  std::string Scrape();

 private:
  class Handler;
  explicit MonitoringServer(std::shared_ptr<prometheus::Registry> registry);

  const std::shared_ptr<prometheus::Registry> registry_;
  mutable absl::Mutex mu_;
  std::vector<std::pair<std::string, ReadinessCheck>> checks_ ABSL_GUARDED_BY(mu_);
  absl::Mutex scrape_mu_;  // one scrape at a time: hooks set shared gauges
  std::vector<std::function<void()>> hooks_ ABSL_GUARDED_BY(mu_);
  std::vector<std::unique_ptr<Handler>> handlers_;
  std::unique_ptr<CivetServer> server_;  // after the handlers: stopped before they go
  std::vector<int> ports_;
};

}  // namespace fl
