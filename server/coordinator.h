// The coordinator's core: sites, the job queue, the round state machine and streaming
// aggregation. No gRPC here: server/service.cc adapts these calls to the wire, and tests call
// them directly. Every method is thread-safe.
#pragma once

#include <cstdio>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/clock.h"
#include "common/env.h"
#include "common/identity.h"
#include "common/tensor.h"
#include "fl/config.pb.h"
#include "fl/federation.pb.h"
#include "server/aggregator.h"
#include "server/metrics.h"
#include "server/store.h"

namespace fl {

// A job's freshly initialised model, from the model registry (kept out of this torch-free core).
struct ModelInit {
  TensorList weights;
  std::string head_prefix;
};
using ModelInitFn = std::function<absl::StatusOr<ModelInit>(const JobSpec& spec)>;

class Coordinator {
 public:
  // REQUIRES: `config` validated; `store`, `metrics`, `clock` and `env` outlive the coordinator.
  // `clock` times the pauses between a round's tries (tests pass a ManualClock); every file
  // under state_dir (spools, checkpoints, moments, initial models) goes through `env` (tests
  // pass a FaultEnv), the store's SQLite file through SQLite's own I/O.
  Coordinator(CoordinatorConfig config, Store* store, CoordinatorMetrics* metrics, ModelInitFn init,
              Clock* clock = &SystemClock(), Env* env = Env::Default());
  ~Coordinator();

  // Loads jobs from the store (a job that was running resumes from its last committed round)
  // and starts the scheduler thread.
  absl::Status Start();
  // Stops the scheduler and ends every task stream. Idempotent.
  void Shutdown();

  // ---- sites (identity from the peer certificate) ----
  absl::StatusOr<JoinResponse> Join(const Identity& who, const JoinRequest& request);
  // Delivers tasks and keepalives through `send` until it returns false, `cancelled()` is true,
  // a newer stream of the same site replaces this one, or Shutdown.
  absl::Status StreamTasks(const Identity& who, const std::function<bool(const Task&)>& send,
                           const std::function<bool()>& cancelled);
  absl::Status Decline(const Identity& who, const DeclineRequest& request);
  // Streams the round's global model through `emit` once a transfer slot is free; gives up
  // waiting when `cancelled()` turns true (the site went away).
  absl::Status Download(const Identity& who, const DownloadRequest& request,
                        const std::function<bool(const TensorChunk&)>& emit,
                        const std::function<bool()>& cancelled);
  // One upload stream as the core sees it.
  struct UploadStream {
    std::function<bool(UploadMessage*)> next;  // false at end of stream
    std::function<bool()> grant;               // tells the site to send its chunks; false: gone
    std::function<bool()> cancelled;           // the site went away (polled while it waits)
  };
  // Reads the header, checks it, waits for a transfer slot, grants, then reads the chunks.
  // Nothing reaches the aggregate until the whole update has been received and validated.
  absl::StatusOr<UploadResponse> Upload(const Identity& who, const UploadStream& stream);
  absl::Status Report(const Identity& who, const MetricsReport& report);
  // Records the site's phase and training progress in its task of the open round (checked as
  // federation.proto's ProgressRequest says); JobStatus.current shows it.
  absl::Status Progress(const Identity& who, const ProgressRequest& request);

  // ---- admins ----
  absl::StatusOr<JobStatus> SubmitJob(const Identity& who, const JobSpec& spec);
  std::vector<JobStatus> ListJobs();
  absl::StatusOr<JobStatus> GetJob(const std::string& job_id);
  absl::StatusOr<JobStatus> CancelJob(const Identity& who, const std::string& job_id);
  std::vector<SiteInfo> ListSites();
  // The job's latest committed model (or, with `best`, the best by validation: NOT_FOUND when
  // there is none yet) as safetensors, then its JSON sidecar.
  absl::Status ExportModel(const Identity& who, const std::string& job_id, bool best,
                           const std::function<bool(const FileChunk&)>& emit);

 private:
  struct SiteState {
    SiteInfo info;
    std::vector<Task> pending;
    uint64_t stream_id = 0;  // the open stream; 0 when none
  };
  struct RoundState;

  // Validates `spec` and builds its model once. A job's initial_model is copied to
  // `initial_copy` (InitialModelPath), and the model is built from the copy; on error no copy is
  // left.
  absl::StatusOr<JobSpec> ValidateJobSpecForModel(const JobSpec& spec,
                                                  const std::string& initial_copy);
  void SchedulerLoop();
  absl::Status RunJob(const std::string& job_id);
  absl::Status PrepareModel(const JobStatus& job);
  absl::Status WaitForSites(const std::string& job_id, const JobSpec& spec);
  absl::Status RunRound(const std::string& job_id, uint32_t round, uint32_t attempt,
                        bool evaluate_only);
  // Applies the round's aggregate and commits the next model (checkpoint, moments, store).
  absl::Status CloseRound(const std::string& job_id, uint32_t round);
  absl::Status CommitNextModel(const std::string& job_id, uint32_t round)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(fold_mu_);
  // Head rows (label indexes) of an upload's labels; each must be one this site trains.
  absl::StatusOr<std::vector<size_t>> LabelRows(const std::string& site, const UploadHeader& header)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // What an admitted upload must carry and how it is bounded.
  struct UploadPlan {
    std::vector<TensorMeta> expected;
    std::vector<size_t> rows;  // head rows of its labels
    double max_norm = 0;
    double clip_norm = 0;
    uint32_t attempt = 0;
    uint64_t mean_weight = 0;  // its weight in the exact mean; 0 under a robust rule
  };
  // The refusal (FAILED_PRECONDITION) of an update for round `round` of `job_id` when that
  // round is not open, marked as stale so that it is counted apart from rejections; its message
  // says whether the job will still run that round (after a restart, a pause between tries).
  absl::Status StaleRound(const std::string& job_id, uint32_t round)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Checks an upload's header against the open round and marks the site as uploading.
  absl::StatusOr<UploadPlan> AdmitUpload(const Identity& who, const UploadHeader& header);
  // Validates the chunk stream against `plan` while writing it to `spool`; returns the
  // update's L2 norm.
  absl::StatusOr<double> ReceiveToSpool(const std::function<bool(UploadMessage*)>& next,
                                        const UploadPlan& plan, const std::string& spool,
                                        uint64_t* bytes);
  // Folds a complete, validated update of `bytes` bytes spooled at `path`, scaled by `scale`,
  // into attempt `attempt` of the open round (refused if the round moved on meanwhile).
  // Under a robust rule (median, trimmed mean) it checks the spool and writes the receipt, and
  // the round's spools are combined only when it closes.
  absl::Status FoldSpool(const std::string& path, const UploadHeader& header,
                         const std::string& site, const std::vector<size_t>& rows, uint64_t bytes,
                         double scale, uint32_t attempt);
  // Folds the update read from `in` into `aggregator`; on an error (a read error: DATA_LOSS)
  // the aggregate holds part of it.
  absl::Status FoldFile(Aggregator* aggregator, const RandomAccessFile& in) const;
  // The open round's weighted-mean aggregate (null under a robust rule).
  Aggregator* MeanAggregator();
  // Under a robust rule, the open round's spools combined (median or trimmed mean) and ready
  // for Apply; null under the weighted mean. DATA_LOSS when a spool cannot be read.
  absl::StatusOr<std::unique_ptr<Aggregator>> CombineRobust();
  std::vector<std::string> EligibleSites(const JobSpec& spec) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The job labels `site` trains (the workload's rule, models/spec.h TrainLabelsFor); nullopt
  // when the site has nothing to train in the job. TrainLabels: none in that case.
  std::optional<std::vector<std::string>> SiteTrainLabels(const JobSpec& spec,
                                                          const std::string& site) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::vector<std::string> TrainLabels(const JobSpec& spec, const std::string& site) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Stores the job with `change` applied (outside mu_: an fsync must not stall every site), then
  // applies it in memory too; `change` runs under mu_ and must be idempotent. A change that
  // returns an error, or a failed write, leaves the job as it was. Under job_write_mu_, so that
  // the store always ends with the latest state: two changes cannot be stored in the other order
  // (a cancel overwritten by an older copy would resume the job).
  absl::StatusOr<JobStatus> ChangeJob(const std::string& job_id,
                                      const std::function<absl::Status(JobStatus&)>& change);
  // OK when `site` may report `report` now: FAILED_PRECONDITION for a round that is not open,
  // PERMISSION_DENIED for a site without its task, ALREADY_EXISTS when it reported on this round
  // already, INVALID_ARGUMENT for figures it cannot have (see federation.proto, Report).
  absl::Status CheckReport(const std::string& site, const MetricsReport& report)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Records `site`'s report in `job`: as the site's latest, and beside the others of its round,
  // whose figures are combined again. ALREADY_EXISTS when the round holds one of the site's.
  absl::Status AttachReport(JobStatus& job, const std::string& site, const MetricsReport& report)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Counts and logs a report refused for its content or timing (stale or rejected); other
  // errors (this side's, e.g. the store failed) are not counted.
  void CountReportRefusal(const std::string& site, const absl::Status& status);
  bool JobCancelled(const std::string& job_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Waits `seconds` on clock_; false (at once) when the job is cancelled or the coordinator
  // shuts down.
  bool PauseUnlessCancelled(const std::string& job_id, double seconds);
  // Runs round `round` of the job until it commits, pausing and trying again as
  // config.round_retry() says when it loses its quorum; the error of the last try otherwise.
  absl::Status RunTrainingRound(const std::string& job_id, uint32_t round);
  std::string CheckpointPath(const std::string& job_id, uint32_t round) const;
  // Model selection (coordinator_selection.cc). The best model's second name, which outlives
  // its round's checkpoint.
  std::string BestPath(const std::string& job_id, uint32_t round) const;
  // When the model after `done` rounds (its checkpoint on disk, its validation figures in
  // job.rounds[done - 1]) beats the job's best: links it as the best and records it in `job`.
  // Returns the former best's path, to remove once `job` is stored ("" when none or unchanged).
  absl::StatusOr<std::string> KeepIfBest(JobStatus& job, uint32_t done);
  // After the final evaluation: the last model, if it is the best, recorded and stored.
  absl::Status KeepFinalIfBest(const std::string& job_id);
  // Deletes the spool files of every attempt of a committed round.
  void RemoveSpools(const std::string& job_id, uint32_t round);
  std::string SpoolPath(const std::string& job_id, uint32_t round, uint32_t attempt,
                        const std::string& site) const;
  // Folds again the updates an earlier attempt of the open round received (before a restart or
  // a retry), so those sites need not train again. Returns the sites carried over.
  std::set<std::string> CarryOverUpdates();
  // The open round's task for `site`.
  Task MakeTask(const std::string& site) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Task phases (coordinator_progress.cc). Sets the phase of `site`'s task in round `round` of
  // `job_id`, a phase the coordinator saw itself (a download, an upload, a decline); nothing
  // when that round is not the open one or `site` has no task in it.
  void MarkPhase(const std::string& job_id, uint32_t round, const std::string& site,
                 TaskPhase phase, const std::string& reason = "")
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // OK when `site` may send `request` now (see federation.proto, ProgressRequest).
  absl::Status CheckProgress(const std::string& site, const ProgressRequest& request) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // `job` with its open round's site tasks (JobStatus.current) when it is the running one.
  JobStatus WithCurrentTasks(JobStatus job) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const CoordinatorConfig config_;
  Store* const store_;
  CoordinatorMetrics* const metrics_;
  const ModelInitFn init_;
  Clock* const clock_;
  Env* const env_;

  absl::Mutex mu_;
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t next_stream_id_ ABSL_GUARDED_BY(mu_) = 1;
  std::map<std::string, SiteState> sites_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, JobStatus> jobs_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> job_order_ ABSL_GUARDED_BY(mu_);
  // The running job's model and round.
  std::shared_ptr<const TensorList> global_ ABSL_GUARDED_BY(mu_);
  std::string head_prefix_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<RoundState> round_ ABSL_GUARDED_BY(mu_);
  OptimizerMoments moments_;  // only the scheduler thread touches it

  // The copy of a job's initial_model taken at submission, which the job starts from; removed
  // once its first round is committed (checkpoints take over) or the job ends, and at start-up
  // for jobs past that or never stored.
  std::string InitialModelPath(const std::string& job_id) const;
  void RemoveInitialModel(const std::string& job_id);
  // A diffusion job's frozen autoencoder, copied at submission (KeepFrozenAutoencoder) and
  // served to its sites until the job ends.
  std::string FrozenModelPath(const std::string& job_id) const;
  // Fixes the frozen autoencoder of diffusion job `job` (not stored yet): the named job must be
  // DONE and fit (FrozenAutoencoderSpec); its best model (else its last) is copied to
  // FrozenModelPath, checked by loading it, and recorded in `job` with its digest.
  absl::Status KeepFrozenAutoencoder(JobStatus& job);
  // Removes every copy kept for the job (initial model, frozen autoencoder).
  void RemoveJobCopies(const std::string& job_id);
  // At start-up: removes the files in state_dir/`folder` (named JOB.safetensors) of jobs that
  // are unknown, ended, or for which `keep` is false.
  void RemoveCopiesUnless(const std::string& folder,
                          const std::function<bool(const JobStatus&)>& keep)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Waits for one of config.max_concurrent_transfers() transfer slots; the returned guard frees
  // it. Gives up on Shutdown (UNAVAILABLE) or once `cancelled` returns true (CANCELLED; polled
  // every second).
  struct TransferSlot;
  absl::StatusOr<std::unique_ptr<TransferSlot>> AcquireTransferSlot(
      const std::function<bool()>& cancelled);
  absl::Mutex transfer_mu_;
  uint32_t transfers_ ABSL_GUARDED_BY(transfer_mu_) = 0;
  bool transfers_closed_ ABSL_GUARDED_BY(transfer_mu_) = false;

  // Serialises folding into the aggregate and applying it.
  absl::Mutex fold_mu_ ABSL_ACQUIRED_BEFORE(job_write_mu_, mu_);
  // Held from a change to a job in jobs_ until it is stored (ChangeJob, CommitNextModel).
  absl::Mutex job_write_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  std::thread scheduler_;
};

}  // namespace fl
