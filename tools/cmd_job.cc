// flctl job / sites / export: the operator's admin commands over mutual TLS.
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <thread>

#include <unistd.h>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/config.h"
#include "common/file_util.h"
#include "common/transport/grpc_status.h"
#include "common/proto_json.h"
#include "common/status.h"
#include "common/transport/tls.h"
#include "fl/federation.grpc.pb.h"
#include "models/spec.h"
#include "tools/cli.h"
#include "tools/job_watch.h"
#include "tools/report.h"

namespace fl::cli {
namespace {

// Every option of the admin commands; each (sub)command declares those it takes.
struct AdminArgs {
  std::string config;
  bool json = false;
  std::string spec;
  std::string job_id;
  std::string out;
  bool best = false;
  double interval = 2;  // job watch: seconds between screens
};

void AddConfig(CLI::App* app, AdminArgs* args) {
  app->add_option("--config", args->config, "the admin's config, ADMIN.conf (flctl provision)")
      ->required();
}

void AddJson(CLI::App* app, AdminArgs* args) {
  app->add_flag("--json", args->json, "the answer as JSON (protobuf's JSON mapping)");
}

void AddJobId(CLI::App* app, AdminArgs* args) {
  app->add_option("JOB_ID", args->job_id, "the job, as submit printed it")->required();
}

absl::StatusOr<std::unique_ptr<Admin::Stub>> Connect(const AdminArgs& args) {
  ASSIGN_OR_RETURN(AdminConfig config, LoadAdminConfig(args.config));
  ASSIGN_OR_RETURN(TlsMaterial tls, LoadTlsMaterial(config.tls()));
  return Admin::NewStub(MakeChannel(config.coordinator_address(), config.coordinator_name(), tls));
}

std::string Auroc(double v) { return std::isnan(v) ? "-" : absl::StrFormat("%.3f", v); }

// "round R: sites a,b, loss L, mean AUROC M".
std::string RoundLine(const RoundSummary& r) {
  return absl::StrFormat(
      "round %d: sites %s, loss %s, mean AUROC %s", r.round(), absl::StrJoin(r.sites(), ","),
      r.has_train_loss() ? absl::StrFormat("%.4f", r.train_loss()) : "-", Auroc(r.mean_auroc()));
}

void PrintStatus(const JobStatus& job) {
  const JobSpec& spec = job.spec();
  std::cout << absl::StrFormat("job %s (%s): %s, %d/%d rounds%s\n", job.job_id(),
                               HasLabelHead(spec) ? spec.model() : WorkloadName(spec),
                               JobStateName(job.state()), job.rounds_done(), job.spec().rounds(),
                               job.message().empty() ? "" : " - " + job.message());
  if (!job.spec().initial_model().empty()) {
    std::cout << "  started from " << job.spec().initial_model() << "\n";
  }
  const double now = absl::ToDoubleSeconds(absl::Now() - absl::UnixEpoch());
  for (const SiteTask& t : job.current()) {
    std::cout << absl::StrFormat("  round %d, %s: %s\n", t.round(), t.site(), SiteTaskText(t, now));
  }
  if (job.best_round() > 0) {
    std::cout << absl::StrFormat(
        "  best model by validation: after round %d (%s %.4f; flctl "
        "export --best)%s\n",
        job.best_round(), SelectionFor(spec).metric, job.best_score(),
        job.stopped_early() ? ", stopped early" : "");
  }
  for (const RoundSummary& r : job.rounds()) {
    std::vector<std::string> labels;
    for (const LabelMetric& m : r.test()) labels.push_back(m.label() + " " + Auroc(m.auroc()));
    std::cout << "  " << RoundLine(r) << (labels.empty() ? "" : " | median over sites: ")
              << absl::StrJoin(labels, ", ") << "\n";
    for (const SiteReport& s : r.reports()) {
      std::vector<std::string> own;
      for (const LabelMetric& m : s.test()) {
        own.push_back(absl::StrFormat("%s %s (%d+%d)", m.label(), Auroc(m.auroc()), m.positives(),
                                      m.negatives()));
      }
      std::cout << "    reported by " << s.site() << ": " << absl::StrJoin(own, ", ") << "\n";
    }
    for (const std::string& d : r.declined()) std::cout << "    declined: " << d << "\n";
  }
  for (const SiteReport& s : job.sites()) {
    if (s.metrics().empty()) {
      std::cout << absl::StrFormat("  site %s: mean AUROC %s", s.site(), Auroc(s.mean_auroc()));
    } else {
      std::vector<std::string> figures;
      for (const Metric& m : s.metrics()) {
        figures.push_back(absl::StrFormat("%s %.4g", m.name(), m.value()));
      }
      std::cout << absl::StrFormat("  site %s: %s", s.site(), absl::StrJoin(figures, ", "));
    }
    if (s.privacy().epsilon() > 0) {
      std::cout << absl::StrFormat(", privacy spent epsilon %.3f at delta %g",
                                   s.privacy().epsilon(), s.privacy().delta());
    }
    std::cout << "\n";
  }
}

absl::Status Submit(Admin::Stub& stub, const AdminArgs& args) {
  ASSIGN_OR_RETURN(JobSpec spec, LoadTextProto<JobSpec>(args.spec));
  grpc::ClientContext ctx;
  SubmitJobRequest request;
  *request.mutable_spec() = spec;
  JobStatus job;
  RETURN_IF_ERROR(FromGrpcStatus(stub.SubmitJob(&ctx, request, &job)));
  std::cout << job.job_id() << "\n";
  return absl::OkStatus();
}

absl::StatusOr<JobStatus> Get(Admin::Stub& stub, const std::string& id) {
  grpc::ClientContext ctx;
  JobRef ref;
  ref.set_job_id(id);
  JobStatus job;
  RETURN_IF_ERROR(FromGrpcStatus(stub.GetJob(&ctx, ref, &job)));
  return job;
}

// Polls until the job ends; prints each newly committed round. Rides out a coordinator restart
// (up to a minute unreachable).
absl::Status Wait(Admin::Stub& stub, const std::string& id, bool json) {
  int printed = 0;
  int unreachable_seconds = 0;
  while (true) {
    absl::StatusOr<JobStatus> got = Get(stub, id);
    if (absl::IsUnavailable(got.status()) && ++unreachable_seconds <= 60) {
      std::this_thread::sleep_for(std::chrono::seconds(1));
      continue;
    }
    ASSIGN_OR_RETURN(JobStatus job, std::move(got));
    unreachable_seconds = 0;
    for (; !json && printed < job.rounds_size() - 1; ++printed) {
      std::cout << id << " " << RoundLine(job.rounds(printed)) << std::endl;
    }
    if (job.state() == DONE || job.state() == FAILED || job.state() == CANCELLED) {
      json ? (void)(std::cout << ToJson(job) << "\n") : PrintStatus(job);
      return job.state() == DONE
                 ? absl::OkStatus()
                 : absl::AbortedError(absl::StrCat("job ", id, " ", JobStateName(job.state())));
    }
    std::this_thread::sleep_for(std::chrono::seconds(1));
  }
}

// `flctl job watch`: redraws the job's screen every `interval` seconds until it ends (exit 0
// when done). On a terminal the screen is cleared for each frame; otherwise (a log, a pipe) a
// frame is printed only when it changed. Rides out a coordinator restart like Wait.
absl::Status Watch(Admin::Stub& stub, const std::string& id, double interval) {
  const bool terminal = ::isatty(STDOUT_FILENO) == 1;
  RoundClock clock;
  std::string last;
  int unreachable = 0;
  while (true) {
    absl::StatusOr<JobStatus> got = Get(stub, id);
    if (absl::IsUnavailable(got.status()) && unreachable++ * interval <= 60) {
      std::this_thread::sleep_for(std::chrono::duration<double>(interval));
      continue;
    }
    ASSIGN_OR_RETURN(JobStatus job, std::move(got));
    unreachable = 0;
    grpc::ClientContext ctx;
    ListSitesResponse sites;
    RETURN_IF_ERROR(FromGrpcStatus(stub.ListSites(&ctx, ListSitesRequest(), &sites)));
    const double now = absl::ToDoubleSeconds(absl::Now() - absl::UnixEpoch());
    clock.Observe(job.rounds_done(), now);
    const std::string frame =
        WatchFrame(job, {sites.sites().begin(), sites.sites().end()}, now, clock.SecondsPerRound());
    if (terminal) {
      std::cout << "\033[H\033[2J" << frame << std::flush;
    } else if (frame != last) {
      std::cout << frame << "\n" << std::flush;
    }
    last = frame;
    if (job.state() == DONE || job.state() == FAILED || job.state() == CANCELLED) {
      return job.state() == DONE
                 ? absl::OkStatus()
                 : absl::AbortedError(absl::StrCat("job ", id, " ", JobStateName(job.state())));
    }
    std::this_thread::sleep_for(std::chrono::duration<double>(interval));
  }
}

// One verb of `flctl job` on a connected stub.
absl::Status RunJobVerb(const std::string& verb, Admin::Stub& stub, const AdminArgs& args) {
  if (verb == "submit") return Submit(stub, args);
  if (verb == "list") {
    grpc::ClientContext ctx;
    ListJobsResponse jobs;
    RETURN_IF_ERROR(FromGrpcStatus(stub.ListJobs(&ctx, ListJobsRequest(), &jobs)));
    if (args.json) std::cout << ToJson(jobs) << "\n";
    for (const JobStatus& job : jobs.jobs()) {
      if (!args.json)
        std::cout << absl::StrFormat("%s\t%s\t%d/%d\n", job.job_id(), JobStateName(job.state()),
                                     job.rounds_done(), job.spec().rounds());
    }
    return absl::OkStatus();
  }
  if (verb == "wait") return Wait(stub, args.job_id, args.json);
  if (verb == "watch") {
    if (!(args.interval >= 0.1)) {
      return absl::InvalidArgumentError("--interval must be at least 0.1 seconds");
    }
    return Watch(stub, args.job_id, args.interval);
  }
  if (verb == "status") {
    ASSIGN_OR_RETURN(JobStatus job, Get(stub, args.job_id));
    args.json ? (void)(std::cout << ToJson(job) << "\n") : PrintStatus(job);
    return absl::OkStatus();
  }
  grpc::ClientContext ctx;
  JobRef ref;
  ref.set_job_id(args.job_id);
  JobStatus job;
  RETURN_IF_ERROR(FromGrpcStatus(stub.CancelJob(&ctx, ref, &job)));
  PrintStatus(job);
  return absl::OkStatus();
}

CommandRun SetUpJob(CLI::App& app) {
  auto args = std::make_shared<AdminArgs>();
  app.require_subcommand(1);
  const std::pair<const char*, const char*> verbs[] = {
      {"submit", "submit a job (its JobSpec in text format); prints its id"},
      {"list", "list the jobs: id, state, rounds done"},
      {"status", "a job's rounds, reports and sites"},
      {"wait", "print each round as it commits until the job ends; exit 1 unless it is done"},
      {"watch",
       "a live view: round and time left, AUROC per finding, each site's stream, epsilon and "
       "part in the last round; redrawn until the job ends; exit 1 unless it is done"},
      {"cancel", "cancel a job"}};
  std::vector<CLI::App*> subcommands;
  for (const auto& [verb, summary] : verbs) {
    CLI::App* sub = app.add_subcommand(verb, summary);
    if (std::string(verb) == "submit") {
      sub->add_option("--spec", args->spec, "the job, a JobSpec in text format (JOB.conf)")
          ->required();
    } else if (std::string(verb) != "list") {
      AddJobId(sub, args.get());
    }
    if (std::string(verb) == "watch") {
      sub->add_option("--interval", args->interval, "seconds between screens")
          ->capture_default_str();
    }
    AddConfig(sub, args.get());
    AddJson(sub, args.get());
    subcommands.push_back(sub);
  }
  return [args, subcommands] {
    absl::StatusOr<std::unique_ptr<Admin::Stub>> stub = Connect(*args);
    if (!stub.ok()) return Fail(stub.status(), 2);
    for (const CLI::App* sub : subcommands) {
      if (!sub->parsed()) continue;
      absl::Status status = RunJobVerb(sub->get_name(), **stub, *args);
      return status.ok() ? 0 : Fail(status);
    }
    return kUsageExit;  // unreachable: CLI11 requires one verb
  };
}

int RunSites(const AdminArgs& args) {
  absl::StatusOr<std::unique_ptr<Admin::Stub>> stub = Connect(args);
  if (!stub.ok()) return Fail(stub.status(), 2);
  grpc::ClientContext ctx;
  ListSitesResponse sites;
  absl::Status status = FromGrpcStatus((*stub)->ListSites(&ctx, ListSitesRequest(), &sites));
  if (!status.ok()) return Fail(status);
  if (args.json) {
    std::cout << ToJson(sites) << "\n";
    return 0;
  }
  for (const SiteInfo& s : sites.sites()) {
    std::vector<std::string> labels;
    for (const SiteLabel& l : s.labels()) labels.push_back(l.name());
    std::cout << absl::StrFormat("%s\t%s\t%d images\t%s\t%s\n", s.name(),
                                 s.connected() ? "connected" : "offline", s.num_images(),
                                 s.hardware(), absl::StrJoin(labels, ","));
  }
  return 0;
}

// flctl export JOB_ID --config ADMIN.conf --out DIR [--best]: model.safetensors + model.json.
int RunExport(const AdminArgs& args) {
  absl::StatusOr<std::unique_ptr<Admin::Stub>> stub = Connect(args);
  if (!stub.ok()) return Fail(stub.status(), 2);
  std::filesystem::create_directories(args.out);
  grpc::ClientContext ctx;
  ExportRequest request;
  request.set_job_id(args.job_id);
  request.set_best(args.best);
  auto reader = (*stub)->ExportModel(&ctx, request);
  std::map<std::string, std::ofstream> files;
  FileChunk chunk;
  while (reader->Read(&chunk)) {
    if (chunk.file() != "model.safetensors" && chunk.file() != "model.json") continue;
    auto [it, fresh] = files.try_emplace(chunk.file());
    if (fresh) it->second.open(args.out + "/" + chunk.file() + ".part", std::ios::binary);
    it->second.write(chunk.data().data(), static_cast<std::streamsize>(chunk.data().size()));
  }
  absl::Status status = FromGrpcStatus(reader->Finish());
  for (auto& [name, stream] : files) {
    stream.close();
    if (status.ok())
      std::filesystem::rename(args.out + "/" + name + ".part", args.out + "/" + name);
  }
  if (!status.ok()) return Fail(status);
  std::cout << "wrote " << args.out << "/model.safetensors and " << args.out << "/model.json\n";
  return 0;
}

// flctl report JOB_ID --config ADMIN.conf --out report.html: the job's HTML report.
int RunReport(const AdminArgs& args) {
  absl::StatusOr<std::unique_ptr<Admin::Stub>> stub = Connect(args);
  if (!stub.ok()) return Fail(stub.status(), 2);
  absl::StatusOr<JobStatus> job = Get(**stub, args.job_id);
  if (!job.ok()) return Fail(job.status());
  grpc::ClientContext ctx;
  ListSitesResponse sites;
  absl::Status status = FromGrpcStatus((*stub)->ListSites(&ctx, ListSitesRequest(), &sites));
  if (!status.ok()) return Fail(status);
  absl::StatusOr<AdminConfig> config = LoadAdminConfig(args.config);
  ReportContext context{absl::FormatTime("%Y-%m-%d %H:%M:%S UTC", absl::Now(), absl::UTCTimeZone()),
                        FL_VERSION, config.ok() ? config->coordinator_address() : ""};
  status = WriteFileAtomic(
      args.out, ReportHtml(*job, {sites.sites().begin(), sites.sites().end()}, context), 0644);
  if (!status.ok()) return Fail(status);
  std::cout << "wrote " << args.out << "\n";
  return 0;
}

CommandRun SetUpReport(CLI::App& app) {
  auto args = std::make_shared<AdminArgs>();
  AddJobId(&app, args.get());
  AddConfig(&app, args.get());
  app.add_option("--out", args->out,
                 "the HTML file to write (self-contained: no script, no "
                 "network)")
      ->required();
  return [args] { return RunReport(*args); };
}

CommandRun SetUpSites(CLI::App& app) {
  auto args = std::make_shared<AdminArgs>();
  AddConfig(&app, args.get());
  AddJson(&app, args.get());
  return [args] { return RunSites(*args); };
}

CommandRun SetUpExport(CLI::App& app) {
  auto args = std::make_shared<AdminArgs>();
  AddJobId(&app, args.get());
  AddConfig(&app, args.get());
  app.add_option("--out", args->out, "folder for model.safetensors and model.json")->required();
  app.add_flag("--best", args->best,
               "the model with the best validation figures so far (JobSpec.early_stopping), "
               "not the latest");
  return [args] { return RunExport(*args); };
}

FL_COMMAND("job", "submit, list, inspect, wait for and cancel training jobs", SetUpJob);
FL_COMMAND("sites", "list the consortium's sites and whether they are connected", SetUpSites);
FL_COMMAND("export", "download a job's global model (safetensors + JSON model card)", SetUpExport);
FL_COMMAND("report",
           "write a job's report as one HTML file: validation over rounds, each site's figures, "
           "privacy spent, spec and provenance",
           SetUpReport);

}  // namespace
}  // namespace fl::cli
