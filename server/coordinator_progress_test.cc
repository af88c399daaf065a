// The sites' task phases in the open round (Coordinator::Progress and JobStatus.current): what
// a site may tell, what the coordinator marks itself, and the refusals, counted.
#include <cmath>
#include <limits>

#include <gtest/gtest.h>

#include "server/coordinator_test_fixture.h"

namespace fl {
namespace {

ProgressRequest Phase(const Task& task, TaskPhase phase, uint32_t done = 0, uint32_t total = 0,
                      double images_per_second = 0) {
  ProgressRequest request;
  request.set_job_id(task.job_id());
  request.set_round(task.round());
  request.set_phase(phase);
  request.set_steps_done(done);
  request.set_steps_total(total);
  request.set_images_per_second(images_per_second);
  return request;
}

class CoordinatorProgressTest : public CoordinatorTest {
 protected:
  // A one-round job of 30 local steps that needs one site, over sites a, b and c.
  std::string SubmitThirtySteps() {
    Join("site-c", {"a"});
    c_ = std::make_unique<SiteStream>(core_.get(), "site-c");
    ConnectSites();
    JobSpec spec = Filled(JobSpec());
    spec.set_rounds(1);
    spec.set_min_sites(1);
    spec.set_local_steps(30);
    auto job = core_->SubmitJob({"op", Role::kAdmin}, spec);
    EXPECT_TRUE(job.ok()) << job.status();
    return job->job_id();
  }
  // The site's entry of JobStatus.current (a default one when it has none).
  SiteTask Current(const std::string& id, const std::string& site) {
    absl::StatusOr<JobStatus> job = core_->GetJob(id);
    EXPECT_TRUE(job.ok()) << job.status();
    for (const SiteTask& t : job->current()) {
      if (t.site() == site) return t;
    }
    return SiteTask();
  }
  void TearDown() override {
    if (core_) core_->Shutdown();
    c_.reset();
    CoordinatorTest::TearDown();
  }
  std::unique_ptr<SiteStream> c_;
};

TEST_F(CoordinatorProgressTest, JobStatusShowsEachPhase) {
  const std::string id = SubmitThirtySteps();
  const Task ta = a_->Next(), tb = b_->Next(), tc = c_->Next();
  ASSERT_EQ(ta.job_id(), id);
  SiteTask a = Current(id, "site-a");
  EXPECT_EQ(a.phase(), TASK_PHASE_ASSIGNED);
  EXPECT_EQ(a.round(), 0u);
  EXPECT_GT(a.since_unix_seconds(), 1e9);
  EXPECT_EQ(Current(id, "site-b").phase(), TASK_PHASE_ASSIGNED);

  ASSERT_TRUE(core_->Progress(a_->who(), Phase(ta, TASK_PHASE_DOWNLOADING)).ok());
  EXPECT_EQ(Current(id, "site-a").phase(), TASK_PHASE_DOWNLOADING);
  Download(a_->who(), ta);
  EXPECT_EQ(Current(id, "site-a").phase(), TASK_PHASE_DOWNLOADED);
  ASSERT_TRUE(core_->Progress(a_->who(), Phase(ta, TASK_PHASE_TRAINING, 0, 30)).ok());
  const double training_since = Current(id, "site-a").since_unix_seconds();
  ASSERT_TRUE(core_->Progress(a_->who(), Phase(ta, TASK_PHASE_TRAINING, 12, 30, 35.5)).ok());
  a = Current(id, "site-a");
  EXPECT_EQ(a.phase(), TASK_PHASE_TRAINING);
  EXPECT_EQ(a.steps_done(), 12u);
  EXPECT_EQ(a.steps_total(), 30u);
  EXPECT_DOUBLE_EQ(a.images_per_second(), 35.5);
  EXPECT_DOUBLE_EQ(a.since_unix_seconds(), training_since);  // the phase's start, not the step's

  ASSERT_TRUE(core_
                  ->Decline(b_->who(),
                            [&] {
                              DeclineRequest d;
                              d.set_job_id(tb.job_id());
                              d.set_round(tb.round());
                              d.set_reason("privacy budget: over the cap");
                              return d;
                            }())
                  .ok());
  SiteTask b = Current(id, "site-b");
  EXPECT_EQ(b.phase(), TASK_PHASE_DECLINED);
  EXPECT_EQ(b.reason(), "privacy budget: over the cap");

  ASSERT_TRUE(core_->Progress(a_->who(), Phase(ta, TASK_PHASE_UPLOADING)).ok());
  EXPECT_EQ(Current(id, "site-a").phase(), TASK_PHASE_UPLOADING);
  EXPECT_DOUBLE_EQ(Current(id, "site-a").images_per_second(), 0);
  ASSERT_TRUE(UploadA(ta).ok());
  a = Current(id, "site-a");
  EXPECT_EQ(a.phase(), TASK_PHASE_UPLOADED);
  EXPECT_EQ(a.steps_done(), 12u);  // the last steps it told are kept
  EXPECT_EQ(Current(id, "site-c").phase(), TASK_PHASE_ASSIGNED);

  // The live state is never stored: the job's stored copy has none.
  absl::StatusOr<std::vector<JobStatus>> stored = store_->Jobs();
  ASSERT_TRUE(stored.ok()) << stored.status();
  for (const JobStatus& job : *stored) EXPECT_EQ(job.current_size(), 0);

  // Site c uploads: the round closes; the final evaluation's tasks show, then reports.
  ASSERT_TRUE(Upload(c_->who(), tc, Update(3, 2, 0), 15, {"a"}).ok());
  const Task ea = a_->Next();
  ASSERT_TRUE(ea.evaluate_only());
  EXPECT_EQ(Current(id, "site-a").round(), 1u);
  ASSERT_TRUE(core_->Progress(a_->who(), Phase(ea, TASK_PHASE_EVALUATING)).ok());
  EXPECT_EQ(Current(id, "site-a").phase(), TASK_PHASE_EVALUATING);
  ASSERT_TRUE(core_->Report(a_->who(), AurocReport(ea, 0.75, 5, 5, 10)).ok());
  EXPECT_EQ(Current(id, "site-a").phase(), TASK_PHASE_REPORTED);
  EXPECT_EQ(Counted(registry_, "fl_coordinator_progress_total", "accepted"), 5);
}

TEST_F(CoordinatorProgressTest, RefusedProgressIsCounted) {
  const std::string id = SubmitThirtySteps();
  const Task ta = a_->Next();
  c_->Next();
  ASSERT_EQ(ta.job_id(), id);
  auto code = [&](const Identity& who, const ProgressRequest& r) {
    return core_->Progress(who, r).code();
  };
  using absl::StatusCode;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  // Steps beyond the total or the job's local steps, throughput not finite or negative, a
  // phase only the coordinator sets.
  EXPECT_EQ(code(a_->who(), Phase(ta, TASK_PHASE_TRAINING, 13, 12)), StatusCode::kInvalidArgument);
  EXPECT_EQ(code(a_->who(), Phase(ta, TASK_PHASE_TRAINING, 12, 31)), StatusCode::kInvalidArgument);
  EXPECT_EQ(code(a_->who(), Phase(ta, TASK_PHASE_TRAINING, 1, 30, nan)),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(code(a_->who(), Phase(ta, TASK_PHASE_TRAINING, 1, 30, inf)),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(code(a_->who(), Phase(ta, TASK_PHASE_TRAINING, 1, 30, -1)),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(code(a_->who(), Phase(ta, TASK_PHASE_UPLOADED)), StatusCode::kInvalidArgument);
  EXPECT_EQ(code(a_->who(), Phase(ta, TASK_PHASE_UNSPECIFIED)), StatusCode::kInvalidArgument);
  // A site without a task in the round.
  EXPECT_EQ(code({"site-z", Role::kSite}, Phase(ta, TASK_PHASE_TRAINING, 1, 30)),
            StatusCode::kPermissionDenied);
  EXPECT_EQ(Counted(registry_, "fl_coordinator_progress_total", "rejected"), 8);
  // Another round or job, and a task already finished: stale.
  Task stale = ta;
  stale.set_round(4);
  EXPECT_EQ(code(a_->who(), Phase(stale, TASK_PHASE_TRAINING, 1, 30)),
            StatusCode::kFailedPrecondition);
  stale = ta;
  stale.set_job_id("no-such-job");
  EXPECT_EQ(code(a_->who(), Phase(stale, TASK_PHASE_DOWNLOADING)), StatusCode::kFailedPrecondition);
  ASSERT_TRUE(UploadA(ta).ok());
  EXPECT_EQ(code(a_->who(), Phase(ta, TASK_PHASE_TRAINING, 30, 30)),
            StatusCode::kFailedPrecondition);
  EXPECT_EQ(Counted(registry_, "fl_coordinator_progress_total", "stale"), 3);
  EXPECT_EQ(Counted(registry_, "fl_coordinator_progress_total", "accepted"), 0);
  // Nothing refused changed what JobStatus shows.
  const SiteTask a = Current(id, "site-a");
  EXPECT_EQ(a.phase(), TASK_PHASE_UPLOADED);
  EXPECT_EQ(a.steps_done(), 0u);
}

}  // namespace
}  // namespace fl
