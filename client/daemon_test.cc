// The site core against an in-process coordinator: the order that makes DP real ("recorded
// before any byte is sent") under each failure, and the policy's refusals before any download.
// The ledger is a real SQLite file; time is a ManualClock, so back-off pauses take no time.
#include "client/daemon.h"

#include <sqlite3.h>
#include <unistd.h>

#include <deque>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/digest.h"
#include "common/fault_env.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "prometheus/registry.h"
#include "privacy/rdp_accountant.h"

namespace fl {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

constexpr char kJob[] = "cxr-1";
constexpr double kDelta = 1e-5;

// What the fake coordinator saw, shared by every connection the daemon dials.
struct Coordinator {
  std::deque<Task> tasks;                        // handed out in order, then the stream ends
  std::deque<absl::Status> upload_results;       // per Upload call; empty: OK
  std::vector<std::string> events;               // "download", "upload", "decline: <reason>", ...
  std::vector<int64_t> ledger_rounds_at_upload;  // rounds the ledger held when each upload began
  std::function<int64_t()> ledger_rounds;
  TensorList frozen = {{"encoder.w", {3}, {1, 2, 3}}};  // what a frozen download returns
  std::vector<UploadHeader> headers;                    // of every upload, in order
  // Every call in order: the events, and each progress message as "<phase> <done>/<total>".
  std::vector<std::string> timeline;
  std::vector<ProgressRequest> progress;
  absl::Status progress_status;  // what every Progress call returns
  void Event(const std::string& event) {
    events.push_back(event);
    timeline.push_back(event);
  }
};

class FakeConnection : public CoordinatorConnection {
 public:
  explicit FakeConnection(Coordinator* c) : c_(c) {}
  absl::StatusOr<JoinResponse> Join(const JoinRequest&) override {
    c_->Event("join");
    JoinResponse response;
    response.set_site_name("site-a");
    return response;
  }
  bool NextTask(Task* task) override {
    if (cancelled_ || c_->tasks.empty()) return false;
    *task = c_->tasks.front();
    c_->tasks.pop_front();
    return true;
  }
  absl::Status FinishTasks() override { return absl::UnavailableError("stream ended"); }
  void CancelTasks() override { cancelled_ = true; }
  absl::StatusOr<TensorList> Download(const DownloadRequest& request, uint64_t) override {
    if (request.frozen()) {
      c_->Event("download frozen");
      return c_->frozen;
    }
    c_->Event("download");
    return TensorList{{"w", {2}, {0.5f, -0.5f}}};
  }
  absl::StatusOr<UploadResponse> Upload(const UploadHeader& header,
                                        std::shared_ptr<const TensorList> update) override {
    c_->Event("upload");
    c_->headers.push_back(header);
    c_->ledger_rounds_at_upload.push_back(c_->ledger_rounds());
    EXPECT_EQ(update->size(), 1u);
    absl::Status result = absl::OkStatus();
    if (!c_->upload_results.empty()) {
      result = c_->upload_results.front();
      c_->upload_results.pop_front();
    }
    if (!result.ok()) return result;
    UploadResponse response;
    response.set_bytes_received(8);
    last_privacy_ = header.privacy();
    return response;
  }
  absl::Status Report(const MetricsReport&) override {
    c_->Event("report");
    return absl::OkStatus();
  }
  absl::Status Decline(const DeclineRequest& request) override {
    c_->Event("decline: " + request.reason());
    return absl::OkStatus();
  }
  absl::Status Progress(const ProgressRequest& request) override {
    c_->timeline.push_back(absl::StrCat(
        absl::AsciiStrToLower(absl::StripPrefix(TaskPhase_Name(request.phase()), "TASK_PHASE_")),
        " ", request.steps_done(), "/", request.steps_total()));
    c_->progress.push_back(request);
    return c_->progress_status;
  }
  PrivacyReport last_privacy_;

 private:
  Coordinator* c_;
  bool cancelled_ = false;
};

class FakeTrainer : public LocalTrainer {
 public:
  using LocalTrainer::Train;
  absl::StatusOr<TrainResult> Train(const std::string&, const JobSpec& spec,
                                    const std::vector<std::string>& labels, const TensorList&,
                                    uint32_t, const TrainProgressFn& progress) override {
    ++trained;
    if (!train_status.ok()) return train_status;
    const int steps = static_cast<int>(spec.local_steps());
    for (int s = 1; s <= steps && progress; ++s) {
      if (on_step) on_step();
      progress({s, steps, static_cast<uint64_t>(7 * s)});  // 7 samples a step
    }
    TrainResult result;
    result.update = {{"w", {2}, {0.25f, 0.125f}}};
    result.num_samples = 40;
    result.loss = 0.5;
    result.labels = labels;
    return result;
  }
  absl::StatusOr<MetricsReport> Evaluate(const std::string&, const JobSpec&,
                                         const std::vector<std::string>&,
                                         const TensorList&) override {
    if (!evaluate_status.ok()) return evaluate_status;
    return MetricsReport();
  }
  std::string Hardware() const override { return "cpu:1 threads"; }
  int trained = 0;
  std::function<void()> on_step;  // called before each step's progress
  absl::Status evaluate_status;   // what Evaluate returns when not OK
  absl::Status train_status;      // what Train returns when not OK
};

Dataset MakeData(int images) {
  Dataset data;
  data.label_names = {"cardiomegaly"};
  for (int i = 0; i < images; ++i) {
    Sample s;
    s.sop_instance_uid = "1.2.826.0.1." + std::to_string(i);
    s.patient_id = "P" + std::to_string(i);
    s.labels = {static_cast<float>(i % 2)};
    (i % 5 == 0 ? data.test : data.train).push_back(s);
  }
  return data;
}

Task MakeTask(bool dp, double sigma = 1.0) {
  Task task;
  task.set_job_id(kJob);
  task.set_round(0);
  task.set_deadline_unix_seconds(1'700'000'000 + 600);  // the ManualClock's start + 10 min
  task.add_train_labels("cardiomegaly");
  JobSpec& spec = *task.mutable_spec();
  spec.set_name("cxr");
  spec.set_rounds(3);
  spec.set_local_steps(5);
  spec.set_batch_size(8);
  spec.add_labels("cardiomegaly");
  if (dp) {
    spec.mutable_dp()->set_enabled(true);
    spec.mutable_dp()->set_noise_multiplier(sigma);
    spec.mutable_dp()->set_clip_norm(1.0);
    spec.mutable_dp()->set_delta(kDelta);
  }
  return task;
}

class SiteCoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = testing::UnitTest::GetInstance()->current_test_info();
    dir_ = std::filesystem::path(testing::TempDir()) /
           (std::string("site_core_") + info->name() + "_" + std::to_string(getpid()));
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    auto ledger = PrivacyLedger::Open((dir_ / "privacy.db").string());
    ASSERT_TRUE(ledger.ok()) << ledger.status();
    ledger_ = std::move(*ledger);
    config_.set_coordinator_address("127.0.0.1:1");
    config_.set_max_backoff_seconds(30);
    config_.set_state_dir(dir_.string());
    coordinator_.ledger_rounds = [this] { return ledger_->Get(kJob, dataset_id_)->rounds; };
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // Runs the daemon over the queued tasks (it stops after the last one).
  void Run() {
    ASSERT_FALSE(coordinator_.tasks.empty());
    config_.set_exit_after_tasks(static_cast<uint32_t>(coordinator_.tasks.size()));
    auto id = BindDatasetId(config_, data_, *ledger_);
    ASSERT_TRUE(id.ok()) << id.status();
    dataset_id_ = *id;
    ClientDaemon daemon(
        config_, [this] { return std::make_unique<FakeConnection>(&coordinator_); }, dataset_id_,
        &data_, &trainer_, ledger_.get(), &metrics_, &clock_, frozen_, &env_);
    ASSERT_TRUE(daemon.Run().ok());
  }

  // Makes every write to the ledger's rounds fail inside SQLite, as a failing disk would.
  void BreakLedgerWrites() {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open((dir_ / "privacy.db").c_str(), &db), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(db,
                           "CREATE TRIGGER fail BEFORE INSERT ON rounds "
                           "BEGIN SELECT RAISE(ABORT, 'disk I/O error (injected)'); END;",
                           nullptr, nullptr, nullptr),
              SQLITE_OK);
    sqlite3_close(db);
  }

  int64_t RecordedRounds() { return ledger_->Get(kJob, dataset_id_)->rounds; }

  std::filesystem::path dir_;
  std::unique_ptr<PrivacyLedger> ledger_;
  ClientConfig config_;
  Dataset data_ = MakeData(50);
  FakeTrainer trainer_;
  prometheus::Registry registry_;
  ClientMetrics metrics_{registry_};
  ManualClock clock_;
  Coordinator coordinator_;
  std::string dataset_id_;
  FrozenModelCache* frozen_ = nullptr;
  FaultEnv env_;  // the daemon's files in state_dir
};

TEST_F(SiteCoreTest, ADpRoundIsRecordedBeforeAnyByteIsSent) {
  coordinator_.tasks.push_back(MakeTask(/*dp=*/true));
  Run();
  EXPECT_THAT(coordinator_.events, ElementsAre("join", "download", "upload"));
  EXPECT_THAT(coordinator_.ledger_rounds_at_upload, ElementsAre(1));
  EXPECT_EQ(RecordedRounds(), 1);
  // Nothing from the private batches but the noised update: no loss, and the weight is the
  // train split's size (declared at Join), not the samples this round happened to draw.
  ASSERT_EQ(coordinator_.headers.size(), 1u);
  EXPECT_FALSE(coordinator_.headers[0].has_train_loss());
  EXPECT_EQ(coordinator_.headers[0].num_samples(), data_.train.size());
}

TEST_F(SiteCoreTest, ALedgerThatCannotRecordDeclinesAndSendsNothing) {
  coordinator_.tasks.push_back(MakeTask(/*dp=*/true));
  BreakLedgerWrites();
  Run();
  ASSERT_EQ(coordinator_.events.size(), 3u);
  EXPECT_EQ(coordinator_.events[1], "download");
  EXPECT_THAT(coordinator_.events[2], HasSubstr("decline: cannot record the round's privacy"));
  EXPECT_EQ(RecordedRounds(), 0);
}

// The coordinator away mid-upload (restarting, its disk full): the same update is sent again
// after back-off on the clock, never retrained and never recorded twice.
TEST_F(SiteCoreTest, AnUploadThatFailsIsSentAgainWithoutRetrainingOrASecondCost) {
  coordinator_.tasks.push_back(MakeTask(/*dp=*/true));
  coordinator_.upload_results = {absl::UnavailableError("coordinator restarting"),
                                 absl::ResourceExhaustedError("coordinator disk full")};
  Run();
  EXPECT_THAT(coordinator_.events, ElementsAre("join", "download", "upload", "upload", "upload"));
  EXPECT_THAT(coordinator_.ledger_rounds_at_upload, ElementsAre(1, 1, 1));
  EXPECT_EQ(trainer_.trained, 1);
  EXPECT_EQ(RecordedRounds(), 1);
  EXPECT_EQ(clock_.slept(), absl::Seconds(1 + 2));
}

// A refused update (invalid, say) is final: not sent again, and its cost stays recorded (the
// update may have reached the coordinator).
TEST_F(SiteCoreTest, ARefusedUploadIsNotSentAgainAndItsCostStays) {
  coordinator_.tasks.push_back(MakeTask(/*dp=*/true));
  coordinator_.upload_results = {absl::InvalidArgumentError("update norm too large")};
  Run();
  EXPECT_THAT(coordinator_.events, ElementsAre("join", "download", "upload"));
  EXPECT_EQ(RecordedRounds(), 1);
}

// The coordinator restarted mid-upload: its round is not open when the update arrives. When it
// asks for the same round again, the kept update goes out: no retraining, no second cost.
TEST_F(SiteCoreTest, AfterACoordinatorRestartTheKeptUpdateIsSentAgainWithoutRetraining) {
  coordinator_.tasks.push_back(MakeTask(/*dp=*/true));
  coordinator_.tasks.push_back(MakeTask(/*dp=*/true));
  coordinator_.upload_results = {
      absl::FailedPreconditionError("round 0 of job cxr-1 is not open (stale round)")};
  Run();
  EXPECT_THAT(coordinator_.events, ElementsAre("join", "download", "upload", "upload"));
  EXPECT_THAT(coordinator_.ledger_rounds_at_upload, ElementsAre(1, 1));
  EXPECT_EQ(trainer_.trained, 1);
  EXPECT_EQ(RecordedRounds(), 1);
}

// The site restarted while the coordinator was away: the update it kept on disk goes out when
// the round is asked for again, neither trained nor paid for a second time.
TEST_F(SiteCoreTest, AfterASiteRestartTheKeptUpdateIsSentWithoutRetraining) {
  coordinator_.tasks.push_back(MakeTask(/*dp=*/true));
  coordinator_.upload_results = {
      absl::FailedPreconditionError("round 0 of job cxr-1 is not open (stale round)")};
  Run();
  EXPECT_TRUE(std::filesystem::exists(dir_ / "kept_update.safetensors"));
  coordinator_.events.clear();
  coordinator_.tasks.push_back(MakeTask(/*dp=*/true));
  Run();  // a new daemon on the same state_dir
  EXPECT_THAT(coordinator_.events, ElementsAre("join", "upload"));
  EXPECT_EQ(trainer_.trained, 1);
  EXPECT_EQ(RecordedRounds(), 1);
  ASSERT_EQ(coordinator_.headers.size(), 2u);  // the same header both times
  EXPECT_EQ(coordinator_.headers[1].SerializeAsString(),
            coordinator_.headers[0].SerializeAsString());
  EXPECT_GT(coordinator_.headers[1].privacy().epsilon(), 0);
  EXPECT_FALSE(std::filesystem::exists(dir_ / "kept_update.safetensors"));  // sent: forgotten
}

// A disk that fills while the update is kept (half of it written, then ENOSPC): nothing torn is
// left in state_dir, the update still goes out from memory, and a restart finds nothing to send.
TEST_F(SiteCoreTest, AKeptUpdateThatCannotBeWrittenIsStillSentAndLeavesNothingTorn) {
  coordinator_.tasks.push_back(MakeTask(/*dp=*/true));
  coordinator_.upload_results = {absl::UnavailableError("coordinator restarting")};
  env_.Inject({.op = FileOp::kWrite,
               .error = ENOSPC,
               .every = true,
               .short_write = true,
               .path_part = "kept_update"});
  Run();
  EXPECT_GT(env_.injected(), 0);
  EXPECT_THAT(coordinator_.events, ElementsAre("join", "download", "upload", "upload"));
  EXPECT_EQ(trainer_.trained, 1);
  EXPECT_EQ(RecordedRounds(), 1);
  for (const auto& entry : std::filesystem::directory_iterator(dir_)) {
    EXPECT_EQ(entry.path().filename().string().find("kept_update"), std::string::npos)
        << entry.path();
  }
}

// A kept update that cannot be read back after a restart (EIO) is dropped: the round is trained
// and paid for again, never sent half-read.
TEST_F(SiteCoreTest, AKeptUpdateThatCannotBeReadIsTrainedAndCountedAgain) {
  coordinator_.tasks.push_back(MakeTask(/*dp=*/true));
  coordinator_.upload_results = {
      absl::FailedPreconditionError("round 0 of job cxr-1 is not open (stale round)")};
  Run();
  ASSERT_TRUE(std::filesystem::exists(dir_ / "kept_update.safetensors"));
  coordinator_.events.clear();
  coordinator_.tasks.push_back(MakeTask(/*dp=*/true));
  env_.Inject({.op = FileOp::kRead, .error = EIO, .path_part = "kept_update"});
  Run();
  EXPECT_EQ(env_.injected(), 1);
  EXPECT_THAT(coordinator_.events, ElementsAre("join", "download", "upload"));
  EXPECT_EQ(trainer_.trained, 2);
  EXPECT_EQ(RecordedRounds(), 2);
  EXPECT_FALSE(std::filesystem::exists(dir_ / "kept_update.safetensors"));
}

// What was kept is for its own job and round only: the next round trains afresh, and an update
// the coordinator refused for good is not kept.
TEST_F(SiteCoreTest, AKeptUpdateServesOnlyItsRound) {
  Task next = MakeTask(/*dp=*/true);
  next.set_round(1);
  coordinator_.tasks = {MakeTask(/*dp=*/true), next, next};
  coordinator_.upload_results = {absl::FailedPreconditionError("not open"),
                                 absl::InvalidArgumentError("update norm too large")};
  Run();
  EXPECT_THAT(coordinator_.events, ElementsAre("join", "download", "upload", "download", "report",
                                               "upload", "download", "report", "upload"));
  EXPECT_EQ(trainer_.trained, 3);
  EXPECT_EQ(RecordedRounds(), 3);  // three trainings, three releases: each one counts
}

TEST_F(SiteCoreTest, ARetryThatWouldMissTheDeadlineIsNotMade) {
  Task task = MakeTask(/*dp=*/true);
  task.set_deadline_unix_seconds(1'700'000'000 + 0.5);
  coordinator_.tasks.push_back(task);
  coordinator_.upload_results = {absl::UnavailableError("coordinator restarting")};
  Run();
  EXPECT_THAT(coordinator_.events, ElementsAre("join", "download", "upload"));
  EXPECT_EQ(clock_.slept(), absl::ZeroDuration());
}

TEST_F(SiteCoreTest, ACapMakesDpRequiredAndANonDpTaskIsDeclinedBeforeAnyDownload) {
  config_.mutable_budget()->set_max_epsilon(8);
  config_.mutable_budget()->set_delta(kDelta);
  coordinator_.tasks.push_back(MakeTask(/*dp=*/false));
  Run();
  ASSERT_EQ(coordinator_.events.size(), 2u);
  EXPECT_THAT(coordinator_.events[1], HasSubstr("decline: site policy: this site trains only "
                                                "with differential privacy"));
  EXPECT_EQ(trainer_.trained, 0);
  EXPECT_TRUE(coordinator_.progress.empty());  // refused before it started: no phase
}

TEST_F(SiteCoreTest, TooLittleNoiseIsDeclinedBeforeAnyDownload) {
  config_.mutable_policy()->set_min_noise_multiplier(0.8);
  coordinator_.tasks.push_back(MakeTask(/*dp=*/true, /*sigma=*/0.5));
  Run();
  ASSERT_EQ(coordinator_.events.size(), 2u);
  EXPECT_THAT(coordinator_.events[1], HasSubstr("noise multiplier 0.5 is below"));
  EXPECT_EQ(RecordedRounds(), 0);
}

TEST_F(SiteCoreTest, ARoundOverTheCapIsDeclinedBeforeAnyDownload) {
  config_.mutable_budget()->set_max_epsilon(0.01);
  config_.mutable_budget()->set_delta(kDelta);
  coordinator_.tasks.push_back(MakeTask(/*dp=*/true));
  Run();
  ASSERT_EQ(coordinator_.events.size(), 2u);
  EXPECT_THAT(coordinator_.events[1], HasSubstr("over the site's cap"));
}

// A final evaluation the site cannot run (here: no test images) is declined with the reason, so
// the coordinator closes the job without waiting for the round's deadline.
TEST_F(SiteCoreTest, AFailedTaskIsDeclinedWithItsReason) {
  Task task = MakeTask(/*dp=*/false);
  task.set_evaluate_only(true);
  coordinator_.tasks.push_back(task);
  trainer_.evaluate_status =
      absl::FailedPreconditionError("the test split is empty: no sample to evaluate on");
  Run();
  ASSERT_EQ(coordinator_.events.size(), 3u);
  EXPECT_EQ(coordinator_.events[1], "download");
  EXPECT_THAT(coordinator_.events[2],
              HasSubstr("decline: cannot evaluate: the test split is empty"));
}

TEST_F(SiteCoreTest, ATrainingThatFailsIsDeclinedWithItsReason) {
  coordinator_.tasks.push_back(MakeTask(/*dp=*/false));
  trainer_.train_status = absl::InternalError("training diverged: the loss is not finite");
  Run();
  EXPECT_THAT(coordinator_.events,
              ElementsAre("join", "download",
                          "decline: training failed: training diverged: the loss is not finite"));
}

// Without a cap and without require_dp, a non-DP task trains (the demo's default).
TEST_F(SiteCoreTest, WithoutACapANonDpTaskTrains) {
  coordinator_.tasks.push_back(MakeTask(/*dp=*/false));
  Run();
  EXPECT_THAT(coordinator_.events, ElementsAre("join", "download", "upload"));
  EXPECT_THAT(coordinator_.ledger_rounds_at_upload, ElementsAre(0));
  ASSERT_EQ(coordinator_.headers.size(), 1u);
  EXPECT_DOUBLE_EQ(coordinator_.headers[0].train_loss(), 0.5);
  EXPECT_EQ(coordinator_.headers[0].num_samples(), data_.train.size());
}

// The data folder moved (or is reached through another path): the same images keep their id,
// so two jobs on them compose into one budget.
TEST_F(SiteCoreTest, TheSameImagesSpendOneBudgetWhereverTheirFolderIs) {
  coordinator_.tasks.push_back(MakeTask(/*dp=*/true));
  Run();
  const std::string first_id = dataset_id_;
  config_.set_data_dir("/mnt/elsewhere/");  // not part of the id
  Task second = MakeTask(/*dp=*/true);
  second.set_job_id("cxr-2");
  coordinator_.tasks.push_back(second);
  Run();
  EXPECT_EQ(dataset_id_, first_id);
  RdpAccountant both;
  const double q = 8.0 / data_.train.size();
  both.AddSteps(q, 1.0, 10);
  EXPECT_NEAR(*ledger_->Epsilon(std::nullopt, first_id, kDelta), *both.Epsilon(kDelta), 1e-9);
}

TEST_F(SiteCoreTest, AnotherIdForTheSameImagesIsRefusedWithTheIdToUse) {
  config_.set_dataset_id("hospital-a-cxr");
  coordinator_.tasks.push_back(MakeTask(/*dp=*/true));
  Run();
  config_.set_dataset_id("hospital-a-cxr-moved");
  auto id = BindDatasetId(config_, data_, *ledger_);
  ASSERT_FALSE(id.ok());
  EXPECT_THAT(id.status().message(), HasSubstr("set dataset_id: \"hospital-a-cxr\""));
  config_.clear_dataset_id();  // the site's default id is another id too
  EXPECT_FALSE(BindDatasetId(config_, data_, *ledger_).ok());
}

}  // namespace
}  // namespace fl

namespace fl {
namespace {

// A diffusion job's task: it names the frozen autoencoder of job vae-1 by `digest`.
Task DiffusionTask(uint32_t round, const std::string& digest) {
  Task task = MakeTask(/*dp=*/false);
  task.set_round(round);
  task.mutable_spec()->mutable_diffusion()->set_autoencoder_job("vae-1");
  task.mutable_frozen_spec()->set_name("vae");
  task.set_frozen_digest(digest);
  return task;
}

TEST_F(SiteCoreTest, AFrozenModelIsDownloadedOnceCheckedAndKept) {
  FrozenModelCache cache((dir_ / "frozen").string());
  frozen_ = &cache;
  const std::string digest = TensorDigest(coordinator_.frozen);
  coordinator_.tasks = {DiffusionTask(0, digest), DiffusionTask(1, digest)};
  Run();
  EXPECT_THAT(coordinator_.events, ElementsAre("join", "download frozen", "download", "upload",
                                               "download", "report", "upload"));
  absl::StatusOr<FrozenModel> kept = cache.Get("vae-1");
  ASSERT_TRUE(kept.ok()) << kept.status();
  EXPECT_EQ(kept->spec.name(), "vae");
  EXPECT_EQ(TensorDigest(kept->weights), digest);
  EXPECT_TRUE(std::filesystem::exists(dir_ / "frozen" / (digest + ".safetensors")));

  // A restarted site reads it from its disk.
  FrozenModelCache restarted((dir_ / "frozen").string());
  frozen_ = &restarted;
  coordinator_.events.clear();
  coordinator_.tasks = {DiffusionTask(2, digest)};
  Run();
  EXPECT_THAT(coordinator_.events, ElementsAre("join", "download", "report", "upload"));
  EXPECT_TRUE(restarted.Get("vae-1").ok());
}

TEST_F(SiteCoreTest, AFrozenModelThatIsNotTheOneTheTaskNamesIsDeclined) {
  FrozenModelCache cache((dir_ / "frozen").string());
  frozen_ = &cache;
  coordinator_.tasks = {DiffusionTask(0, TensorDigest({{"other", {1}, {0}}}))};
  Run();
  ASSERT_EQ(coordinator_.events.size(), 3u);
  EXPECT_EQ(coordinator_.events[1], "download frozen");
  EXPECT_THAT(coordinator_.events[2],
              HasSubstr("decline: the job's frozen autoencoder: the frozen model of job vae-1 as "
                        "downloaded has digest"));
  EXPECT_EQ(trainer_.trained, 0);
  EXPECT_FALSE(cache.Get("vae-1").ok());
  EXPECT_FALSE(std::filesystem::exists(dir_ / "frozen"));
}

TEST_F(SiteCoreTest, ATaskNamingAFrozenModelIsDeclinedWhereNoneCanBeKept) {
  coordinator_.tasks = {DiffusionTask(0, TensorDigest(coordinator_.frozen))};
  Run();
  EXPECT_THAT(coordinator_.events,
              ElementsAre("join",
                          "decline: the job's frozen autoencoder: this site keeps no "
                          "frozen models"));
}

// The coordinator hears each phase as it starts, in order: downloading, evaluating (after the
// first round), training with its steps (the first step, then at most every 2 s on the
// clock), uploading; and the gauges follow.
TEST_F(SiteCoreTest, ProgressIsSentAtEachPhaseInOrder) {
  Task task = MakeTask(/*dp=*/false);
  task.set_round(1);
  coordinator_.tasks.push_back(task);
  Run();
  EXPECT_THAT(coordinator_.timeline,
              ElementsAre("join", "downloading 0/0", "download", "evaluating 0/0", "report",
                          "training 0/5", "training 1/5", "uploading 0/0", "upload"));
  EXPECT_EQ(metrics_.train_steps_done.Value(), 5);
  EXPECT_EQ(metrics_.train_steps_total.Value(), 5);
  EXPECT_EQ(metrics_.task_phase.Add({{"phase", "idle"}}).Value(), 1);
  EXPECT_EQ(metrics_.task_phase.Add({{"phase", "training"}}).Value(), 0);
}

// Under DP the throughput the coordinator hears comes from the plan's expected batch size
// (q x train images), never from the Poisson batches drawn; locally the real one is exported.
TEST_F(SiteCoreTest, DpProgressCarriesOnlyThePlansThroughput) {
  Task task = MakeTask(/*dp=*/true);
  coordinator_.tasks.push_back(task);
  trainer_.on_step = [this] { clock_.Advance(absl::Seconds(3)); };
  Run();
  EXPECT_THAT(coordinator_.timeline,
              ElementsAre("join", "downloading 0/0", "download", "training 0/5", "training 1/5",
                          "training 2/5", "training 3/5", "training 4/5", "training 5/5",
                          "uploading 0/0", "upload"));
  auto plan = PlanDp(task.spec(), data_.train.size());
  ASSERT_TRUE(plan.ok()) << plan.status();
  const double expected_batch = plan->sample_rate * data_.train.size();
  for (const ProgressRequest& p : coordinator_.progress) {
    if (p.phase() != TASK_PHASE_TRAINING || p.steps_done() == 0) continue;
    EXPECT_DOUBLE_EQ(p.images_per_second(), expected_batch / 3) << p.steps_done();
  }
  EXPECT_DOUBLE_EQ(metrics_.train_images_per_second.Value(), 7.0 / 3);  // 35 samples in 15 s
}

// A coordinator that does not take progress slows nothing down: the task goes on, and training
// tries again only every 30 s on the clock (a call may hang until its deadline).
TEST_F(SiteCoreTest, ProgressThatFailsIsTriedSeldomAndTheTaskGoesOn) {
  coordinator_.tasks.push_back(MakeTask(/*dp=*/false));
  coordinator_.progress_status = absl::UnavailableError("progress: deadline exceeded");
  trainer_.on_step = [this] { clock_.Advance(absl::Seconds(3)); };
  Run();
  EXPECT_THAT(coordinator_.timeline,
              ElementsAre("join", "downloading 0/0", "download", "training 0/5", "training 1/5",
                          "uploading 0/0", "upload"));
}

// A declined task sends nothing progress-like after its decline.
TEST_F(SiteCoreTest, NoProgressAfterADecline) {
  coordinator_.tasks.push_back(MakeTask(/*dp=*/false));
  trainer_.train_status = absl::InternalError("training diverged: the loss is not finite");
  Run();
  ASSERT_FALSE(coordinator_.timeline.empty());
  EXPECT_THAT(coordinator_.timeline.back(), HasSubstr("decline: training failed"));
  EXPECT_THAT(coordinator_.timeline,
              ElementsAre("join", "downloading 0/0", "download", "training 0/5",
                          "decline: training failed: training diverged: the loss is not finite"));
}

}  // namespace
}  // namespace fl
