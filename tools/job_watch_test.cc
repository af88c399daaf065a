#include "tools/job_watch.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace fl {
namespace {

using ::testing::HasSubstr;

TEST(RoundClockTest, MeasuresFromTheFirstCommitSeen) {
  RoundClock clock;
  clock.Observe(2, 100);  // started watching mid-round: not a commit
  EXPECT_EQ(clock.SecondsPerRound(), std::nullopt);
  clock.Observe(2, 130);
  clock.Observe(3, 160);  // first commit seen
  EXPECT_EQ(clock.SecondsPerRound(), std::nullopt);
  clock.Observe(4, 180);
  clock.Observe(5, 200);
  EXPECT_EQ(clock.SecondsPerRound(), 20);
}

TEST(WatchFrameTest, RoundSitesAurocAndEpsilon) {
  JobStatus job;
  job.set_job_id("j1");
  job.set_state(RUNNING);
  job.set_rounds_done(2);
  job.mutable_spec()->set_rounds(6);
  job.mutable_spec()->set_round_deadline_seconds(120);
  RoundSummary* first = job.add_rounds();
  first->set_round(0);
  LabelMetric* m = first->add_test();
  m->set_label("cardiomegaly");
  m->set_auroc(0.7123);
  RoundSummary* second = job.add_rounds();
  second->set_round(1);
  second->add_sites("site-a");
  second->add_declined("site-b: privacy budget: over the cap");
  SiteReport* report = job.add_sites();
  report->set_site("site-a");
  report->mutable_privacy()->set_epsilon(1.25);
  SiteInfo a, b;
  a.set_name("site-a");
  a.set_connected(true);
  b.set_name("site-b");
  b.set_last_seen_unix_seconds(1000);
  const std::string frame = WatchFrame(job, {a, b}, 1090, 30.0);
  EXPECT_THAT(frame, HasSubstr("job j1: running, 2 of 6 rounds committed, round 2 open "
                               "(deadline 120 s), about 2 min 00 s left at 30 s per round"));
  EXPECT_THAT(frame, HasSubstr("model after round 0: cardiomegaly 0.712"));
  EXPECT_THAT(frame, HasSubstr("site-a"));
  EXPECT_THAT(frame, HasSubstr("1.250"));
  EXPECT_THAT(frame, HasSubstr("aggregated"));
  EXPECT_THAT(frame, HasSubstr("offline, seen 1 min 30 s ago"));
  EXPECT_THAT(frame, HasSubstr("declined: privacy budget: over the cap"));
  job.set_state(DONE);
  EXPECT_THAT(WatchFrame(job, {a}, 1090, std::nullopt), HasSubstr("job j1: done, 2 of 6"));
}

SiteTask Task(const std::string& site, TaskPhase phase, double since) {
  SiteTask t;
  t.set_site(site);
  t.set_round(3);
  t.set_phase(phase);
  t.set_since_unix_seconds(since);
  return t;
}

TEST(SiteTaskTextTest, EachPhase) {
  SiteTask training = Task("a", TASK_PHASE_TRAINING, 960);
  training.set_steps_done(12);
  training.set_steps_total(30);
  training.set_images_per_second(35.2);
  EXPECT_EQ(SiteTaskText(training, 1000), "training 12/30 steps, 35 img/s (for 40 s)");
  training.set_images_per_second(0);
  EXPECT_EQ(SiteTaskText(training, 1000), "training 12/30 steps (for 40 s)");
  EXPECT_EQ(SiteTaskText(Task("a", TASK_PHASE_ASSIGNED, 995), 1000), "assigned, waiting (for 5 s)");
  EXPECT_EQ(SiteTaskText(Task("a", TASK_PHASE_DOWNLOADING, 999), 1000), "downloading (for 1 s)");
  EXPECT_EQ(SiteTaskText(Task("a", TASK_PHASE_DOWNLOADED, 1000), 1000), "downloaded (for 0 s)");
  EXPECT_EQ(SiteTaskText(Task("a", TASK_PHASE_EVALUATING, 990), 1000), "evaluating (for 10 s)");
  EXPECT_EQ(SiteTaskText(Task("a", TASK_PHASE_UPLOADING, 998), 1000), "uploading (for 2 s)");
  EXPECT_EQ(SiteTaskText(Task("a", TASK_PHASE_UPLOADED, 880), 1000), "uploaded (for 2 min 00 s)");
  EXPECT_EQ(SiteTaskText(Task("a", TASK_PHASE_REPORTED, 1000), 1000),
            "evaluated, reported (for 0 s)");
  SiteTask declined = Task("a", TASK_PHASE_DECLINED, 900);
  declined.set_reason("privacy budget: over the cap");
  EXPECT_EQ(SiteTaskText(declined, 1000), "declined: privacy budget: over the cap");
}

TEST(WatchFrameTest, ShowsEachSiteTaskOfTheOpenRound) {
  JobStatus job;
  job.set_job_id("j2");
  job.set_state(RUNNING);
  job.set_rounds_done(3);
  job.mutable_spec()->set_rounds(6);
  SiteTask training = Task("site-a", TASK_PHASE_TRAINING, 1060);
  training.set_steps_done(12);
  training.set_steps_total(30);
  training.set_images_per_second(35);
  *job.add_current() = training;
  *job.add_current() = Task("site-b", TASK_PHASE_UPLOADING, 1098);
  SiteInfo a, b, c;
  a.set_name("site-a");
  b.set_name("site-b");
  c.set_name("site-c");
  c.set_connected(true);
  const std::string frame = WatchFrame(job, {a, b, c}, 1100, std::nullopt);
  EXPECT_THAT(frame, HasSubstr("this round"));
  EXPECT_THAT(frame, HasSubstr("training 12/30 steps, 35 img/s (for 40 s)"));
  EXPECT_THAT(frame, HasSubstr("uploading (for 2 s)"));
  EXPECT_THAT(frame, ::testing::ContainsRegex("site-c +connected +- +- +-"));  // no task this round
  job.clear_current();  // the round closed: no column for it
  EXPECT_THAT(WatchFrame(job, {a}, 1100, std::nullopt), ::testing::Not(HasSubstr("this round")));
}

}  // namespace
}  // namespace fl
