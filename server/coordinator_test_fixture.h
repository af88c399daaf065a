// The coordinator core driven directly, as the gRPC layer would drive it: a fixture with a
// torch-free model, two sites with task streams on their own threads, and helpers to submit jobs,
// upload (valid or damaged) updates, download and restart on the same state. Shared by
// coordinator_test.cc and coordinator_recovery_test.cc.
#pragma once

#include <atomic>
#include <cmath>
#include <deque>
#include <filesystem>
#include <limits>
#include <thread>

#include <gtest/gtest.h>

#include "absl/synchronization/notification.h"
#include "common/fault_env.h"
#include "common/file_util.h"
#include "common/safetensors.h"
#include "common/status.h"
#include "common/test_dir.h"
#include "server/coordinator.h"

namespace fl {

// A tiny torch-free "model": a backbone of 4 values and a head of 2 labels x 2 features, zero
// or read from the job's initial_model.
inline absl::StatusOr<ModelInit> TinyModel(const JobSpec& spec) {
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

// A report on the model of the task's round, on finding `label`: `auroc` on `positives` +
// `negatives` of `images` test images.
inline MetricsReport AurocReport(const Task& task, double auroc, uint64_t positives,
                                 uint64_t negatives, uint64_t images,
                                 const std::string& label = "a") {
  MetricsReport report;
  report.set_job_id(task.job_id());
  report.set_round(task.round());
  report.set_test_images(images);
  LabelMetric* m = report.add_test();
  m->set_label(label);
  m->set_auroc(auroc);
  m->set_positives(positives);
  m->set_negatives(negatives);
  return report;
}

// An update of the test model: backbone values, then head rows of labels a and b.
inline TensorList Update(float backbone, float head_a, float head_b) {
  return {{"conv.weight", {4}, {backbone, backbone, backbone, backbone}},
          {"fc.weight", {2, 2}, {head_a, head_a, head_b, head_b}},
          {"fc.bias", {2}, {head_a, head_b}}};
}

class CoordinatorTest : public ::testing::Test {
 protected:
  // Where the coordinator keeps its state (a fresh folder; fixtures may pick another disk).
  virtual std::string StateDir() { return FreshTestDir(); }

  void SetUp() override {
    dir_ = StateDir();
    config_.set_state_dir(dir_);
    config_.set_chunk_bytes(8);  // several chunks per tensor
    store_ = std::move(Store::Open(dir_ + "/state.db")).value();
    core_ = std::make_unique<Coordinator>(config_, store_.get(), &metrics_, Init(), clock_, env_);
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
    if (core_) core_->Shutdown();  // ends the task streams at once
    a_.reset();
    b_.reset();
  }

  // Joins `site` with `labels`, each declared with 50 positive and 50 negative images.
  void Join(const std::string& site, const std::vector<std::string>& labels) {
    JoinRequest request;
    for (const std::string& l : labels) {
      SiteLabel* label = request.add_labels();
      label->set_name(l);
      label->set_positives(50);
      label->set_negatives(50);
    }
    request.set_num_images(100);
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

  // The task's global model (or, with `frozen`, the job's frozen autoencoder).
  TensorList Download(const Identity& who, const Task& task, bool frozen = false) {
    DownloadRequest request;
    request.set_job_id(task.job_id());
    request.set_round(task.round());
    request.set_frozen(frozen);
    std::vector<TensorChunk> chunks;
    absl::Status downloaded = core_->Download(
        who, request,
        [&](const TensorChunk& c) {
          chunks.push_back(c);
          return true;
        },
        [] { return false; });
    EXPECT_TRUE(downloaded.ok()) << downloaded;
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
    core_ = std::make_unique<Coordinator>(config_, store_.get(), &metrics_, Init(), clock_, env_);
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

  // The two sites' usual updates of a round: site-a's (1, 4, 6) from 5 samples on labels a and
  // b, site-b's (3, 2, 0) from 15 samples on label a.
  absl::StatusOr<UploadResponse> UploadA(const Task& ta) {
    return Upload(a_->who(), ta, Update(1, 4, 6), 5, {"a", "b"});
  }
  absl::StatusOr<UploadResponse> UploadB(const Task& tb) {
    return Upload(b_->who(), tb, Update(3, 2, 0), 15, {"a"});
  }
  // The job's committed model is their weighted mean applied to zeros, each folded once:
  // backbone (15*3 + 5*1) / 20 = 2.5, row a (15*2 + 5*4) / 20 = 2.5, row b site-a's alone: 6.
  void ExpectWeightedMeanOfAAndB(const std::string& id) {
    const TensorList weights = CommittedWeights(id);
    ASSERT_EQ(weights.size(), 3u);
    EXPECT_FLOAT_EQ(weights[0].data[0], 2.5f);
    EXPECT_FLOAT_EQ(weights[1].data[0], 2.5f);
    EXPECT_FLOAT_EQ(weights[1].data[2], 6.0f);
    EXPECT_FLOAT_EQ(weights[2].data[1], 6.0f);
  }

  // Waits (up to 20 s) until the scheduler is in its `nth` pause on blocking_clock_ (1: the
  // first).
  bool WaitForPause(size_t nth) {
    auto in_it = [&] {
      return blocking_clock_.waits().size() == nth && blocking_clock_.waiting() == 1;
    };
    for (int i = 0; i < 400 && !in_it(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return in_it();
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

  // The clock of the pauses between a round's tries: the real one unless a test picks one of
  // the manual ones (then Restart). Declared before core_, so they outlive it.
  ManualClock instant_clock_;
  ManualClock blocking_clock_{absl::FromUnixSeconds(1'700'000'000), /*blocking=*/true};
  Clock* clock_ = &SystemClock();
  // Where the coordinator's files go: the real file system unless a test breaks it (faults_).
  FaultEnv faults_;
  Env* env_ = Env::Default();

  std::string dir_;
  CoordinatorConfig config_;
  prometheus::Registry registry_;
  CoordinatorMetrics metrics_{registry_};
  std::unique_ptr<Store> store_;
  std::unique_ptr<Coordinator> core_;
  std::unique_ptr<SiteStream> a_, b_;
};

// The value of counter `family`{result=`result`}.
inline double Counted(prometheus::Registry& registry, const std::string& family,
                      const std::string& result) {
  for (const auto& f : registry.Collect()) {
    if (f.name != family) continue;
    for (const auto& m : f.metric) {
      if (m.label[0].value == result) return m.counter.value;
    }
  }
  return 0;
}

// The updates refused as invalid or hostile so far.
inline double Rejected(prometheus::Registry& registry) {
  return Counted(registry, "fl_coordinator_updates_total", "rejected");
}

}  // namespace fl
