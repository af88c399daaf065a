// The coordinator core driven directly, as the gRPC layer would drive it: sites join, take
// tasks, download, and upload valid and hostile updates.
#include "server/coordinator.h"

#include <atomic>
#include <cmath>
#include <deque>
#include <filesystem>
#include <limits>
#include <thread>

#include <gtest/gtest.h>

#include "absl/synchronization/notification.h"

#include "common/test_dir.h"

#include "common/file_util.h"
#include "common/safetensors.h"
#include "common/status.h"

namespace fl {
namespace {

namespace fs = std::filesystem;

// A tiny torch-free "model": a backbone of 4 values and a head of 2 labels x 2 features, zero
// or read from the job's initial_model.
absl::StatusOr<ModelInit> TinyModel(const JobSpec& spec) {
  if (!spec.initial_model().empty()) {
    ASSIGN_OR_RETURN(TensorList weights, ReadSafetensors(spec.initial_model()));
    return ModelInit{std::move(weights), "fc."};
  }
  return ModelInit{{{"conv.weight", {4}, {0, 0, 0, 0}},
                    {"fc.weight", {2, 2}, {0, 0, 0, 0}},
                    {"fc.bias", {2}, {0, 0}}},
                   "fc."};
}

// One site's task stream, run on its own thread.
class SiteStream {
 public:
  SiteStream(Coordinator* core, std::string name) : who_{std::move(name), Role::kSite} {
    thread_ = std::thread([this, core] {
      core->StreamTasks(
               who_,
               [this](const Task& task) {
                 if (task.job_id().empty()) return true;
                 absl::MutexLock lock(&mu_);
                 tasks_.push_back(task);
                 return true;
               },
               [this] { return stop_.load(); })
          .IgnoreError();  // the test ends streams by stopping them; nothing to report
    });
  }
  ~SiteStream() {
    stop_ = true;
    thread_.join();
  }
  // The next task, waiting up to 20 s.
  Task Next() {
    absl::MutexLock lock(&mu_);
    auto ready = [this] {
      mu_.AssertHeld();
      return !tasks_.empty();
    };
    EXPECT_TRUE(mu_.AwaitWithTimeout(absl::Condition(&ready), absl::Seconds(20)));
    if (tasks_.empty()) return Task();
    Task task = tasks_.front();
    tasks_.pop_front();
    return task;
  }
  const Identity& who() const { return who_; }

 private:
  Identity who_;
  std::atomic<bool> stop_{false};
  absl::Mutex mu_;
  std::deque<Task> tasks_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

// An update of the test model: backbone values, then head rows of labels a and b.
TensorList Update(float backbone, float head_a, float head_b);

class CoordinatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = FreshTestDir();
    config_.set_state_dir(dir_);
    config_.set_chunk_bytes(8);  // several chunks per tensor
    store_ = std::move(Store::Open(dir_ + "/state.db")).value();
    core_ = std::make_unique<Coordinator>(config_, store_.get(), &metrics_, Init());
    ASSERT_TRUE(core_->Start().ok());
    Join("site-a", {"a", "b"});
    Join("site-b", {"a"});
  }
  // TinyModel; once hold_prepare_ is set, the scheduler's next call (PrepareModel) notifies
  // prepare_entered_ and waits for prepare_release_.
  ModelInitFn Init() {
    return [this](const JobSpec& spec) {
      if (std::this_thread::get_id() != test_thread_ && hold_prepare_.exchange(false)) {
        prepare_entered_.Notify();
        prepare_release_.WaitForNotification();
      }
      return TinyModel(spec);
    };
  }
  const std::thread::id test_thread_ = std::this_thread::get_id();
  std::atomic<bool> hold_prepare_{false};
  absl::Notification prepare_entered_, prepare_release_;

  void TearDown() override {
    core_->Shutdown();  // ends the task streams at once
    a_.reset();
    b_.reset();
  }

  void Join(const std::string& site, const std::vector<std::string>& labels) {
    JoinRequest request;
    for (const std::string& l : labels) request.add_labels()->set_name(l);
    ASSERT_TRUE(core_->Join({site, Role::kSite}, request).ok());
  }

  std::string Submit(JobSpec spec) {
    auto job = core_->SubmitJob({"op", Role::kAdmin}, Filled(std::move(spec)));
    EXPECT_TRUE(job.ok()) << job.status();
    return job->job_id();
  }

  // `spec` with the test's model, labels and defaults.
  static JobSpec Filled(JobSpec spec) {
    spec.set_name("t");
    spec.set_model("tiny");
    spec.add_labels("a");
    spec.add_labels("b");
    if (spec.min_sites() == 0) spec.set_min_sites(2);
    spec.set_local_steps(1);
    spec.set_batch_size(10);
    if (spec.round_deadline_seconds() == 0) spec.set_round_deadline_seconds(30);
    if (spec.start_timeout_seconds() == 0) spec.set_start_timeout_seconds(20);
    return spec;
  }

  // Header + chunks of `update` + trailer.
  static std::vector<UploadMessage> Messages(const Task& task, const TensorList& update,
                                             uint64_t samples,
                                             const std::vector<std::string>& labels) {
    std::vector<UploadMessage> messages(1);
    UploadHeader* header = messages[0].mutable_header();
    header->set_job_id(task.job_id());
    header->set_round(task.round());
    header->set_num_samples(samples);
    for (const std::string& l : labels) header->add_labels(l);
    EXPECT_TRUE(WriteTensorChunks(update, 8, [&](const TensorChunk& c) {
                  messages.emplace_back();
                  *messages.back().mutable_chunk() = c;
                  return true;
                }).ok());
    messages.emplace_back();
    messages.back().mutable_trailer();
    return messages;
  }

  // Streams the messages of `update`; `mutate` may damage them first.
  absl::StatusOr<UploadResponse> Upload(
      const Identity& who, const Task& task, const TensorList& update, uint64_t samples,
      const std::vector<std::string>& labels,
      const std::function<void(std::vector<UploadMessage>&)>& mutate = nullptr) {
    std::vector<UploadMessage> messages = Messages(task, update, samples, labels);
    if (mutate) mutate(messages);
    size_t i = 0;
    auto next = [&](UploadMessage* m) {
      if (i == messages.size()) return false;
      *m = messages[i++];
      return true;
    };
    return core_->Upload(who, {next, [] { return true; }, [] { return false; }});
  }

  // A coordinator with one transfer slot and a one-round job; the two sites' tasks.
  void OneRoundWithOneTransferSlot(Task* ta, Task* tb) {
    config_.set_max_concurrent_transfers(1);
    Restart();
    JobSpec spec;
    spec.set_rounds(1);
    Submit(spec);
    *ta = a_->Next();
    *tb = b_->Next();
  }

  // Starts site-a's upload of its task `ta` in a thread and returns once it is granted; it then
  // holds its transfer slot until `go` is notified, and finishes.
  std::thread UploadHoldingTheSlot(const Task& ta, absl::Notification* go) {
    auto granted = std::make_shared<absl::Notification>();
    std::thread a([this, ta, go, granted] {
      const std::vector<UploadMessage> messages = Messages(ta, Update(1, 4, 6), 5, {"a", "b"});
      size_t i = 0;
      auto next = [&](UploadMessage* m) {
        if (i == 1) go->WaitForNotification();
        if (i == messages.size()) return false;
        *m = messages[i++];
        return true;
      };
      auto grant = [&] {
        granted->Notify();
        return true;
      };
      auto done = core_->Upload(a_->who(), {next, grant, [] { return false; }});
      EXPECT_TRUE(done.ok()) << done.status();
    });
    granted->WaitForNotification();
    return a;
  }

  TensorList Download(const Identity& who, const Task& task) {
    DownloadRequest request;
    request.set_job_id(task.job_id());
    request.set_round(task.round());
    std::vector<TensorChunk> chunks;
    EXPECT_TRUE(core_->Download(
                         who, request,
                         [&](const TensorChunk& c) {
                           chunks.push_back(c);
                           return true;
                         },
                         [] { return false; })
                    .ok());
    size_t i = 0;
    auto model = ReadTensors(
        [&](TensorChunk* c) {
          if (i == chunks.size()) return false;
          *c = chunks[i++];
          return true;
        },
        std::nullopt);
    EXPECT_TRUE(model.ok()) << model.status();
    return model.ok() ? *model : TensorList();
  }

  // Stops the coordinator as a crash would leave it (the store and files stay) and starts a new
  // one on the same state, with the sites reconnecting.
  void Restart() {
    core_->Shutdown();
    a_.reset();
    b_.reset();
    core_ = std::make_unique<Coordinator>(config_, store_.get(), &metrics_, Init());
    ASSERT_TRUE(core_->Start().ok());
    ConnectSites();
  }

  void ConnectSites() {
    a_ = std::make_unique<SiteStream>(core_.get(), "site-a");
    b_ = std::make_unique<SiteStream>(core_.get(), "site-b");
  }

  // The job's latest committed global model.
  TensorList CommittedWeights(const std::string& id) {
    auto checkpoint = store_->LatestCheckpoint(id);
    EXPECT_TRUE(checkpoint.ok()) << checkpoint.status();
    if (!checkpoint.ok()) return TensorList();
    auto weights = ReadSafetensors(checkpoint->path);
    EXPECT_TRUE(weights.ok()) << weights.status();
    return weights.ok() ? *weights : TensorList();
  }

  JobStatus WaitForState(const std::string& id, JobState state) {
    for (int i = 0; i < 400; ++i) {
      auto job = core_->GetJob(id);
      if (job.ok() && job->state() == state) return *job;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    ADD_FAILURE() << "job " << id << " never reached state " << state;
    return JobStatus();
  }

  std::string dir_;
  CoordinatorConfig config_;
  prometheus::Registry registry_;
  CoordinatorMetrics metrics_{registry_};
  std::unique_ptr<Store> store_;
  std::unique_ptr<Coordinator> core_;
  std::unique_ptr<SiteStream> a_, b_;
};

TensorList Update(float backbone, float head_a, float head_b) {
  return {{"conv.weight", {4}, {backbone, backbone, backbone, backbone}},
          {"fc.weight", {2, 2}, {head_a, head_a, head_b, head_b}},
          {"fc.bias", {2}, {head_a, head_b}}};
}

double Rejected(prometheus::Registry& registry) {
  for (const auto& family : registry.Collect()) {
    if (family.name != "fl_coordinator_updates_total") continue;
    for (const auto& m : family.metric) {
      if (m.label[0].value == "rejected") return m.counter.value;
    }
  }
  return 0;
}

TEST_F(CoordinatorTest, HostileUpdatesRefusedAndAggregateExact) {
  ConnectSites();
  JobSpec spec;
  spec.set_rounds(1);
  spec.set_max_update_norm(100);
  const std::string id = Submit(spec);
  Task ta = a_->Next();
  Task tb = b_->Next();
  ASSERT_EQ(ta.job_id(), id);
  EXPECT_EQ(std::vector<std::string>(ta.train_labels().begin(), ta.train_labels().end()),
            std::vector<std::string>({"a", "b"}));
  EXPECT_EQ(tb.train_labels_size(), 1);
  EXPECT_EQ(Download(a_->who(), ta).size(), 3u);

  const TensorList good_b = Update(3, 2, 0);
  auto code = [](const absl::StatusOr<UploadResponse>& r) { return r.status().code(); };
  using absl::StatusCode;
  // NaN, wrong shape, bad checksum, truncated, stale round, a label it does not train,
  // an inflated sample count, a norm over the bound: each refused.
  TensorList nan = good_b;
  nan[0].data[2] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(code(Upload(b_->who(), tb, nan, 10, {"a"})), StatusCode::kInvalidArgument);
  TensorList shape = good_b;
  shape[1].shape = {4, 1};
  EXPECT_EQ(code(Upload(b_->who(), tb, shape, 10, {"a"})), StatusCode::kInvalidArgument);
  EXPECT_EQ(code(Upload(b_->who(), tb, good_b, 10, {"a"},
                        [](auto& m) { (*m[2].mutable_chunk()->mutable_data())[0] ^= 1; })),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(code(Upload(b_->who(), tb, good_b, 10, {"a"}, [](auto& m) { m.pop_back(); })),
            StatusCode::kInvalidArgument);
  Task stale = tb;
  stale.set_round(7);
  EXPECT_EQ(code(Upload(b_->who(), stale, good_b, 10, {"a"})), StatusCode::kFailedPrecondition);
  EXPECT_EQ(code(Upload(b_->who(), tb, good_b, 10, {"b"})), StatusCode::kInvalidArgument);
  EXPECT_EQ(code(Upload(b_->who(), tb, good_b, 1000, {"a"})), StatusCode::kInvalidArgument);
  EXPECT_EQ(code(Upload(b_->who(), tb, Update(300, 0, 0), 10, {"a"})),
            StatusCode::kInvalidArgument);
  // An admin or an unassigned identity cannot upload.
  EXPECT_EQ(code(Upload({"site-z", Role::kSite}, tb, good_b, 10, {"a"})),
            StatusCode::kPermissionDenied);
  EXPECT_EQ(Rejected(registry_), 9);

  // Valid updates; a replay of site-b's is refused.
  ASSERT_TRUE(Upload(b_->who(), tb, good_b, 15, {"a"}).ok());
  EXPECT_EQ(code(Upload(b_->who(), tb, good_b, 15, {"a"})), StatusCode::kAlreadyExists);
  ASSERT_TRUE(Upload(a_->who(), ta, Update(1, 4, 6), 5, {"a", "b"}).ok());

  // Final evaluation tasks, then the job ends.
  Task ea = a_->Next();
  Task eb = b_->Next();
  EXPECT_TRUE(ea.evaluate_only());
  MetricsReport report;
  report.set_job_id(id);
  report.set_round(1);
  LabelMetric* m = report.add_test();
  m->set_label("a");
  m->set_auroc(0.75);
  m->set_positives(5);
  m->set_negatives(5);
  ASSERT_TRUE(core_->Report(a_->who(), report).ok());
  ASSERT_TRUE(core_->Report(b_->who(), report).ok());
  JobStatus job = WaitForState(id, DONE);
  ASSERT_EQ(job.rounds_size(), 1);
  EXPECT_DOUBLE_EQ(job.rounds(0).mean_auroc(), 0.75);

  // Backbone: (15*3 + 5*1) / 20 = 2.5. Row a: (15*2 + 5*4) / 20 = 2.5. Row b: site-a only: 6.
  const TensorList weights = CommittedWeights(id);
  ASSERT_EQ(weights.size(), 3u);
  EXPECT_FLOAT_EQ(weights[0].data[0], 2.5f);
  EXPECT_FLOAT_EQ(weights[1].data[0], 2.5f);
  EXPECT_FLOAT_EQ(weights[1].data[2], 6.0f);
  EXPECT_FLOAT_EQ(weights[2].data[1], 6.0f);
}

// With one transfer slot, a second upload is checked and then waits without a grant (the site
// sends nothing more); when its site goes away it ends, and a retry succeeds once the slot frees.
TEST_F(CoordinatorTest, UploadIsGrantedOnlyWhenATransferSlotIsFree) {
  Task ta, tb;
  OneRoundWithOneTransferSlot(&ta, &tb);
  absl::Notification a_go;
  std::thread a = UploadHoldingTheSlot(ta, &a_go);

  const std::vector<UploadMessage> b_messages = Messages(tb, Update(3, 2, 0), 15, {"a"});
  std::atomic<bool> b_granted{false}, b_gone{false};
  size_t b_read = 0;
  std::thread b([&] {
    auto next = [&](UploadMessage* m) {
      if (b_read == b_messages.size()) return false;
      *m = b_messages[b_read++];
      return true;
    };
    auto grant = [&] { return b_granted = true; };
    auto done = core_->Upload(b_->who(), {next, grant, [&] { return b_gone.load(); }});
    EXPECT_EQ(done.status().code(), absl::StatusCode::kCancelled) << done.status();
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  EXPECT_FALSE(b_granted.load());
  b_gone = true;
  b.join();
  EXPECT_FALSE(b_granted.load());
  EXPECT_EQ(b_read, 1u);  // only the header was read
  EXPECT_EQ(Rejected(registry_), 0);  // a site that left is not a refused update

  a_go.Notify();
  a.join();
  auto retried = Upload(b_->who(), tb, Update(3, 2, 0), 15, {"a"});
  EXPECT_TRUE(retried.ok()) << retried.status();
}

TEST_F(CoordinatorTest, DownloadWaitingForASlotEndsWhenTheSiteGoesAway) {
  Task ta, tb;
  OneRoundWithOneTransferSlot(&ta, &tb);
  absl::Notification a_go;
  std::thread a = UploadHoldingTheSlot(ta, &a_go);

  DownloadRequest request;
  request.set_job_id(tb.job_id());
  request.set_round(tb.round());
  std::atomic<bool> gone{false};
  int chunks = 0;
  std::thread b([&] {
    absl::Status status = core_->Download(
        b_->who(), request, [&](const TensorChunk&) { return ++chunks > 0; },
        [&] { return gone.load(); });
    EXPECT_EQ(status.code(), absl::StatusCode::kCancelled) << status;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(1200));
  EXPECT_EQ(chunks, 0);
  gone = true;
  b.join();
  EXPECT_EQ(chunks, 0);
  a_go.Notify();
  a.join();
  EXPECT_EQ(Download(b_->who(), tb).size(), 3u);  // the slot is free again
}

// The job starts from the initial model as it was at submission, even when the file changes or
// goes away before the job runs.
TEST_F(CoordinatorTest, JobStartsFromTheInitialModelAsSubmitted) {
  const std::string path = dir_ + "/pretrained.safetensors";
  const TensorList pretrained = Update(1.5f, 2.5f, -0.5f);
  ASSERT_TRUE(WriteSafetensors(path, pretrained).ok());
  JobSpec spec;
  spec.set_rounds(1);
  spec.set_initial_model(path);
  Submit(spec);
  ASSERT_TRUE(WriteSafetensors(path, Update(9, 9, 9)).ok());
  ASSERT_EQ(std::remove(path.c_str()), 0);
  Restart();  // the job prepares its model again, now without the file
  Task ta = a_->Next();
  const TensorList global = Download(a_->who(), ta);
  ASSERT_EQ(global.size(), pretrained.size());
  for (size_t i = 0; i < global.size(); ++i) EXPECT_EQ(global[i].data, pretrained[i].data);
}

// The copy of an initial model lives as long as its job: a refused submission leaves none and
// names the submitted file; a cancelled or failed job's copy is removed; a restart removes
// strays and keeps the copies of jobs still to run.
TEST_F(CoordinatorTest, InitialModelCopiesLiveAsLongAsTheirJob) {
  ConnectSites();
  const fs::path copies_dir = fs::path(dir_) / "initial";
  const auto copies = [&] {
    std::vector<std::string> names;
    for (const auto& entry : fs::directory_iterator(copies_dir)) {
      names.push_back(entry.path().filename().string());
    }
    return names;
  };
  const std::string bad = dir_ + "/bad.safetensors";
  ASSERT_TRUE(WriteFileAtomic(bad, "not a model", 0600).ok());
  JobSpec spec;
  spec.set_rounds(1);
  spec.set_initial_model(bad);
  absl::StatusOr<JobStatus> refused = core_->SubmitJob({"op", Role::kAdmin}, Filled(spec));
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find(bad), std::string::npos) << refused.status();
  EXPECT_EQ(refused.status().message().find(copies_dir.string()), std::string::npos);
  EXPECT_TRUE(copies().empty());

  const std::string good = dir_ + "/pretrained.safetensors";
  ASSERT_TRUE(WriteSafetensors(good, Update(1, 2, 3)).ok());
  spec.set_initial_model(good);
  const std::string cancelled = Submit(spec);
  EXPECT_EQ(copies(), std::vector<std::string>{cancelled + ".safetensors"});
  ASSERT_TRUE(core_->CancelJob({"op", Role::kAdmin}, cancelled).ok());
  EXPECT_TRUE(copies().empty());

  spec.set_round_deadline_seconds(1);  // nobody uploads: the job fails after three attempts
  const std::string failed = Submit(spec);
  WaitForState(failed, FAILED);
  for (int i = 0; i < 200 && !copies().empty(); ++i) {  // removed once the ending is stored
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(copies().empty());

  const std::string queued = Submit(spec);
  for (const std::string& stray : {std::string("gone-00000000"), cancelled}) {
    ASSERT_TRUE(WriteFileAtomic((copies_dir / (stray + ".safetensors")).string(), "x", 0600).ok());
  }
  Restart();
  EXPECT_EQ(copies(), std::vector<std::string>{queued + ".safetensors"});
}

// A cancel is final whenever it comes: also while the scheduler prepares the job's model or
// waits for its sites. The stored state stays CANCELLED (a restart resumes neither), and the
// next job starts at once.
TEST_F(CoordinatorTest, CancelIsFinalAtEveryStageOfAJob) {
  ConnectSites();
  JobSpec spec;
  spec.set_rounds(1);
  hold_prepare_ = true;
  const std::string preparing = Submit(spec);
  prepare_entered_.WaitForNotification();
  ASSERT_TRUE(core_->CancelJob({"op", Role::kAdmin}, preparing).ok());
  prepare_release_.Notify();

  JobSpec waiting = spec;
  waiting.set_min_sites(3);  // only two sites: it waits for a third
  waiting.set_start_timeout_seconds(3600);
  const std::string waited = Submit(waiting);
  WaitForState(waited, RUNNING);
  ASSERT_TRUE(core_->CancelJob({"op", Role::kAdmin}, waited).ok());
  const std::string next = Submit(spec);
  EXPECT_EQ(a_->Next().job_id(), next);  // within the stream's 20 s: neither job held it
  ASSERT_TRUE(core_->CancelJob({"op", Role::kAdmin}, next).ok());

  Restart();
  auto stored = store_->Jobs();
  ASSERT_TRUE(stored.ok()) << stored.status();
  ASSERT_EQ(stored->size(), 3u);
  for (const JobStatus& job : *stored) {
    EXPECT_EQ(job.state(), CANCELLED) << job.job_id();
    EXPECT_EQ(core_->GetJob(job.job_id())->state(), CANCELLED) << job.job_id();
  }
}

TEST_F(CoordinatorTest, NormClippingScalesWithoutChangingWeight) {
  ConnectSites();
  JobSpec spec;
  spec.set_rounds(1);
  spec.set_clip_update_norm(2.0);
  const std::string id = Submit(spec);
  Task ta = a_->Next();
  Task tb = b_->Next();
  // site-b: norm of (1,1,1,1 | 0..) is 2: unchanged. site-a: ten values of 10, norm
  // 10 * sqrt(10), scaled by 2 / (10 * sqrt(10)).
  ASSERT_TRUE(Upload(b_->who(), tb, Update(1, 0, 0), 10, {"a"}).ok());
  ASSERT_TRUE(Upload(a_->who(), ta, Update(10, 10, 10), 10, {"a", "b"}).ok());
  a_->Next();
  b_->Next();
  core_->CancelJob({"op", Role::kAdmin}, id).IgnoreError();  // skip the final evaluation
  const TensorList weights = CommittedWeights(id);
  ASSERT_EQ(weights.size(), 3u);
  const double scale = 2.0 / (10 * std::sqrt(10.0));
  EXPECT_NEAR(weights[0].data[0], (10 * 1 + 10 * 10 * scale) / 20.0, 1e-6);
}

TEST_F(CoordinatorTest, RoundWithoutQuorumIsRetriedThenFailsWithReason) {
  ConnectSites();
  JobSpec spec;
  spec.set_rounds(1);
  spec.set_round_deadline_seconds(1);
  const std::string id = Submit(spec);  // nobody uploads: three attempts of 1 s, then failure
  JobStatus job = WaitForState(id, FAILED);
  EXPECT_NE(job.message().find("required updates"), std::string::npos) << job.message();
}

// A commit that cannot be stored (the checkpoint folder replaced by a file: the write fails as it
// would on a full disk) spends none of the job's attempts: the round's updates stay spooled,
// and once storage is back they are committed, each exactly once.
TEST_F(CoordinatorTest, CommitThatCannotBeStoredWaitsForStorage) {
  ConnectSites();
  JobSpec spec;
  spec.set_rounds(1);
  const std::string id = Submit(spec);
  Task ta = a_->Next();
  Task tb = b_->Next();
  const fs::path checkpoints = fs::path(dir_) / "checkpoints";
  fs::remove_all(checkpoints);
  ASSERT_TRUE(WriteFileAtomic(checkpoints.string(), "in the way", 0600).ok());
  ASSERT_TRUE(Upload(a_->who(), ta, Update(1, 4, 6), 5, {"a", "b"}).ok());
  ASSERT_TRUE(Upload(b_->who(), tb, Update(3, 2, 0), 15, {"a"}).ok());
  for (int i = 0; i < 300 && metrics_.rounds_failed.Value() < 3; ++i) {  // pauses of 1 s, 2 s
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_GE(metrics_.rounds_failed.Value(), 3);  // as many as the job has attempts
  EXPECT_EQ(core_->GetJob(id)->state(), RUNNING);
  ASSERT_TRUE(fs::remove(checkpoints));
  ASSERT_TRUE(fs::create_directory(checkpoints));
  Task final_task;
  do final_task = a_->Next();  // the final evaluation opens once round 0 is committed
  while (!final_task.job_id().empty() && !final_task.evaluate_only());
  ASSERT_TRUE(final_task.evaluate_only());
  // Backbone: (15*3 + 5*1) / 20 = 2.5. Row a: (15*2 + 5*4) / 20 = 2.5. Row b: site-a only: 6.
  const TensorList weights = CommittedWeights(id);
  ASSERT_EQ(weights.size(), 3u);
  EXPECT_FLOAT_EQ(weights[0].data[0], 2.5f);
  EXPECT_FLOAT_EQ(weights[1].data[0], 2.5f);
  EXPECT_FLOAT_EQ(weights[1].data[2], 6.0f);
  ASSERT_TRUE(core_->CancelJob({"op", Role::kAdmin}, id).ok());  // skip the final evaluation
}

// The resumed job's weights come from its checkpoint alone: the copy of its initial model is
// removed once round 0 is committed, and not read again.
TEST_F(CoordinatorTest, RunningJobResumesAfterRestartFromLastCommittedRound) {
  ConnectSites();
  const std::string initial = dir_ + "/zeros.safetensors";
  ASSERT_TRUE(WriteSafetensors(initial, Update(0, 0, 0)).ok());
  JobSpec spec;
  spec.set_rounds(2);
  spec.set_initial_model(initial);
  const std::string id = Submit(spec);
  Task ta = a_->Next();
  Task tb = b_->Next();
  ASSERT_TRUE(Upload(a_->who(), ta, Update(1, 1, 1), 10, {"a", "b"}).ok());
  ASSERT_TRUE(Upload(b_->who(), tb, Update(1, 1, 0), 10, {"a"}).ok());
  ta = a_->Next();  // round 1 opened: round 0 is committed
  ASSERT_EQ(ta.round(), 1u);
  const fs::path copy = fs::path(dir_) / "initial" / (id + ".safetensors");
  EXPECT_FALSE(fs::exists(copy));  // removed with round 0's commit
  // As a crash between the commit and the removal leaves it (not a model: never read again).
  ASSERT_TRUE(WriteFileAtomic(copy.string(), "x", 0600).ok());
  Restart();
  EXPECT_FALSE(fs::exists(copy));
  ta = a_->Next();
  EXPECT_EQ(ta.round(), 1u);
  TensorList global = Download(a_->who(), ta);
  EXPECT_FLOAT_EQ(global[0].data[0], 1.0f);  // the round-0 aggregate, not a fresh model
}

}  // namespace
}  // namespace fl

namespace fl {
namespace {

// A restart in the middle of a round loses nothing: the update received before is folded again
// from its spool, only the other site is asked, and the aggregate is exactly the one of an
// uninterrupted round.
TEST_F(CoordinatorTest, RestartMidRoundReusesReceivedUpdatesExactlyOnce) {
  ConnectSites();
  JobSpec spec;
  spec.set_rounds(1);
  const std::string id = Submit(spec);
  Task ta = a_->Next();
  b_->Next();
  ASSERT_TRUE(Upload(a_->who(), ta, Update(1, 4, 6), 5, {"a", "b"}).ok());
  Restart();  // site-b never uploaded before it
  Task tb = b_->Next();
  ASSERT_EQ(tb.job_id(), id);
  EXPECT_FALSE(tb.evaluate_only());
  ASSERT_TRUE(Upload(b_->who(), tb, Update(3, 2, 0), 15, {"a"}).ok());
  Task ea = a_->Next();  // site-a's first task after the restart is the final evaluation
  EXPECT_TRUE(ea.evaluate_only());
  const TensorList weights = CommittedWeights(id);
  ASSERT_EQ(weights.size(), 3u);
  EXPECT_FLOAT_EQ(weights[0].data[0], 2.5f);  // (15*3 + 5*1) / 20, as without the restart
  EXPECT_FLOAT_EQ(weights[1].data[2], 6.0f);
  EXPECT_TRUE(std::filesystem::is_empty(dir_ + "/spool"));  // spools dropped at the commit
}

}  // namespace
}  // namespace fl

namespace fl {
namespace {

// A site that took its task and then went away (crash, lost connection) gets the same task
// again when it reconnects within the round.
TEST_F(CoordinatorTest, SiteThatComesBackInTheRoundGetsItsTaskAgain) {
  ConnectSites();
  JobSpec spec;
  spec.set_rounds(1);
  const std::string id = Submit(spec);
  Task first = a_->Next();
  Task tb = b_->Next();
  a_.reset();  // site-a "crashes" after taking its task
  a_ = std::make_unique<SiteStream>(core_.get(), "site-a");
  Task again = a_->Next();
  EXPECT_EQ(again.job_id(), id);
  EXPECT_EQ(again.round(), first.round());
  EXPECT_FALSE(again.evaluate_only());
  ASSERT_TRUE(Upload(a_->who(), again, Update(1, 1, 1), 10, {"a", "b"}).ok());
  ASSERT_TRUE(Upload(b_->who(), tb, Update(1, 1, 0), 10, {"a"}).ok());
  EXPECT_TRUE(a_->Next().evaluate_only());  // the round closed with both updates
}

}  // namespace
}  // namespace fl

namespace fl {
namespace {

// Robust aggregation: a third site sends a huge but finite update; under the median the
// global model stays with the honest sites.
TEST_F(CoordinatorTest, MedianKeepsTheModelCloseToHonestSites) {
  Join("site-c", {"a"});
  ConnectSites();
  SiteStream c(core_.get(), "site-c");
  JobSpec spec;
  spec.set_rounds(1);
  spec.set_min_sites(3);  // the round must not start before site-c's stream is open
  spec.set_aggregation(AGGREGATION_MEDIAN);
  const std::string id = Submit(spec);
  Task ta = a_->Next();
  Task tb = b_->Next();
  Task tc = c.Next();
  ASSERT_TRUE(Upload(a_->who(), ta, Update(1.0f, 1.0f, 0.5f), 10, {"a", "b"}).ok());
  ASSERT_TRUE(Upload(b_->who(), tb, Update(1.2f, 1.2f, 0), 10, {"a"}).ok());
  ASSERT_TRUE(Upload(c.who(), tc, Update(1e6f, 1e6f, 1e6f), 20, {"a"}).ok());
  EXPECT_TRUE(a_->Next().evaluate_only());  // the round closed with three updates
  core_->CancelJob({"op", Role::kAdmin}, id).IgnoreError();  // skip the final evaluation
  const TensorList weights = CommittedWeights(id);
  ASSERT_EQ(weights.size(), 3u);
  for (float v : weights[0].data) EXPECT_FLOAT_EQ(v, 1.2f);  // median of 1, 1.2, 1e6
  EXPECT_FLOAT_EQ(weights[1].data[0], 1.2f);                 // row a: same three
  EXPECT_FLOAT_EQ(weights[1].data[2], 0.5f);                 // row b: site-a alone
  EXPECT_FLOAT_EQ(weights[2].data[0], 1.2f);
}

TEST_F(CoordinatorTest, TrimFractionOutOfRangeRefusedNamingTheField) {
  JobSpec spec;
  spec.set_name("t");
  spec.set_model("tiny");
  spec.add_labels("a");
  spec.set_rounds(1);
  spec.set_aggregation(AGGREGATION_TRIMMED_MEAN);
  spec.set_trim_fraction(0.5);
  auto job = core_->SubmitJob({"op", Role::kAdmin}, spec);
  EXPECT_EQ(job.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(job.status().message().find("'trim_fraction'"), std::string::npos) << job.status();
  spec.set_trim_fraction(-0.1);
  EXPECT_FALSE(core_->SubmitJob({"op", Role::kAdmin}, spec).ok());
  spec.set_trim_fraction(0);  // the default, 0.1
  auto valid = core_->SubmitJob({"op", Role::kAdmin}, spec);
  ASSERT_TRUE(valid.ok()) << valid.status();
  EXPECT_DOUBLE_EQ(valid->spec().trim_fraction(), 0.1);
}

// Under the median a restart mid-round re-admits the spooled update too.
TEST_F(CoordinatorTest, MedianAfterRestartMidRoundUsesTheEarlierSpool) {
  ConnectSites();
  JobSpec spec;
  spec.set_rounds(1);
  spec.set_aggregation(AGGREGATION_MEDIAN);
  const std::string id = Submit(spec);
  Task ta = a_->Next();
  b_->Next();
  ASSERT_TRUE(Upload(a_->who(), ta, Update(1, 4, 6), 5, {"a", "b"}).ok());
  Restart();
  Task tb = b_->Next();
  ASSERT_EQ(tb.job_id(), id);
  ASSERT_TRUE(Upload(b_->who(), tb, Update(3, 2, 0), 15, {"a"}).ok());
  EXPECT_TRUE(a_->Next().evaluate_only());
  const TensorList weights = CommittedWeights(id);
  ASSERT_EQ(weights.size(), 3u);
  EXPECT_FLOAT_EQ(weights[0].data[0], 2.0f);  // median of 1 and 3, unweighted
  EXPECT_FLOAT_EQ(weights[1].data[0], 3.0f);  // row a: median of 4 and 2
  EXPECT_FLOAT_EQ(weights[1].data[2], 6.0f);  // row b: site-a alone
  EXPECT_TRUE(std::filesystem::is_empty(dir_ + "/spool"));
}

// A spool lost before the round closes fails that attempt without touching the model; the
// retry re-admits the sound spool and asks the other site again.
TEST_F(CoordinatorTest, MedianWithUnreadableSpoolRetriesTheRound) {
  ConnectSites();
  JobSpec spec;
  spec.set_rounds(1);
  spec.set_aggregation(AGGREGATION_MEDIAN);
  const std::string id = Submit(spec);
  Task ta = a_->Next();
  Task tb = b_->Next();
  ASSERT_TRUE(Upload(a_->who(), ta, Update(100, 100, 100), 10, {"a", "b"}).ok());
  for (const auto& entry : std::filesystem::directory_iterator(dir_ + "/spool")) {
    std::filesystem::remove(entry.path());  // site-a's spool, the only one so far
  }
  ASSERT_TRUE(Upload(b_->who(), tb, Update(3, 2, 0), 10, {"a"}).ok());
  Task again = a_->Next();  // attempt 2: only site-a is asked
  ASSERT_EQ(again.job_id(), id);
  EXPECT_FALSE(again.evaluate_only());
  EXPECT_EQ(again.round(), 0u);
  ASSERT_TRUE(Upload(a_->who(), again, Update(5, 4, 6), 10, {"a", "b"}).ok());
  EXPECT_TRUE(a_->Next().evaluate_only());
  core_->CancelJob({"op", Role::kAdmin}, id).IgnoreError();
  const TensorList weights = CommittedWeights(id);
  ASSERT_EQ(weights.size(), 3u);
  EXPECT_FLOAT_EQ(weights[0].data[0], 4.0f);  // median of 5 and 3 applied once to 0
  EXPECT_FLOAT_EQ(weights[1].data[2], 6.0f);
  auto job = core_->GetJob(id);
  ASSERT_TRUE(job.ok());
  EXPECT_EQ(job->rounds_done(), 1u);
}

}  // namespace
}  // namespace fl

namespace fl {
namespace {

void FoldAll(Aggregator& aggregator, const TensorList& update, double weight,
             std::vector<size_t> rows) {
  aggregator.BeginUpdate(weight, std::move(rows));
  for (size_t k = 0; k < update.size(); ++k) {
    aggregator.Fold(k, 0, update[k].data.data(), update[k].data.size());
  }
  aggregator.EndUpdate();
}

// FedAdam's moments are checkpointed with the model: a job restarted between rounds ends with
// exactly the model of an uninterrupted run. Spool files a crash left without a receipt are
// removed when their round commits.
TEST_F(CoordinatorTest, FedAdamMomentsSurviveARestartAndStraySpoolsAreRemoved) {
  ConnectSites();
  JobSpec spec;
  spec.set_rounds(3);
  spec.mutable_server_optimizer()->set_kind(FEDADAM);
  spec.mutable_server_optimizer()->set_learning_rate(0.1);
  const std::string id = Submit(spec);
  const std::string stray = dir_ + "/spool/" + id + "-0-7-site-z";
  ASSERT_TRUE(WriteFileAtomic(stray, "cut by a crash", 0600).ok());
  const std::vector<std::pair<TensorList, TensorList>> updates = {
      {Update(1, 2, 3), Update(3, 1, 0)},
      {Update(-1, 0.5, 2), Update(2, -2, 0)},
      {Update(0.5, 1, -1), Update(-3, 4, 0)}};
  for (uint32_t round = 0; round < 3; ++round) {
    if (round == 2) Restart();  // after round 1 committed
    Task ta = a_->Next();
    Task tb = b_->Next();
    ASSERT_EQ(ta.round(), round);
    if (round == 1) {  // round 0 committed
      EXPECT_FALSE(std::filesystem::exists(stray));
      EXPECT_TRUE(std::filesystem::is_empty(dir_ + "/spool"));
    }
    ASSERT_TRUE(Upload(a_->who(), ta, updates[round].first, 10, {"a", "b"}).ok());
    ASSERT_TRUE(Upload(b_->who(), tb, updates[round].second, 15, {"a"}).ok());
  }
  EXPECT_TRUE(a_->Next().evaluate_only());
  // The same three rounds applied without a restart.
  TensorList expected = std::move(TinyModel(spec)).value().weights;
  OptimizerMoments moments;
  const ServerOptimizer optimizer = core_->GetJob(id)->spec().server_optimizer();
  for (const auto& [a, b] : updates) {
    Aggregator aggregator(MakeLayout(expected, "fc.", HEAD_MODE_LABEL, 2), 2);
    FoldAll(aggregator, a, 10, {0, 1});
    FoldAll(aggregator, b, 15, {0});
    ASSERT_TRUE(aggregator.Apply(optimizer, expected, &moments).ok());
  }
  const TensorList got = CommittedWeights(id);
  ASSERT_EQ(got.size(), expected.size());
  for (size_t k = 0; k < got.size(); ++k) EXPECT_EQ(got[k].data, expected[k].data) << k;
}

}  // namespace
}  // namespace fl
