// The coordinator core driven directly: admission and validation of uploads (hostile ones
// included), transfer slots, initial models, cancellation, clipping and quorum.
#include <gtest/gtest.h>

#include "server/coordinator_test_fixture.h"

namespace fl {
namespace {

namespace fs = std::filesystem;

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
  // A value whose weighted contribution the exact sum cannot hold (20 × 1e14 > 2^50).
  auto huge = Upload(b_->who(), tb, Update(1e14f, 0, 0), 20, {"a"});
  EXPECT_EQ(code(huge), StatusCode::kInvalidArgument);
  EXPECT_NE(huge.status().message().find("exact sum"), std::string::npos) << huge.status();
  // An admin or an unassigned identity cannot upload.
  EXPECT_EQ(code(Upload({"site-z", Role::kSite}, tb, good_b, 10, {"a"})),
            StatusCode::kPermissionDenied);
  EXPECT_EQ(Rejected(registry_), 9);  // the stale round is counted apart
  EXPECT_EQ(Counted(registry_, "fl_coordinator_updates_total", "stale"), 1);

  // Valid updates; a replay of site-b's is refused.
  ASSERT_TRUE(Upload(b_->who(), tb, good_b, 15, {"a"}).ok());
  EXPECT_EQ(code(Upload(b_->who(), tb, good_b, 15, {"a"})), StatusCode::kAlreadyExists);
  ASSERT_TRUE(UploadA(ta).ok());

  // Final evaluation tasks, then the job ends.
  Task ea = a_->Next();
  Task eb = b_->Next();
  EXPECT_TRUE(ea.evaluate_only());
  const MetricsReport report = AurocReport(ea, 0.75, 5, 5, 10);
  ASSERT_TRUE(core_->Report(a_->who(), report).ok());
  ASSERT_TRUE(core_->Report(b_->who(), report).ok());
  JobStatus job = WaitForState(id, DONE);
  ASSERT_EQ(job.rounds_size(), 1);
  EXPECT_DOUBLE_EQ(job.rounds(0).mean_auroc(), 0.75);

  ExpectWeightedMeanOfAAndB(id);
}

// With one transfer slot, a second upload is checked and then waits without a grant (the site
// sends nothing more); when its site goes away it ends, and a retry succeeds once the slot frees.
TEST_F(CoordinatorTest, UploadIsGrantedOnlyWhenATransferSlotIsFree) {
  Task ta, tb;
  OneRoundWithOneTransferSlot(&ta, &tb);
  absl::Notification a_go;
  std::thread a = UploadHoldingTheSlot(ta, &a_go);

  const std::vector<UploadMessage> b_messages = Messages(tb, Update(3, 2, 0), 15, {"a"});
  std::atomic<bool> b_granted{false};
  size_t b_read = 0;
  std::thread b([&] {
    auto next = [&](UploadMessage* m) {
      if (b_read == b_messages.size()) return false;
      *m = b_messages[b_read++];
      return true;
    };
    auto grant = [&] { return b_granted = true; };
    // Asked only while it waits for the slot, ungranted: the site goes away then (no sleep
    // needed to show that the wait grants nothing).
    auto gone = [&] { return !b_granted.load(); };
    auto done = core_->Upload(b_->who(), {next, grant, gone});
    EXPECT_EQ(done.status().code(), absl::StatusCode::kCancelled) << done.status();
  });
  b.join();
  EXPECT_FALSE(b_granted.load());
  EXPECT_EQ(b_read, 1u);              // only the header was read
  EXPECT_EQ(Rejected(registry_), 0);  // a site that left is not a refused update

  a_go.Notify();
  a.join();
  auto retried = UploadB(tb);
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
  std::atomic<int> chunks{0};
  std::thread b([&] {
    // Asked only while the download waits for the slot: the site goes away then, before any
    // chunk (no sleep needed to show that the wait sends nothing).
    absl::Status status = core_->Download(
        b_->who(), request, [&](const TensorChunk&) { return ++chunks > 0; },
        [&] { return chunks.load() == 0; });
    EXPECT_EQ(status.code(), absl::StatusCode::kCancelled) << status;
  });
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
  clock_ = &instant_clock_;  // the pauses between the failing job's tries pass at once
  Restart();
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

// WEIGHTING_EQUAL: site-a's 5 images weigh as much as site-b's 15. The round's loss is the mean
// of the losses reported (site-b, as under DP, reports none); a non-finite loss is refused.
TEST_F(CoordinatorTest, EqualWeightingAndALossOnlyFromSitesThatReportOne) {
  ConnectSites();
  JobSpec spec;
  spec.set_rounds(1);
  spec.set_weighting(WEIGHTING_EQUAL);
  const std::string id = Submit(spec);
  Task ta = a_->Next();
  Task tb = b_->Next();
  auto loss = [](double value) {
    return [value](std::vector<UploadMessage>& m) { m[0].mutable_header()->set_train_loss(value); };
  };
  EXPECT_EQ(Upload(a_->who(), ta, Update(1, 4, 6), 5, {"a", "b"}, loss(-1)).status().code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(Upload(a_->who(), ta, Update(1, 4, 6), 5, {"a", "b"}, loss(0.25)).ok());
  ASSERT_TRUE(UploadB(tb).ok());
  a_->Next();
  b_->Next();
  core_->CancelJob({"op", Role::kAdmin}, id).IgnoreError();  // skip the final evaluation
  const TensorList weights = CommittedWeights(id);
  ASSERT_EQ(weights.size(), 3u);
  EXPECT_FLOAT_EQ(weights[0].data[0], 2.0f);  // (1 + 3) / 2
  EXPECT_FLOAT_EQ(weights[1].data[0], 3.0f);  // row a: (4 + 2) / 2
  EXPECT_FLOAT_EQ(weights[1].data[2], 6.0f);  // row b: site-a's alone
  auto job = core_->GetJob(id);
  ASSERT_TRUE(job.ok()) << job.status();
  ASSERT_EQ(job->rounds_size(), 1);
  ASSERT_TRUE(job->rounds(0).has_train_loss());
  EXPECT_DOUBLE_EQ(job->rounds(0).train_loss(), 0.25);
}

double JobMeanAuroc(prometheus::Registry& registry, const std::string& id) {
  for (const auto& f : registry.Collect()) {
    if (f.name != "fl_coordinator_job_mean_auroc") continue;
    for (const auto& m : f.metric) {
      if (m.label[0].value == id) return m.gauge.value;
    }
  }
  return std::nan("");
}

// The attack of issue 11: a site with a valid certificate claims AUROC 0.01 on 2,000,000,000
// images. Refused (it declared 100), and within its declaration its lie is one figure of three,
// of which the job shows the median, with each site's own beside it.
TEST_F(CoordinatorTest, ForgedEvaluationReportChangesNothingTheOperatorSees) {
  Join("site-c", {"a"});
  Join("site-d", {"a"});  // joined, never connected: never tasked
  ConnectSites();
  SiteStream c(core_.get(), "site-c");
  JobSpec spec;
  spec.set_rounds(1);
  spec.set_min_sites(3);
  const std::string id = Submit(spec);
  Task ta = a_->Next(), tb = b_->Next(), tc = c.Next();
  ASSERT_TRUE(UploadA(ta).ok());
  ASSERT_TRUE(UploadB(tb).ok());
  ASSERT_TRUE(Upload(c.who(), tc, Update(2, 2, 0), 10, {"a"}).ok());
  const Task ea = a_->Next(), eb = b_->Next(), ec = c.Next();  // the final evaluation
  ASSERT_TRUE(ea.evaluate_only() && eb.evaluate_only() && ec.evaluate_only());
  auto code = [&](const SiteStream& s, const MetricsReport& r) {
    return core_->Report(s.who(), r).code();
  };
  using absl::StatusCode;

  EXPECT_EQ(code(c, AurocReport(ec, 0.01, 1'000'000'000, 1'000'000'000, 2'000'000'000)),
            StatusCode::kInvalidArgument);  // the attack
  EXPECT_EQ(code(c, AurocReport(ec, 0.01, 10, 10, 200)), StatusCode::kInvalidArgument);
  EXPECT_EQ(code(c, AurocReport(ec, 1.5, 10, 10, 20)), StatusCode::kInvalidArgument);
  EXPECT_EQ(code(c, AurocReport(ec, 0.5, 0, 10, 20)), StatusCode::kInvalidArgument);
  EXPECT_EQ(code(*b_, AurocReport(eb, 0.5, 10, 10, 20, "b")),
            StatusCode::kInvalidArgument);  // site-b does not hold finding b
  MetricsReport twice = AurocReport(ec, 0.5, 10, 10, 20);
  *twice.add_test() = twice.test(0);
  EXPECT_EQ(code(c, twice), StatusCode::kInvalidArgument);
  MetricsReport stale = AurocReport(ec, 0.5, 10, 10, 20);
  stale.set_round(0);
  EXPECT_EQ(code(c, stale), StatusCode::kFailedPrecondition);
  EXPECT_EQ(core_->Report({"site-d", Role::kSite}, AurocReport(ec, 0.5, 10, 10, 20)).code(),
            StatusCode::kPermissionDenied);
  // A ROC curve must be one: rates in [0, 1], never decreasing, from (0, 0) to (1, 1).
  auto with_roc = [&](std::vector<std::pair<double, double>> points) {
    MetricsReport r = AurocReport(ec, 0.5, 10, 10, 20);
    for (const auto& [fpr, tpr] : points) {
      RocPoint* p = r.mutable_test(0)->add_roc();
      p->set_fpr(fpr);
      p->set_tpr(tpr);
    }
    return r;
  };
  EXPECT_EQ(code(c, with_roc({{0, 0}, {0.5, 0.9}, {0.4, 1}, {1, 1}})),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(code(c, with_roc({{0, 0}, {0.5, 1.5}, {1, 1}})), StatusCode::kInvalidArgument);
  EXPECT_EQ(code(c, with_roc({{0, 0}, {0.5, 0.9}})), StatusCode::kInvalidArgument);
  // Named metrics (other workloads' figures) must be well formed too.
  MetricsReport named = AurocReport(ec, 0.5, 10, 10, 20);
  Metric* l1 = named.add_metrics();
  l1->set_name("l1");
  l1->set_value(std::nan(""));
  EXPECT_EQ(code(c, named), StatusCode::kInvalidArgument);
  l1->set_value(0.1);
  l1->set_name("L1 error");
  EXPECT_EQ(code(c, named), StatusCode::kInvalidArgument);
  EXPECT_EQ(Counted(registry_, "fl_coordinator_reports_total", "rejected"), 12);
  EXPECT_EQ(Counted(registry_, "fl_coordinator_reports_total", "stale"), 1);
  auto job = core_->GetJob(id);
  ASSERT_TRUE(job.ok());
  EXPECT_EQ(job->rounds(0).reports_size(), 0);
  EXPECT_TRUE(std::isnan(job->rounds(0).mean_auroc()));

  // Honest reports; site-a's is resent (its answer lost) and counts once.
  ASSERT_TRUE(core_->Report(a_->who(), AurocReport(ea, 0.80, 10, 30, 40)).ok());
  ASSERT_TRUE(core_->Report(a_->who(), AurocReport(ea, 0.80, 10, 30, 40)).ok());
  ASSERT_TRUE(core_->Report(b_->who(), AurocReport(eb, 0.84, 20, 20, 40)).ok());
  EXPECT_EQ(Counted(registry_, "fl_coordinator_reports_total", "duplicate"), 1);
  EXPECT_DOUBLE_EQ(JobMeanAuroc(registry_, id), 0.82);  // the median of two: their mean
  // The lie within site-c's declaration: accepted, attributed, and it does not move the median
  // beyond the honest figures.
  ASSERT_TRUE(core_->Report(c.who(), AurocReport(ec, 0.01, 50, 50, 100)).ok());
  EXPECT_EQ(Counted(registry_, "fl_coordinator_reports_total", "accepted"), 3);
  job = core_->GetJob(id);
  ASSERT_TRUE(job.ok());
  const RoundSummary& summary = job->rounds(0);
  ASSERT_EQ(summary.test_size(), 1);
  EXPECT_DOUBLE_EQ(summary.test(0).auroc(), 0.80);  // median of 0.80, 0.84, 0.01
  EXPECT_EQ(summary.test(0).positives(), 80u);
  EXPECT_DOUBLE_EQ(summary.mean_auroc(), 0.80);
  EXPECT_DOUBLE_EQ(JobMeanAuroc(registry_, id), 0.80);
  ASSERT_EQ(summary.reports_size(), 3);
  std::map<std::string, double> own;
  for (const SiteReport& r : summary.reports()) own[r.site()] = r.test(0).auroc();
  EXPECT_EQ(own,
            (std::map<std::string, double>{{"site-a", 0.80}, {"site-b", 0.84}, {"site-c", 0.01}}));
  WaitForState(id, DONE);  // every tasked site reported once
}

// Model selection: the sites' validation figures on rounds 1..3's models are 0.6, 0.8, 0.7; with
// patience 1 the job stops after round 3 (its model, the 4th, is evaluated last: 0.75), keeps the
// model after round 2 as the best, and exports it with --best.
TEST_F(CoordinatorTest, BestModelIsKeptAndTheJobStopsWhenValidationStopsImproving) {
  ConnectSites();
  JobSpec spec;
  spec.set_rounds(6);
  spec.mutable_early_stopping()->set_patience_rounds(1);
  const std::string id = Submit(spec);
  std::map<uint32_t, TensorList> evaluated;  // rounds done -> the model the sites evaluated
  const std::vector<double> figures = {0.6, 0.8, 0.7};
  for (uint32_t round = 0; round <= figures.size(); ++round) {
    const Task ta = a_->Next(), tb = b_->Next();
    ASSERT_EQ(ta.round(), round);
    ASSERT_FALSE(ta.evaluate_only());
    if (round > 0) {
      evaluated[round] = Download(a_->who(), ta);
      const double figure = figures[round - 1];
      ASSERT_TRUE(core_->Report(a_->who(), AurocReport(ta, figure - 0.02, 10, 10, 20)).ok());
      ASSERT_TRUE(core_->Report(b_->who(), AurocReport(tb, figure + 0.02, 10, 10, 20)).ok());
    }
    // Different updates each round, so each round's model differs.
    ASSERT_TRUE(Upload(a_->who(), ta, Update(1 + round, 4, 6), 5, {"a", "b"}).ok());
    ASSERT_TRUE(UploadB(tb).ok());
  }
  const Task ea = a_->Next(), eb = b_->Next();  // no round 4: the final evaluation
  ASSERT_TRUE(ea.evaluate_only());
  EXPECT_EQ(ea.round(), 4u);
  ASSERT_TRUE(core_->Report(a_->who(), AurocReport(ea, 0.75, 10, 10, 20)).ok());
  ASSERT_TRUE(core_->Report(b_->who(), AurocReport(eb, 0.75, 10, 10, 20)).ok());
  const JobStatus job = WaitForState(id, DONE);
  EXPECT_EQ(job.rounds_done(), 4u);
  EXPECT_TRUE(job.stopped_early());
  EXPECT_EQ(job.best_round(), 2u);
  EXPECT_DOUBLE_EQ(job.best_score(), 0.8);

  auto exported = [&](bool best) {
    std::string bytes, card;
    EXPECT_TRUE(core_
                    ->ExportModel({"op", Role::kAdmin}, id, best,
                                  [&](const FileChunk& c) {
                                    (c.file() == "model.json" ? card : bytes) += c.data();
                                    return true;
                                  })
                    .ok());
    const std::string path = dir_ + (best ? "/best.safetensors" : "/last.safetensors");
    EXPECT_TRUE(WriteFileAtomic(path, bytes, 0600).ok());
    absl::StatusOr<TensorList> weights = ReadSafetensors(path);
    EXPECT_TRUE(weights.ok()) << weights.status();
    return std::make_pair(weights.ok() ? *weights : TensorList(), card);
  };
  const auto [best, best_card] = exported(true);
  ASSERT_EQ(best.size(), evaluated[2].size());
  for (size_t i = 0; i < best.size(); ++i) EXPECT_EQ(best[i].data, evaluated[2][i].data);
  EXPECT_NE(best_card.find("\"rounds\": 2"), std::string::npos) << best_card;
  EXPECT_NE(best_card.find("\"selection_score\": 0.8"), std::string::npos) << best_card;
  const auto [last, last_card] = exported(false);
  EXPECT_NE(last[0].data, best[0].data);
  EXPECT_NE(last_card.find("\"rounds\": 4"), std::string::npos) << last_card;
}

// Without patience the job runs every round, and a job whose sites never report has no best
// model to export.
TEST_F(CoordinatorTest, NoValidationFiguresMeansNoBestModel) {
  ConnectSites();
  JobSpec spec;
  spec.set_rounds(1);
  const std::string id = Submit(spec);
  ASSERT_TRUE(UploadA(a_->Next()).ok());
  ASSERT_TRUE(UploadB(b_->Next()).ok());
  a_->Next();
  b_->Next();
  core_->CancelJob({"op", Role::kAdmin}, id).IgnoreError();  // skip the final evaluation
  const absl::Status status =
      core_->ExportModel({"op", Role::kAdmin}, id, true, [](const FileChunk&) { return true; });
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound) << status;
}

// Nobody uploads: three tries of 1 s, with pauses of 1 s and 2 s between them (the default
// round_retry, on a clock that passes them at once), then the job fails with the reason.
TEST_F(CoordinatorTest, RoundWithoutQuorumIsRetriedThenFailsWithReason) {
  clock_ = &instant_clock_;
  Restart();
  JobSpec spec;
  spec.set_rounds(1);
  spec.set_round_deadline_seconds(1);
  const std::string id = Submit(spec);
  JobStatus job = WaitForState(id, FAILED);
  EXPECT_NE(job.message().find("required updates"), std::string::npos) << job.message();
  EXPECT_EQ(instant_clock_.waits(),
            (std::vector<absl::Duration>{absl::Seconds(1), absl::Seconds(2)}));
  EXPECT_EQ(metrics_.rounds_failed.Value(), 3);
}

// A round that loses its quorum to declines (e.g. both sites' disks are full for a while) is
// tried again only after a pause, doubling up to round_retry.max_seconds, and the job fails
// after round_retry.attempts tries. The clock blocks, so the test looks at the scheduler in
// each pause and ends it; nothing sleeps through a real back-off.
TEST_F(CoordinatorTest, QuorumLostToDeclinesIsTriedAgainAfterBackOff) {
  config_.mutable_round_retry()->set_initial_seconds(10);
  config_.mutable_round_retry()->set_max_seconds(15);
  config_.mutable_round_retry()->set_attempts(4);
  clock_ = &blocking_clock_;
  Restart();
  JobSpec spec;
  spec.set_rounds(1);
  const std::string id = Submit(spec);
  auto decline_both = [&] {
    for (SiteStream* site : {a_.get(), b_.get()}) {
      const Task task = site->Next();
      DeclineRequest request;
      request.set_job_id(task.job_id());
      request.set_round(task.round());
      request.set_reason("disk full");
      ASSERT_TRUE(core_->Decline(site->who(), request).ok());
    }
  };
  size_t nth = 0;
  for (absl::Duration pause : {absl::Seconds(10), absl::Seconds(15), absl::Seconds(15)}) {
    decline_both();
    ASSERT_TRUE(WaitForPause(++nth));
    EXPECT_EQ(blocking_clock_.waits().back(), pause);
    EXPECT_EQ(core_->GetJob(id)->state(), RUNNING);
    blocking_clock_.Advance(pause);
  }
  decline_both();  // the fourth try: the job fails, with no pause after it
  const JobStatus job = WaitForState(id, FAILED);
  EXPECT_NE(job.message().find("disk full"), std::string::npos) << job.message();
  EXPECT_EQ(blocking_clock_.waits().size(), 3u);
  EXPECT_EQ(metrics_.rounds_failed.Value(), 4);
}

}  // namespace
}  // namespace fl
