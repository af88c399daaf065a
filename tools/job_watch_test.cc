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

}  // namespace
}  // namespace fl
