#include "server/coordinator.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "common/config.h"
#include "common/digest.h"
#include "common/file_util.h"
#include "common/json_lite.h"
#include "common/proto_json.h"
#include "common/safetensors.h"
#include "models/spec.h"
#include "common/status.h"
#include "server/coordinator_internal.h"

namespace fl {

namespace fs = std::filesystem;
using coordinator_internal::Log;
using coordinator_internal::Terminal;

namespace {

// Removes `path` if it exists; a failure is logged (the file is only a leftover copy).
void RemoveLogged(Env* env, const std::string& path) {
  absl::Status removed = env->RemoveFile(path);
  if (!removed.ok() && !absl::IsNotFound(removed)) Log(std::string(removed.message()));
}

std::string NewJobId(const std::string& name) {
  std::random_device rd;
  return absl::StrFormat("%s-%08x", name.substr(0, 24), rd());
}

}  // namespace

Coordinator::Coordinator(CoordinatorConfig config, Store* store, CoordinatorMetrics* metrics,
                         ModelInitFn init, Clock* clock, Env* env)
    : config_(std::move(config)),
      store_(store),
      metrics_(metrics),
      init_(std::move(init)),
      clock_(clock),
      env_(env) {}

Coordinator::~Coordinator() { Shutdown(); }

absl::Status Coordinator::Start() {
  for (const char* folder : {"spool", "checkpoints", "initial", "frozen"}) {
    const std::string path = (fs::path(config_.state_dir()) / folder).string();
    RETURN_IF_ERROR(Annotate(MakeDirs(path, 0700, env_), "cannot create the state folders"));
  }
  ASSIGN_OR_RETURN(std::vector<JobStatus> jobs, store_->Jobs());
  ASSIGN_OR_RETURN(std::vector<SiteInfo> sites, store_->Sites());
  {
    absl::MutexLock lock(&mu_);
    for (JobStatus& job : jobs) {
      job_order_.push_back(job.job_id());
      if (job.state() == RUNNING) {
        Log(absl::StrCat("resuming job ", job.job_id(), " after round ", job.rounds_done()));
      }
      jobs_[job.job_id()] = std::move(job);
    }
    for (SiteInfo& site : sites) {
      site.set_connected(false);
      sites_[site.name()].info = std::move(site);
    }
    // Copies left by jobs that ended (a crash before the removal), by a submission cut short,
    // and initial models of jobs that committed a round.
    RemoveCopiesUnless("initial", [](const JobStatus& job) { return job.rounds_done() == 0; });
    RemoveCopiesUnless("frozen", [](const JobStatus&) { return true; });
  }
  scheduler_ = std::thread([this] { SchedulerLoop(); });
  return absl::OkStatus();
}

void Coordinator::Shutdown() {
  {
    absl::MutexLock lock(&mu_);
    shutdown_ = true;
  }
  {
    absl::MutexLock lock(&transfer_mu_);
    transfers_closed_ = true;
  }
  if (scheduler_.joinable()) scheduler_.join();
}

// ---------------------------------------------------------------------------------------------
// Admin

absl::StatusOr<JobStatus> Coordinator::SubmitJob(const Identity& who, const JobSpec& spec) {
  JobStatus job;
  job.set_job_id(NewJobId(spec.name()));
  ASSIGN_OR_RETURN(JobSpec valid, ValidateJobSpecForModel(spec, InitialModelPath(job.job_id())));
  *job.mutable_spec() = valid;
  job.set_state(QUEUED);
  absl::Status kept = valid.has_diffusion() ? KeepFrozenAutoencoder(job) : absl::OkStatus();
  if (kept.ok()) kept = store_->PutJob(job);
  if (!kept.ok()) {
    RemoveJobCopies(job.job_id());
    return kept;
  }
  RETURN_IF_ERROR(store_->Audit(who.name, "submit-job", job.job_id()));
  absl::MutexLock lock(&mu_);
  jobs_[job.job_id()] = job;
  job_order_.push_back(job.job_id());
  Log(absl::StrCat(who.name, " submitted job ", job.job_id()));
  return job;
}

std::string Coordinator::InitialModelPath(const std::string& job_id) const {
  return (fs::path(config_.state_dir()) / "initial" / (job_id + ".safetensors")).string();
}

void Coordinator::RemoveInitialModel(const std::string& job_id) {
  RemoveLogged(env_, InitialModelPath(job_id));
}

std::string Coordinator::FrozenModelPath(const std::string& job_id) const {
  return (fs::path(config_.state_dir()) / "frozen" / (job_id + ".safetensors")).string();
}

void Coordinator::RemoveJobCopies(const std::string& job_id) {
  RemoveInitialModel(job_id);
  RemoveLogged(env_, FrozenModelPath(job_id));
}

void Coordinator::RemoveCopiesUnless(const std::string& folder,
                                     const std::function<bool(const JobStatus&)>& keep) {
  const fs::path dir = fs::path(config_.state_dir()) / folder;
  for (const std::string& name : env_->ListDir(dir.string()).value_or(std::vector<std::string>())) {
    auto job = jobs_.find(fs::path(name).stem().string());
    if (job == jobs_.end() || Terminal(job->second.state()) || !keep(job->second)) {
      RemoveLogged(env_, (dir / name).string());
    }
  }
}

absl::Status Coordinator::KeepFrozenAutoencoder(JobStatus& job) {
  const std::string& source = job.spec().diffusion().autoencoder_job();
  absl::StatusOr<JobStatus> autoencoder = GetJob(source);
  if (!autoencoder.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("diffusion.autoencoder_job: there is no job ", source));
  }
  if (autoencoder->state() != DONE) {
    return absl::FailedPreconditionError(absl::StrCat(
        "diffusion.autoencoder_job: job ", source, " is ", JobState_Name(autoencoder->state()),
        "; a diffusion job trains on the model of a finished (DONE) autoencoder job"));
  }
  RETURN_IF_ERROR(FrozenAutoencoderSpec(job.spec(), autoencoder->spec()).status());
  // That job's best model by validation, else its last.
  Checkpoint model{BestPath(source, autoencoder->best_round()), 0, autoencoder->best_round()};
  if (model.round == 0) {
    ASSIGN_OR_RETURN(model, store_->LatestCheckpoint(source));
  }
  // The copy is what is checked (it loads into the autoencoder's model: names, shapes, finite
  // values) and what the sites get, whatever becomes of the other job's files.
  const std::string copy = FrozenModelPath(job.job_id());
  absl::StatusOr<std::string> bytes = ReadFileToString(model.path, env_);
  if (!bytes.ok()) return Annotate(bytes.status(), "reading the autoencoder job's model");
  absl::Status checked = WriteFileAtomic(copy, *bytes, 0600, env_);
  absl::StatusOr<TensorList> weights = absl::InternalError("not read");
  if (checked.ok()) {
    JobSpec from_copy = autoencoder->spec();
    from_copy.set_initial_model(copy);
    checked = init_(from_copy).status();
  }
  if (checked.ok()) {
    weights = ReadSafetensors(copy, nullptr, env_);
    checked = weights.status();
  }
  if (!checked.ok()) {
    RemoveLogged(env_, copy);
    return Annotate(checked, absl::StrCat("the model of autoencoder job ", source));
  }
  *job.mutable_frozen_spec() = autoencoder->spec();
  job.set_frozen_round(model.round);
  job.set_frozen_digest(TensorDigest(*weights));
  return absl::OkStatus();
}

absl::StatusOr<JobSpec> Coordinator::ValidateJobSpecForModel(const JobSpec& spec,
                                                             const std::string& initial_copy) {
  ASSIGN_OR_RETURN(JobSpec valid, ValidateJobSpec(spec));
  // Building the model once checks the name and the sizes before the job is queued.
  if (valid.initial_model().empty()) {
    RETURN_IF_ERROR(init_(valid).status());
    return valid;
  }
  // The file is read once: the copy is what is checked and what the job starts from.
  absl::StatusOr<std::string> bytes = ReadFileToString(valid.initial_model(), env_);
  if (!bytes.ok()) return Annotate(bytes.status(), "initial_model");
  if (absl::Status kept = WriteFileAtomic(initial_copy, *bytes, 0600, env_); !kept.ok()) {
    RemoveLogged(env_, initial_copy);  // in place when only the folder's fsync failed
    return Annotate(kept, "keeping a copy of initial_model");
  }
  JobSpec from_copy = valid;
  from_copy.set_initial_model(initial_copy);
  if (absl::Status built = init_(from_copy).status(); !built.ok()) {
    RemoveLogged(env_, initial_copy);
    // Messages name the file as submitted, not the copy.
    return absl::Status(built.code(), absl::StrReplaceAll(built.message(),
                                                          {{initial_copy, valid.initial_model()}}));
  }
  return valid;
}

std::vector<JobStatus> Coordinator::ListJobs() {
  absl::MutexLock lock(&mu_);
  std::vector<JobStatus> out;
  for (const std::string& id : job_order_) out.push_back(WithCurrentTasks(jobs_[id]));
  return out;
}

absl::StatusOr<JobStatus> Coordinator::GetJob(const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(job_id);
  if (it == jobs_.end()) return absl::NotFoundError(absl::StrCat("no job ", job_id));
  return WithCurrentTasks(it->second);
}

absl::StatusOr<JobStatus> Coordinator::CancelJob(const Identity& who, const std::string& job_id) {
  ASSIGN_OR_RETURN(
      JobStatus cancelled, ChangeJob(job_id, [&](JobStatus& job) {
        if (Terminal(job.state())) {
          return absl::FailedPreconditionError(absl::StrCat("job ", job_id, " already ended"));
        }
        job.set_state(CANCELLED);
        job.set_message(absl::StrCat("cancelled by ", who.name));
        return absl::OkStatus();
      }));
  RemoveJobCopies(job_id);
  RETURN_IF_ERROR(store_->Audit(who.name, "cancel-job", job_id));
  return cancelled;
}

std::vector<SiteInfo> Coordinator::ListSites() {
  absl::MutexLock lock(&mu_);
  std::vector<SiteInfo> out;
  for (const auto& [name, site] : sites_) out.push_back(site.info);
  return out;
}

namespace {

// The model card a researcher needs to use the exported weights: the model after `round` rounds.
std::string Sidecar(const JobStatus& job, uint32_t round) {
  const JobSpec& spec = job.spec();
  ModelCard card;
  card.set_job_id(job.job_id());
  card.set_workload(WorkloadName(spec));
  card.set_input_size(spec.image_size());
  card.set_in_channels(spec.in_channels());
  card.set_rounds(round);
  if (round >= 1 && round <= static_cast<uint32_t>(job.rounds_size())) {
    const Selection selection = SelectionFor(spec);
    const double score =
        coordinator_internal::SelectionScore(selection, job.rounds(static_cast<int>(round) - 1));
    if (!std::isnan(score)) {
      card.set_selection_metric(selection.metric);
      card.set_selection_score(score);
    }
  }
  card.set_preprocessing(
      "DICOM pixel data -> modality LUT -> VOI window (first in file, else VOI LUT, else "
      "min-max) -> MONOCHROME1 inverted -> area resize to input_size x input_size -> scale to "
      "[0, 1]");
  if (HasLabelHead(spec)) {
    card.set_architecture(spec.model());
    *card.mutable_labels() = spec.labels();
    card.set_head_mode(spec.head_mode() == HEAD_MODE_SITE ? "site" : "label");
    card.set_output("one logit per label; sigmoid gives the probability");
  } else if (spec.has_diffusion()) {
    card.set_architecture("latent_unet");
    *card.mutable_labels() = spec.labels();
    *card.mutable_diffusion() = spec.diffusion();
    card.set_output(
        "the predicted noise of a noised latent of the frozen autoencoder "
        "(diffusion.autoencoder_job) at step t, for a condition over the labels (negative, "
        "positive or unknown per label)");
  } else {
    card.set_architecture(spec.autoencoder().variational() ? "kl_vae" : "autoencoder");
    *card.mutable_autoencoder() = spec.autoencoder();
    card.set_output("the reconstructed image, input_size x input_size, in [0, 1]");
  }
  return ToJson(card);
}

absl::Status StreamFile(Env* env, const std::string& name, const std::string& path,
                        size_t chunk_bytes, const std::function<bool(const FileChunk&)>& emit) {
  ASSIGN_OR_RETURN(std::unique_ptr<RandomAccessFile> in, env->NewRandomAccessFile(path));
  ASSIGN_OR_RETURN(const uint64_t size, in->Size());
  std::string buffer(chunk_bytes, '\0');
  FileChunk chunk;
  for (uint64_t offset = 0; offset < size;) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(buffer.size(), size - offset));
    RETURN_IF_ERROR(in->ReadAt(offset, n, buffer.data()));
    chunk.set_file(name);
    chunk.set_offset(offset);
    chunk.set_data(buffer.data(), n);
    offset += n;
    if (!emit(chunk)) return absl::CancelledError("export stream closed by the peer");
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status Coordinator::ExportModel(const Identity& who, const std::string& job_id, bool best,
                                      const std::function<bool(const FileChunk&)>& emit) {
  ASSIGN_OR_RETURN(JobStatus job, GetJob(job_id));
  std::string path;
  uint32_t round = job.rounds_done();
  if (best) {
    if (job.best_round() == 0) {
      return absl::NotFoundError(absl::StrCat("job ", job_id,
                                              " has no best model yet: no round's model has "
                                              "validation figures from the sites"));
    }
    round = job.best_round();
    path = BestPath(job_id, round);
  } else {
    ASSIGN_OR_RETURN(Checkpoint checkpoint, store_->LatestCheckpoint(job_id));
    path = checkpoint.path;
    round = checkpoint.round;
  }
  RETURN_IF_ERROR(store_->Audit(who.name, best ? "export-best-model" : "export-model", job_id));
  RETURN_IF_ERROR(StreamFile(env_, "model.safetensors", path, config_.chunk_bytes(), emit));
  FileChunk sidecar;
  sidecar.set_file("model.json");
  sidecar.set_data(Sidecar(job, round));
  if (!emit(sidecar)) return absl::CancelledError("export stream closed by the peer");
  return absl::OkStatus();
}

}  // namespace fl
