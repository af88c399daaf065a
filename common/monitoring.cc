#include "common/monitoring.h"

#include <CivetServer.h>
#include <prometheus/text_serializer.h>

#include <exception>
#include <thread>

#include "absl/strings/str_cat.h"

namespace fl {

// One path's answer. civetweb calls it from its worker threads.
class MonitoringServer::Handler : public CivetHandler {
 public:
  using Answer = std::function<std::pair<int, std::string>()>;
  Handler(std::string content_type, Answer answer)
      : content_type_(std::move(content_type)), answer_(std::move(answer)) {}

  bool handleGet(CivetServer*, mg_connection* conn) override {
    // civetweb's workers run on small stacks (their size is fixed when civetweb is built), and
    // an answer reads files, SQLite and certificates (ReadFileToString alone takes 64 KiB of
    // stack): it is computed on a thread with the default stack.
    std::pair<int, std::string> answer;
    std::thread([this, &answer] { answer = answer_(); }).join();
    auto& [code, body] = answer;
    mg_printf(conn,
              "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
              "Cache-Control: no-store\r\nConnection: close\r\n\r\n",
              code, code == 200 ? "OK" : "Service Unavailable", content_type_.c_str(), body.size());
    mg_write(conn, body.data(), body.size());
    return true;
  }

 private:
  const std::string content_type_;
  const Answer answer_;
};

MonitoringServer::MonitoringServer(std::shared_ptr<prometheus::Registry> registry)
    : registry_(std::move(registry)) {}

MonitoringServer::~MonitoringServer() { server_.reset(); }

absl::StatusOr<std::unique_ptr<MonitoringServer>> MonitoringServer::Start(
    const std::string& address, std::shared_ptr<prometheus::Registry> registry) {
  std::unique_ptr<MonitoringServer> out(new MonitoringServer(std::move(registry)));
  MonitoringServer* self = out.get();
  const std::string text = "text/plain; charset=utf-8";
  // "$": the path exactly, not its subpaths.
  std::vector<std::pair<std::string, std::unique_ptr<Handler>>> routes;
  routes.emplace_back("/metrics$",
                      std::make_unique<Handler>("text/plain; version=0.0.4; charset=utf-8", [self] {
                        return std::make_pair(200, self->Scrape());
                      }));
  routes.emplace_back("/healthz$", std::make_unique<Handler>(text, [] {
                        return std::make_pair(200, std::string("ok\n"));
                      }));
  routes.emplace_back("/readyz$",
                      std::make_unique<Handler>(text, [self] { return self->Readiness(); }));
  try {
    // Four threads: a readiness check may wait briefly on a lock (a SQLite commit) while
    // Prometheus scrapes.
    out->server_ = std::make_unique<CivetServer>(std::vector<std::string>{
        "listening_ports", address, "num_threads", "4", "request_timeout_ms", "10000"});
  } catch (const std::exception& e) {
    return absl::UnavailableError(
        absl::StrCat("cannot serve metrics and health probes on ", address, ": ", e.what()));
  }
  for (auto& [path, handler] : routes) {
    out->server_->addHandler(path, handler.get());
    out->handlers_.push_back(std::move(handler));
  }
  out->ports_ = out->server_->getListeningPorts();
  return out;
}

void MonitoringServer::AddReadinessCheck(std::string name, ReadinessCheck check) {
  absl::MutexLock lock(&mu_);
  checks_.emplace_back(std::move(name), std::move(check));
}

void MonitoringServer::AddScrapeHook(std::function<void()> hook) {
  absl::MutexLock lock(&mu_);
  hooks_.push_back(std::move(hook));
}

std::pair<int, std::string> MonitoringServer::Readiness() const {
  std::vector<std::pair<std::string, ReadinessCheck>> checks;
  {
    absl::MutexLock lock(&mu_);
    checks = checks_;
  }
  if (checks.empty()) return {503, "starting\n"};
  std::string failures;
  for (const auto& [name, check] : checks) {
    absl::Status status = check();
    if (!status.ok()) absl::StrAppend(&failures, name, ": ", status.message(), "\n");
  }
  if (failures.empty()) return {200, "ready\n"};
  return {503, failures};
}

std::string MonitoringServer::Scrape() {
  absl::MutexLock scrape(&scrape_mu_);
  std::vector<std::function<void()>> hooks;
  {
    absl::MutexLock lock(&mu_);
    hooks = hooks_;
  }
  for (const auto& hook : hooks) hook();
  return prometheus::TextSerializer().Serialize(registry_->Collect());
}

}  // namespace fl
