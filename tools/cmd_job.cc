// flctl job / sites / export: the operator's admin commands over mutual TLS.
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <thread>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/config.h"
#include "common/grpc_status.h"
#include "common/proto_json.h"
#include "common/status.h"
#include "common/tls.h"
#include "fl/federation.grpc.pb.h"
#include "models/spec.h"
#include "tools/cli.h"

namespace fl::cli {
namespace {

constexpr char kJobUsage[] =
    "usage: flctl job submit --config ADMIN.conf --spec JOB.conf\n"
    "       flctl job list|status|wait|cancel --config ADMIN.conf [JOB_ID] [--json]";
constexpr char kSitesUsage[] = "usage: flctl sites --config ADMIN.conf [--json]";
constexpr char kExportUsage[] =
    "usage: flctl export JOB_ID --config ADMIN.conf --out DIR [--best]\n"
    "  --best  the model with the best validation figures so far (JobSpec.early_stopping), not "
    "the latest";

absl::StatusOr<std::unique_ptr<Admin::Stub>> Connect(const Args& args) {
  ASSIGN_OR_RETURN(std::string path, args.Require("config"));
  ASSIGN_OR_RETURN(AdminConfig config, LoadAdminConfig(path));
  ASSIGN_OR_RETURN(TlsMaterial tls, LoadTlsMaterial(config.tls()));
  return Admin::NewStub(MakeChannel(config.coordinator_address(), config.coordinator_name(), tls));
}

const char* StateName(JobState state) {
  switch (state) {
    case QUEUED: return "queued";
    case RUNNING: return "running";
    case DONE: return "done";
    case FAILED: return "failed";
    case CANCELLED: return "cancelled";
    default: return "unknown";
  }
}

std::string Auroc(double v) { return std::isnan(v) ? "-" : absl::StrFormat("%.3f", v); }

// "round R: sites a,b, loss L, mean AUROC M".
std::string RoundLine(const RoundSummary& r) {
  return absl::StrFormat("round %d: sites %s, loss %.4f, mean AUROC %s", r.round(),
                         absl::StrJoin(r.sites(), ","), r.train_loss(), Auroc(r.mean_auroc()));
}

void PrintStatus(const JobStatus& job) {
  const JobSpec& spec = job.spec();
  std::cout << absl::StrFormat("job %s (%s): %s, %d/%d rounds%s\n", job.job_id(),
                               HasLabelHead(spec) ? spec.model() : WorkloadName(spec),
                               StateName(job.state()), job.rounds_done(),
                               job.spec().rounds(),
                               job.message().empty() ? "" : " - " + job.message());
  if (!job.spec().initial_model().empty()) {
    std::cout << "  started from " << job.spec().initial_model() << "\n";
  }
  if (job.best_round() > 0) {
    std::cout << absl::StrFormat("  best model by validation: after round %d (%s %.4f; flctl "
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
      std::cout << absl::StrFormat(", privacy spent epsilon %.3f at delta %g", s.privacy().epsilon(),
                                   s.privacy().delta());
    }
    std::cout << "\n";
  }
}

absl::Status Submit(Admin::Stub& stub, const Args& args) {
  ASSIGN_OR_RETURN(std::string spec_path, args.Require("spec"));
  ASSIGN_OR_RETURN(JobSpec spec, LoadTextProto<JobSpec>(spec_path));
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
      return job.state() == DONE ? absl::OkStatus()
                                 : absl::AbortedError(absl::StrCat("job ", id, " ",
                                                                   StateName(job.state())));
    }
    std::this_thread::sleep_for(std::chrono::seconds(1));
  }
}

int RunJob(const std::vector<std::string>& argv) {
  absl::StatusOr<Args> args = Args::Parse(argv, {"json"});
  if (!args.ok()) return Fail(args.status(), 2);
  if (absl::Status s = args->CheckKnown({"config", "spec", "json"}); !s.ok()) return Fail(s, 2);
  const auto& words = args->positional();
  if (words.empty()) return Fail(absl::InvalidArgumentError(kJobUsage), 2);
  const std::string& verb = words[0];
  const bool json = args->Has("json");
  absl::StatusOr<std::unique_ptr<Admin::Stub>> stub = Connect(*args);
  if (!stub.ok()) return Fail(stub.status(), 2);
  absl::Status status;
  if (verb == "submit") {
    status = Submit(**stub, *args);
  } else if (verb == "list") {
    grpc::ClientContext ctx;
    ListJobsResponse jobs;
    status = FromGrpcStatus((*stub)->ListJobs(&ctx, ListJobsRequest(), &jobs));
    if (status.ok() && json) std::cout << ToJson(jobs) << "\n";
    for (const JobStatus& job : jobs.jobs()) {
      if (!json) std::cout << absl::StrFormat("%s\t%s\t%d/%d\n", job.job_id(), StateName(job.state()),
                                   job.rounds_done(), job.spec().rounds());
    }
  } else if ((verb == "status" || verb == "wait" || verb == "cancel") && words.size() == 2) {
    if (verb == "wait") {
      status = Wait(**stub, words[1], json);
    } else if (verb == "status") {
      absl::StatusOr<JobStatus> job = Get(**stub, words[1]);
      status = job.status();
      if (job.ok()) json ? (void)(std::cout << ToJson(*job) << "\n") : PrintStatus(*job);
    } else {
      grpc::ClientContext ctx;
      JobRef ref;
      ref.set_job_id(words[1]);
      JobStatus job;
      status = FromGrpcStatus((*stub)->CancelJob(&ctx, ref, &job));
      if (status.ok()) PrintStatus(job);
    }
  } else {
    return Fail(absl::InvalidArgumentError(kJobUsage), 2);
  }
  return status.ok() ? 0 : Fail(status);
}

int RunSites(const std::vector<std::string>& argv) {
  absl::StatusOr<Args> args = Args::Parse(argv, {"json"});
  if (!args.ok()) return Fail(args.status(), 2);
  absl::StatusOr<std::unique_ptr<Admin::Stub>> stub = Connect(*args);
  if (!stub.ok()) return Fail(stub.status(), 2);
  grpc::ClientContext ctx;
  ListSitesResponse sites;
  absl::Status status = FromGrpcStatus((*stub)->ListSites(&ctx, ListSitesRequest(), &sites));
  if (!status.ok()) return Fail(status);
  if (args->Has("json")) {
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

// flctl export JOB_ID --config ADMIN.conf --out DIR: model.safetensors + model.json.
int RunExport(const std::vector<std::string>& argv) {
  absl::StatusOr<Args> args = Args::Parse(argv, {"best"});
  if (!args.ok()) return Fail(args.status(), 2);
  absl::StatusOr<std::string> out = args->Require("out");
  if (!out.ok() || args->positional().size() != 1) {
    return Fail(absl::InvalidArgumentError(kExportUsage), 2);
  }
  absl::StatusOr<std::unique_ptr<Admin::Stub>> stub = Connect(*args);
  if (!stub.ok()) return Fail(stub.status(), 2);
  std::filesystem::create_directories(*out);
  grpc::ClientContext ctx;
  ExportRequest request;
  request.set_job_id(args->positional()[0]);
  request.set_best(args->Has("best"));
  auto reader = (*stub)->ExportModel(&ctx, request);
  std::map<std::string, std::ofstream> files;
  FileChunk chunk;
  while (reader->Read(&chunk)) {
    if (chunk.file() != "model.safetensors" && chunk.file() != "model.json") continue;
    auto [it, fresh] = files.try_emplace(chunk.file());
    if (fresh) it->second.open(*out + "/" + chunk.file() + ".part", std::ios::binary);
    it->second.write(chunk.data().data(), static_cast<std::streamsize>(chunk.data().size()));
  }
  absl::Status status = FromGrpcStatus(reader->Finish());
  for (auto& [name, stream] : files) {
    stream.close();
    if (status.ok()) std::filesystem::rename(*out + "/" + name + ".part", *out + "/" + name);
  }
  if (!status.ok()) return Fail(status);
  std::cout << "wrote " << *out << "/model.safetensors and " << *out << "/model.json\n";
  return 0;
}

FL_COMMAND("job", "submit, list, inspect, wait for and cancel training jobs", kJobUsage, RunJob);
FL_COMMAND("sites", "list the consortium's sites and whether they are connected", kSitesUsage,
           RunSites);
FL_COMMAND("export", "download a job's global model (safetensors + JSON model card)", kExportUsage,
           RunExport);

}  // namespace
}  // namespace fl::cli
