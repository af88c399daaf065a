// The coordinator core across failures: commits that cannot be stored, restarts mid-job and
// mid-round, sites that come back, robust aggregation over spools, FedAdam state.
#include <gtest/gtest.h>

#include <cstring>

#include "server/aggregator.h"
#include "server/coordinator_test_fixture.h"

namespace fl {
namespace {

namespace fs = std::filesystem;

// A commit that cannot be stored (the checkpoint folder replaced by a file: the write fails as it
// would on a full disk) spends none of the job's attempts: the round's updates stay spooled,
// and once storage is back they are committed, each exactly once. The pauses between tries (1 s,
// doubling) are waited on a clock the test advances.
TEST_F(CoordinatorTest, CommitThatCannotBeStoredWaitsForStorage) {
  clock_ = &blocking_clock_;
  Restart();
  JobSpec spec;
  spec.set_rounds(1);
  const std::string id = Submit(spec);
  Task ta = a_->Next();
  Task tb = b_->Next();
  const fs::path checkpoints = fs::path(dir_) / "checkpoints";
  fs::remove_all(checkpoints);
  ASSERT_TRUE(WriteFileAtomic(checkpoints.string(), "in the way", 0600).ok());
  ASSERT_TRUE(UploadA(ta).ok());
  ASSERT_TRUE(UploadB(tb).ok());
  size_t nth = 0;
  for (absl::Duration pause : {absl::Seconds(1), absl::Seconds(2), absl::Seconds(4)}) {
    ASSERT_TRUE(WaitForPause(++nth));
    EXPECT_EQ(blocking_clock_.waits().back(), pause);
    if (pause < absl::Seconds(4)) blocking_clock_.Advance(pause);
  }
  ASSERT_GE(metrics_.rounds_failed.Value(), 3);  // as many as the job has attempts
  EXPECT_GE(metrics_.storage_failures.Value(), 3);
  EXPECT_EQ(core_->GetJob(id)->state(), RUNNING);
  ASSERT_TRUE(fs::remove(checkpoints));
  ASSERT_TRUE(fs::create_directory(checkpoints));
  blocking_clock_.Advance(absl::Seconds(4));
  Task final_task;
  do final_task = a_->Next();  // the final evaluation opens once round 0 is committed
  while (!final_task.job_id().empty() && !final_task.evaluate_only());
  ASSERT_TRUE(final_task.evaluate_only());
  ExpectWeightedMeanOfAAndB(id);
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
  ASSERT_TRUE(UploadA(ta).ok());
  Restart();  // site-b never uploaded before it
  Task tb = b_->Next();
  ASSERT_EQ(tb.job_id(), id);
  EXPECT_FALSE(tb.evaluate_only());
  ASSERT_TRUE(UploadB(tb).ok());
  Task ea = a_->Next();  // site-a's first task after the restart is the final evaluation
  EXPECT_TRUE(ea.evaluate_only());
  ExpectWeightedMeanOfAAndB(id);                            // as without the restart
  EXPECT_TRUE(std::filesystem::is_empty(dir_ + "/spool"));  // spools dropped at the commit
}

// The next training task of job `id` on `stream`, skipping those of other jobs.
Task TrainingTask(SiteStream& stream, const std::string& id) {
  for (int i = 0; i < 10; ++i) {
    Task task = stream.Next();
    if (task.job_id().empty() || (task.job_id() == id && !task.evaluate_only())) return task;
  }
  ADD_FAILURE() << "no training task of " << id;
  return Task();
}

// The weighted mean is exact, so a round that a crash interrupted, whose updates are folded
// again from their spools (site-b and site-c, then site-a arrives), commits the very bytes of
// the same round uninterrupted (site-a, site-b, site-c). The values cancel in the float sum of
// earlier versions, which gave 0.005 one way and 0.0078 the other.
TEST_F(CoordinatorTest, CrashReplayCommitsTheBytesOfTheUninterruptedRound) {
  Join("site-c", {"a"});
  ConnectSites();
  auto c = std::make_unique<SiteStream>(core_.get(), "site-c");
  JobSpec spec;
  spec.set_rounds(1);
  spec.set_min_sites(3);
  const TensorList ua = Update(1e-3f, 0.1f, 7), ub = Update(1e4f, 1e4f, 0),
                   uc = Update(-1e4f, -1e4f, 0);
  const std::string straight = Submit(spec);
  Task ta = TrainingTask(*a_, straight), tb = TrainingTask(*b_, straight),
       tc = TrainingTask(*c, straight);
  ASSERT_TRUE(Upload(a_->who(), ta, ua, 5, {"a", "b"}).ok());
  ASSERT_TRUE(Upload(b_->who(), tb, ub, 7, {"a"}).ok());
  ASSERT_TRUE(Upload(c->who(), tc, uc, 7, {"a"}).ok());
  EXPECT_TRUE(a_->Next().evaluate_only());  // committed
  ASSERT_TRUE(core_->CancelJob({"op", Role::kAdmin}, straight).ok());

  const std::string crashed = Submit(spec);
  ta = TrainingTask(*a_, crashed);
  tb = TrainingTask(*b_, crashed);
  tc = TrainingTask(*c, crashed);
  ASSERT_TRUE(Upload(c->who(), tc, uc, 7, {"a"}).ok());
  ASSERT_TRUE(Upload(b_->who(), tb, ub, 7, {"a"}).ok());
  c.reset();
  Restart();
  c = std::make_unique<SiteStream>(core_.get(), "site-c");
  ta = TrainingTask(*a_, crashed);  // only site-a is asked again
  ASSERT_TRUE(Upload(a_->who(), ta, ua, 5, {"a", "b"}).ok());
  EXPECT_TRUE(a_->Next().evaluate_only());
  ASSERT_TRUE(core_->CancelJob({"op", Role::kAdmin}, crashed).ok());
  const auto job = core_->GetJob(crashed);
  ASSERT_TRUE(job.ok());
  ASSERT_EQ(job->rounds_size(), 1);
  EXPECT_EQ(job->rounds(0).sites_size(), 3);

  const TensorList want = CommittedWeights(straight), got = CommittedWeights(crashed);
  ASSERT_EQ(got.size(), want.size());
  for (size_t k = 0; k < got.size(); ++k) {
    ASSERT_EQ(got[k].data.size(), want[k].data.size());
    EXPECT_EQ(std::memcmp(got[k].data.data(), want[k].data.data(), want[k].byte_size()), 0)
        << got[k].name;
  }
  EXPECT_FLOAT_EQ(got[0].data[0], 0.005f / 19);  // (5 × 0.001 + 7 × 1e4 − 7 × 1e4) / 19
  c.reset();
}

// After a restart, an update resent before its round reopens is not taken and not counted as
// rejected: it is stale (FAILED_PRECONDITION, which no hostile update gets), and once the round
// reopens and tasks the site again the same bytes are accepted. After the round, a resend is
// stale as well.
TEST_F(CoordinatorTest, ResendAcrossARestartIsStaleNotRejected) {
  ConnectSites();
  JobSpec spec;
  spec.set_rounds(1);
  const std::string id = Submit(spec);
  const Task ta = a_->Next();
  const Task tb = b_->Next();
  ASSERT_TRUE(UploadB(tb).ok());
  hold_prepare_ = true;
  Restart();
  prepare_entered_.WaitForNotification();  // the job resumes; its round is not open yet
  const auto early = UploadA(ta);
  EXPECT_EQ(early.status().code(), absl::StatusCode::kFailedPrecondition) << early.status();
  EXPECT_NE(early.status().message().find("not open yet"), std::string::npos) << early.status();
  EXPECT_EQ(Counted(registry_, "fl_coordinator_updates_total", "stale"), 1);
  EXPECT_EQ(Rejected(registry_), 0);
  prepare_release_.Notify();
  const Task again = a_->Next();  // the round reopened: site-a is asked again
  ASSERT_EQ(again.job_id(), id);
  ASSERT_EQ(again.round(), 0u);
  ASSERT_TRUE(UploadA(ta).ok());  // the same update as before the restart
  EXPECT_TRUE(a_->Next().evaluate_only());
  ExpectWeightedMeanOfAAndB(id);
  const auto late = UploadA(ta);
  EXPECT_EQ(late.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(late.status().message().find("is over"), std::string::npos) << late.status();
  EXPECT_EQ(Counted(registry_, "fl_coordinator_updates_total", "stale"), 2);
  EXPECT_EQ(Rejected(registry_), 0);
  core_->CancelJob({"op", Role::kAdmin}, id).IgnoreError();  // skip the final evaluation
}

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
  EXPECT_TRUE(a_->Next().evaluate_only());                   // the round closed with three updates
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
  ASSERT_TRUE(UploadA(ta).ok());
  Restart();
  Task tb = b_->Next();
  ASSERT_EQ(tb.job_id(), id);
  ASSERT_TRUE(UploadB(tb).ok());
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

void FoldAll(Aggregator& aggregator, const TensorList& update, uint64_t weight,
             std::vector<size_t> rows) {
  ASSERT_TRUE(aggregator.BeginUpdate(weight, std::move(rows)).ok());
  for (size_t k = 0; k < update.size(); ++k) {
    ASSERT_TRUE(aggregator.Fold(k, 0, update[k].data.data(), update[k].data.size()).ok());
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
