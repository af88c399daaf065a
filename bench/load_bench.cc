// fl-bench load: one real fl-coordinator (a child process) and N lightweight simulated sites
// in this process (bench/load_client.h), each over its own mutual-TLS channel with its own
// certificate, running a whole job of R rounds. Reports round time, the coordinator's peak
// memory growth against the model size, and control-RPC latency percentiles.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <google/protobuf/text_format.h>
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "bench/bench_util.h"
#include "bench/benches.h"
#include "bench/load_client.h"
#include "common/file_util.h"
#include "common/transport/grpc_status.h"
#include "common/status.h"
#include "common/transport/tls.h"
#include "common/x509.h"
#include "fl/federation.grpc.pb.h"
#include "models/model.h"

extern char** environ;

namespace fl::bench {
namespace {

namespace fs = std::filesystem;

constexpr char kServerName[] = "coordinator";
struct LoadOptions {
  int64_t clients = 200, rounds = 3, labels = 8;
  std::string model = "mediumcnn";    // about 1M parameters
  std::string fit_model = "resnet9";  // about 6.6M parameters; "none": no second run
};

// Float32 elements of the registry model `name` with `labels` outputs, as the coordinator
// builds it (parameters and buffers: exactly what a download carries).
absl::StatusOr<uint64_t> ModelParams(const std::string& name, int64_t labels) {
  ASSIGN_OR_RETURN(std::shared_ptr<ModelImpl> model,
                   CreateModel(ClassifierSpec(name, 1, 32, static_cast<int>(labels)), 1));
  try {
    uint64_t n = 0;
    for (const NamedTensor& t : ExtractWeights(*model)) n += t.data.size();
    return n;
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("counting the parameters of ", name, ": ", e.what()));
  }
}

std::string LabelName(int64_t i) { return absl::StrFormat("f%05d", i); }
std::string SiteName(int64_t i) { return absl::StrFormat("site-%03d", i); }

// ---- certificates ----

struct Pki {
  TlsConfig coordinator, admin;
  std::vector<TlsConfig> sites;
};

absl::StatusOr<TlsConfig> WriteKit(const std::string& dir, const KeyAndCert& ca,
                                   const CertRequest& request) {
  ASSIGN_OR_RETURN(const KeyAndCert own, IssueCert(ca, request));
  RETURN_IF_ERROR(MakeDirs(dir, 0700));
  TlsConfig tls;
  tls.set_ca_file(dir + "/ca.pem");
  tls.set_cert_file(dir + "/cert.pem");
  tls.set_key_file(dir + "/key.pem");
  RETURN_IF_ERROR(WriteFileAtomic(tls.ca_file(), ca.cert_pem, 0644));
  RETURN_IF_ERROR(WriteFileAtomic(tls.cert_file(), own.cert_pem, 0644));
  RETURN_IF_ERROR(WriteFileAtomic(tls.key_file(), own.key_pem, 0600));
  return tls;
}

// A fresh CA and the kits of the coordinator, `sites` sites and one admin, with the CN/OU
// naming of `flctl provision`.
absl::StatusOr<Pki> WritePki(const std::string& dir, int64_t sites) {
  ASSIGN_OR_RETURN(const KeyAndCert ca, CreateCa("fl-bench load CA", 2));
  Pki pki;
  ASSIGN_OR_RETURN(
      pki.coordinator,
      WriteKit(dir + "/coordinator", ca,
               {kServerName, "coordinator", {kServerName, "localhost"}, {"127.0.0.1"}, 2}));
  ASSIGN_OR_RETURN(pki.admin, WriteKit(dir + "/admin", ca, {"bench-admin", "admin", {}, {}, 2}));
  for (int64_t s = 0; s < sites; ++s) {
    const std::string name = SiteName(s);
    ASSIGN_OR_RETURN(TlsConfig tls,
                     WriteKit(dir + "/sites/" + name, ca, {name, "site", {}, {}, 2}));
    pki.sites.push_back(std::move(tls));
  }
  return pki;
}

// ---- the coordinator process ----

// A field of /proc/PID/status in bytes ("VmRSS", "VmHWM").
absl::StatusOr<uint64_t> ProcBytes(pid_t pid, const std::string& field) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (!absl::StartsWith(line, field + ":")) continue;
    std::istringstream fields(line.substr(field.size() + 1));
    uint64_t kib = 0;
    if (fields >> kib) return kib * 1024;
  }
  return absl::InternalError(absl::StrCat("no ", field, " in /proc/", pid, "/status"));
}

// fl-coordinator as a child process, stopped (SIGTERM, then SIGKILL) when destroyed.
class CoordinatorProcess {
 public:
  ~CoordinatorProcess() { Stop(); }

  absl::Status Start(const std::string& dir, const TlsConfig& tls) {
    char self[4096];
    const ssize_t n = ::readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n <= 0) return absl::InternalError("cannot read /proc/self/exe");
    const std::string binary = (fs::path(std::string(self, n)).parent_path() / "fl-coordinator");
    if (::access(binary.c_str(), X_OK) != 0) {
      return absl::NotFoundError(absl::StrCat(binary, " is missing: build target fl-coordinator"));
    }
    CoordinatorConfig config;
    config.set_listen_address("127.0.0.1:0");
    config.set_state_dir(dir + "/state");
    *config.mutable_tls() = tls;
    config.set_port_file(dir + "/port");
    std::string text;
    google::protobuf::TextFormat::PrintToString(config, &text);
    RETURN_IF_ERROR(WriteFileAtomic(dir + "/coordinator.conf", text, 0600));
    log_ = dir + "/coordinator.log";
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
    const std::string conf = dir + "/coordinator.conf";
    std::vector<char*> argv = {const_cast<char*>(binary.c_str()), const_cast<char*>("--config"),
                               const_cast<char*>(conf.c_str()), nullptr};
    const int err = posix_spawn(&pid_, binary.c_str(), &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    if (err != 0)
      return absl::InternalError(absl::StrCat("cannot start ", binary, ": errno ", err));
    return WaitForPort(dir + "/port");
  }

  // SIGTERM, then SIGKILL after 20 s. Idempotent.
  void Stop() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGTERM);
    for (int i = 0; i < 200 && ::waitpid(pid_, nullptr, WNOHANG) == 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      if (i == 199) {
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, nullptr, 0);
      }
    }
    pid_ = -1;
  }

  // Error when the process has exited, with the end of its log.
  absl::Status CheckAlive() {
    int status = 0;
    if (pid_ > 0 && ::waitpid(pid_, &status, WNOHANG) == 0) return absl::OkStatus();
    pid_ = -1;
    return absl::InternalError(absl::StrCat("fl-coordinator exited (wait status ", status, ")"));
  }

  std::string LogTail() const {
    absl::StatusOr<std::string> log = ReadFileToString(log_);
    if (!log.ok()) return std::string(log.status().message());
    return log->size() > 3000 ? log->substr(log->size() - 3000) : *log;
  }

  pid_t pid() const { return pid_; }
  int port() const { return port_; }

 private:
  absl::Status WaitForPort(const std::string& port_file) {
    for (int i = 0; i < 600; ++i) {
      RETURN_IF_ERROR(CheckAlive());
      absl::StatusOr<std::string> text = ReadFileToString(port_file);
      if (text.ok() && absl::SimpleAtoi(absl::StripAsciiWhitespace(*text), &port_)) {
        return absl::OkStatus();
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return absl::DeadlineExceededError("fl-coordinator wrote no port file within 30 s");
  }

  pid_t pid_ = -1;
  int port_ = 0;
  std::string log_;
};

// ---- admin calls ----

std::chrono::system_clock::time_point In(int seconds) {
  return std::chrono::system_clock::now() + std::chrono::seconds(seconds);
}

absl::StatusOr<size_t> ConnectedSites(Admin::Stub& admin) {
  grpc::ClientContext ctx;
  ctx.set_deadline(In(30));
  ListSitesResponse response;
  RETURN_IF_ERROR(FromGrpcStatus(admin.ListSites(&ctx, ListSitesRequest(), &response)));
  return static_cast<size_t>(std::count_if(response.sites().begin(), response.sites().end(),
                                           [](const SiteInfo& s) { return s.connected(); }));
}

// Waits until `want` sites hold a task stream; fails early if a site failed.
absl::Status WaitForSites(Admin::Stub& admin, size_t want, const LoadStats& stats,
                          CoordinatorProcess& coordinator) {
  const double deadline = MonotonicSeconds() + 300;
  while (MonotonicSeconds() < deadline) {
    RETURN_IF_ERROR(stats.first_error());
    RETURN_IF_ERROR(coordinator.CheckAlive());
    ASSIGN_OR_RETURN(const size_t have, ConnectedSites(admin));
    if (have >= want) return absl::OkStatus();
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return absl::DeadlineExceededError(
      absl::StrCat("fewer than ", want, " sites connected within 300 s"));
}

JobSpec LoadJobSpec(const LoadOptions& o) {
  JobSpec spec;
  spec.set_name("load");
  spec.set_model(o.model);
  for (int64_t l = 0; l < o.labels; ++l) spec.add_labels(LabelName(l));
  spec.set_image_size(32);
  spec.set_rounds(static_cast<uint32_t>(o.rounds));
  spec.set_min_sites(static_cast<uint32_t>(o.clients));
  spec.set_round_deadline_seconds(1800);
  spec.set_local_steps(1);
  spec.set_batch_size(32);
  spec.mutable_server_optimizer()->set_kind(FEDAVG);
  spec.mutable_server_optimizer()->set_learning_rate(0.01);  // the generated updates are in [-1, 1)
  spec.set_seed(1);
  spec.set_start_timeout_seconds(120);
  return spec;
}

absl::StatusOr<JobStatus> GetJob(Admin::Stub& admin, const std::string& job_id) {
  grpc::ClientContext ctx;
  ctx.set_deadline(In(30));
  JobRef ref;
  ref.set_job_id(job_id);
  JobStatus job;
  RETURN_IF_ERROR(FromGrpcStatus(admin.GetJob(&ctx, ref, &job)));
  return job;
}

// Polls the job until it ends; DONE is OK, anything else (or a failed site) an error.
absl::Status WaitForJob(Admin::Stub& admin, const std::string& job_id, const LoadStats& stats,
                        CoordinatorProcess& coordinator, int64_t rounds) {
  const double deadline = MonotonicSeconds() + 600.0 * (rounds + 1);
  while (MonotonicSeconds() < deadline) {
    RETURN_IF_ERROR(stats.first_error());
    RETURN_IF_ERROR(coordinator.CheckAlive());
    ASSIGN_OR_RETURN(const JobStatus job, GetJob(admin, job_id));
    if (job.state() == DONE) return absl::OkStatus();
    if (job.state() == FAILED || job.state() == CANCELLED) {
      return absl::AbortedError(
          absl::StrCat("job ", job_id, " ended ", JobState_Name(job.state()), ": ", job.message()));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return absl::DeadlineExceededError(absl::StrCat("job ", job_id, " did not finish in time"));
}

// ---- the sites ----

// N sites on their own threads: connect, then serve tasks. Stopped and joined when destroyed.
class SiteFleet {
 public:
  SiteFleet(const Pki& pki, int port, int64_t labels, LoadStats* stats) : stats_(stats) {
    for (size_t s = 0; s < pki.sites.size(); ++s) {
      absl::StatusOr<TlsMaterial> tls = LoadTlsMaterial(pki.sites[s]);
      if (!tls.ok()) {
        stats->Fail(tls.status());
        return;
      }
      SimSiteOptions o{SiteName(s), absl::StrCat("127.0.0.1:", port), kServerName, *std::move(tls),
                       {},          static_cast<uint32_t>(s)};
      // Two findings per site, spread over the label space (FFL: different label sets).
      o.labels.push_back(LabelName(s % labels));
      if (labels > 1) o.labels.push_back(LabelName((s * 7 + 1) % labels));
      if (o.labels.size() == 2 && o.labels[0] == o.labels[1]) o.labels.pop_back();
      sites_.push_back(std::make_unique<SimSite>(std::move(o), stats));
    }
    for (auto& site : sites_) {
      threads_.emplace_back([site = site.get(), stats] {
        absl::Status status = site->Connect();
        if (status.ok()) status = site->Serve();
        if (!status.ok()) stats->Fail(status);
      });
    }
  }
  ~SiteFleet() { StopAndJoin(); }

  void StopAndJoin() {
    if (!stats_->first_error().ok()) {
      for (auto& site : sites_) site->Stop();
    }
    for (std::thread& t : threads_) t.join();
    threads_.clear();
  }

 private:
  LoadStats* stats_;
  std::vector<std::unique_ptr<SimSite>> sites_;
  std::vector<std::thread> threads_;
};

// ---- results ----

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t rank = static_cast<size_t>(std::ceil(p / 100.0 * v.size()));
  return v[std::min(v.size() - 1, rank == 0 ? 0 : rank - 1)];
}

struct Memory {
  uint64_t startup = 0, connected = 0, peak = 0;
};

std::vector<double> RoundTimes(const LoadStats& stats, int64_t rounds) {
  const std::map<uint32_t, double> first = stats.first_arrivals();
  std::vector<double> times;
  for (uint32_t r = 0; r < rounds; ++r) {
    if (first.count(r) && first.count(r + 1)) times.push_back(first.at(r + 1) - first.at(r));
  }
  return times;
}

// What one run measured: the coordinator's peak above its RSS with every site connected, and
// the key=value results.
struct RunResult {
  double model_bytes = 0, over_connected_bytes = 0;
  std::vector<std::pair<std::string, double>> values;
};

RunResult PrintResults(const LoadOptions& o, const LoadStats& stats, const Memory& m,
                       double job_s) {
  const double model = static_cast<double>(stats.model_params()) * sizeof(float);
  const std::vector<double> rounds = RoundTimes(stats, o.rounds);
  std::printf("job: %lld rounds + final evaluation in %.2f s\n", static_cast<long long>(o.rounds),
              job_s);
  std::printf(
      "round time (first task of round r to first task of r+1): min %.2f s, median "
      "%.2f s, max %.2f s\n",
      Percentile(rounds, 0), Percentile(rounds, 50), Percentile(rounds, 100));
  auto mib = [](uint64_t b) { return static_cast<double>(b) / kMib; };
  const double growth = m.peak > m.startup ? static_cast<double>(m.peak - m.startup) : 0;
  const double over_idle = m.peak > m.connected ? static_cast<double>(m.peak - m.connected) : 0;
  std::printf(
      "coordinator RSS: %.1f MiB after start-up, %.1f MiB with %lld sites connected, "
      "peak (VmHWM) %.1f MiB\n",
      mib(m.startup), mib(m.connected), static_cast<long long>(o.clients), mib(m.peak));
  std::printf(
      "coordinator peak - start-up = %.1f MiB = %.2f x model; peak - connected = "
      "%.1f MiB = %.2f x model\n",
      growth / kMib, growth / model, over_idle / kMib, over_idle / model);
  const auto samples = stats.samples();
  std::printf("%-11s %6s %10s %10s %10s %10s  (ms)\n", "call", "count", "p50", "p90", "p99", "max");
  for (const char* kind : {"connect", "join", "first_task", "download", "upload", "report"}) {
    const auto it = samples.find(kind);
    const std::vector<double> v = it == samples.end() ? std::vector<double>() : it->second;
    std::printf("%-11s %6zu %10.1f %10.1f %10.1f %10.1f\n", kind, v.size(), 1e3 * Percentile(v, 50),
                1e3 * Percentile(v, 90), 1e3 * Percentile(v, 99), 1e3 * Percentile(v, 100));
  }
  auto p99_ms = [&](const char* kind) {
    const auto it = samples.find(kind);
    return it == samples.end() ? 0.0 : 1e3 * Percentile(it->second, 99);
  };
  RunResult result{model, over_idle};
  result.values = {{"round_time_s", Percentile(rounds, 50)},
                   {"peak_memory_model_ratio", growth / model},
                   {"peak_over_connected_model_ratio", over_idle / model},
                   {"join_p99_ms", p99_ms("join")},
                   {"report_p99_ms", p99_ms("report")},
                   {"first_task_p99_ms", p99_ms("first_task")},
                   {"download_p99_ms", p99_ms("download")},
                   {"upload_p99_ms", p99_ms("upload")}};
  return result;
}

absl::StatusOr<std::string> MakeTempDir() {
  const char* tmp = std::getenv("TMPDIR");
  std::string pattern = absl::StrCat(tmp && *tmp ? tmp : "/tmp", "/fl-bench-load.XXXXXX");
  if (::mkdtemp(pattern.data()) == nullptr) {
    return absl::InternalError(absl::StrCat("cannot create a folder from ", pattern));
  }
  return pattern;
}

// Submits the job once every site is connected, waits for it, and measures.
absl::StatusOr<RunResult> RunJob(const LoadOptions& o, const Pki& pki,
                                 CoordinatorProcess& coordinator, Memory& memory) {
  ASSIGN_OR_RETURN(const TlsMaterial admin_tls, LoadTlsMaterial(pki.admin));
  auto admin = Admin::NewStub(
      MakeChannel(absl::StrCat("127.0.0.1:", coordinator.port()), kServerName, admin_tls));
  LoadStats stats;
  SiteFleet fleet(pki, coordinator.port(), o.labels, &stats);
  absl::Status status = WaitForSites(*admin, o.clients, stats, coordinator);
  double job_s = 0;
  if (status.ok()) {
    ASSIGN_OR_RETURN(memory.connected, ProcBytes(coordinator.pid(), "VmRSS"));
    std::printf("%lld sites joined and hold a task stream; submitting the job\n",
                static_cast<long long>(o.clients));
    std::fflush(stdout);
    grpc::ClientContext ctx;
    ctx.set_deadline(In(120));
    SubmitJobRequest request;
    *request.mutable_spec() = LoadJobSpec(o);
    JobStatus job;
    stats.SetSubmitTime(MonotonicSeconds());
    status = FromGrpcStatus(admin->SubmitJob(&ctx, request, &job));
    if (status.ok()) status = WaitForJob(*admin, job.job_id(), stats, coordinator, o.rounds);
    job_s = MonotonicSeconds() - stats.submit_time();
  }
  if (status.ok()) {
    // Read before the coordinator exits: VmHWM is the process's lifetime peak.
    ASSIGN_OR_RETURN(memory.peak, ProcBytes(coordinator.pid(), "VmHWM"));
  } else {
    stats.Fail(status);
    coordinator.Stop();  // ends every stream, so the sites' threads return
  }
  fleet.StopAndJoin();
  RETURN_IF_ERROR(stats.first_error());
  if (stats.model_params() == 0) return absl::InternalError("no site downloaded the model");
  return PrintResults(o, stats, memory, job_s);
}

// One whole job with a fresh coordinator in `dir`.
absl::StatusOr<RunResult> RunModel(const LoadOptions& o, const std::string& dir, const Pki& pki) {
  ASSIGN_OR_RETURN(const uint64_t params, ModelParams(o.model, o.labels));
  std::printf(
      "model: %s with %lld labels: %llu parameters (%.2f MiB float32); %lld sites, "
      "%lld rounds\n",
      o.model.c_str(), static_cast<long long>(o.labels), static_cast<unsigned long long>(params),
      params * 4.0 / kMib, static_cast<long long>(o.clients), static_cast<long long>(o.rounds));
  std::fflush(stdout);
  RETURN_IF_ERROR(MakeDirs(dir, 0700));
  Memory memory;
  CoordinatorProcess coordinator;
  absl::Status status = coordinator.Start(dir, pki.coordinator);
  if (status.ok()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(500));  // settle after start-up
    absl::StatusOr<uint64_t> rss = ProcBytes(coordinator.pid(), "VmRSS");
    status = rss.status();
    if (rss.ok()) memory.startup = *rss;
  }
  absl::StatusOr<RunResult> result = status.ok() ? RunJob(o, pki, coordinator, memory) : status;
  if (!result.ok()) {
    std::fprintf(stderr, "end of the coordinator's log:\n%s\n", coordinator.LogTail().c_str());
  }
  return result;
}

// Runs the job with --model, then (unless --fit_model none) with the larger --fit_model, and
// fits the coordinator's peak above its connected baseline as a * model + b: a is what the
// model size costs (target: at most 3), b the fixed overhead of the sites' connections.
absl::Status RunLoadBench(const LoadOptions& o) {
  ASSIGN_OR_RETURN(const std::string dir, MakeTempDir());
  ASSIGN_OR_RETURN(const Pki pki, WritePki(dir, o.clients));
  absl::StatusOr<RunResult> main = RunModel(o, dir + "/run-main", pki);
  if (!main.ok()) return Annotate(main.status(), absl::StrCat("files kept in ", dir));
  std::vector<std::pair<std::string, double>> values = main->values;
  if (o.fit_model != "none") {
    LoadOptions fit = o;
    fit.model = o.fit_model;
    absl::StatusOr<RunResult> big = RunModel(fit, dir + "/run-fit", pki);
    if (!big.ok()) return Annotate(big.status(), absl::StrCat("files kept in ", dir));
    if (big->model_bytes <= main->model_bytes) {
      return absl::InvalidArgumentError("--fit_model must be larger than --model");
    }
    const double a = (big->over_connected_bytes - main->over_connected_bytes) /
                     (big->model_bytes - main->model_bytes);
    const double b = main->over_connected_bytes - a * main->model_bytes;
    std::printf(
        "coordinator peak above connected ~= %.2f x model + %.1f MiB (fit over %s and "
        "%s)\n",
        a, b / kMib, o.model.c_str(), o.fit_model.c_str());
    values.push_back({"memory_model_multiple", a});
    values.push_back({"memory_fixed_mib", b / kMib});
  }
  PrintKeyValues(values);
  std::error_code ec;
  fs::remove_all(dir, ec);
  return absl::OkStatus();
}

}  // namespace

BenchRun SetUpLoadBench(CLI::App& app) {
  auto o = std::make_shared<LoadOptions>();
  app.add_option("--clients", o->clients, "simulated sites")->check(CLI::PositiveNumber);
  app.add_option("--rounds", o->rounds, "rounds of the job")->check(CLI::PositiveNumber);
  app.add_option("--labels", o->labels, "labels of the model's head")->check(CLI::PositiveNumber);
  app.add_option("--model", o->model, "registry model (about 1M parameters by default)");
  app.add_option("--fit_model", o->fit_model,
                 "a second, larger model to fit the peak memory against, or none");
  return [o] { return RunLoadBench(*o); };
}

}  // namespace fl::bench
