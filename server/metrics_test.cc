#include "server/metrics.h"

#include <map>
#include <optional>
#include <string>

#include <gtest/gtest.h>

namespace fl {
namespace {

// The value of `name`{labels} in the registry, or nullopt when the series is not exported.
std::optional<double> Value(prometheus::Registry& registry, const std::string& name,
                            const std::map<std::string, std::string>& labels) {
  for (const prometheus::MetricFamily& family : registry.Collect()) {
    if (family.name != name) continue;
    for (const prometheus::ClientMetric& metric : family.metric) {
      std::map<std::string, std::string> have;
      for (const auto& label : metric.label) have[label.name] = label.value;
      if (have == labels) return metric.gauge.value;
    }
  }
  return std::nullopt;
}

SiteInfo Site(const std::string& name, bool connected, double last_seen) {
  SiteInfo site;
  site.set_name(name);
  site.set_connected(connected);
  site.set_last_seen_unix_seconds(last_seen);
  return site;
}

JobStatus Job(const std::string& id, JobState state, uint32_t rounds_done) {
  JobStatus job;
  job.set_job_id(id);
  job.set_state(state);
  job.set_rounds_done(rounds_done);
  job.mutable_spec()->set_rounds(5);
  job.mutable_spec()->set_round_deadline_seconds(120);
  return job;
}

// Counters by result exist at 0 before their first increment, so that increase() sees it.
TEST(CoordinatorMetricsTest, ResultCountersStartAtZero) {
  prometheus::Registry registry;
  CoordinatorMetrics metrics(registry);
  for (const char* result : {"accepted", "rejected", "failed", "stale"}) {
    bool found = false;
    for (const prometheus::MetricFamily& family : registry.Collect()) {
      if (family.name != "fl_coordinator_updates_total") continue;
      for (const prometheus::ClientMetric& metric : family.metric) {
        found |= metric.label.size() == 1 && metric.label[0].value == result &&
                 metric.counter.value == 0;
      }
    }
    EXPECT_TRUE(found) << result;
  }
}

TEST(CoordinatorMetricsTest, SitesMirrorTheirStreams) {
  prometheus::Registry registry;
  CoordinatorMetrics metrics(registry);
  metrics.RefreshStatus({Site("site-a", true, 1000), Site("site-b", false, 400)}, {}, 1001);
  EXPECT_EQ(Value(registry, "fl_coordinator_site_connected", {{"site", "site-a"}}), 1);
  EXPECT_EQ(Value(registry, "fl_coordinator_site_connected", {{"site", "site-b"}}), 0);
  EXPECT_EQ(
      Value(registry, "fl_coordinator_site_last_seen_timestamp_seconds", {{"site", "site-b"}}),
      400);
  metrics.RefreshStatus({Site("site-a", false, 1010)}, {}, 1020);
  EXPECT_EQ(Value(registry, "fl_coordinator_site_connected", {{"site", "site-a"}}), 0);
  EXPECT_EQ(
      Value(registry, "fl_coordinator_site_last_seen_timestamp_seconds", {{"site", "site-a"}}),
      1010);
}

// The stuck-round alert compares time() with the progress time: it must move only when a round
// is committed, and a finished job must leave no series behind.
TEST(CoordinatorMetricsTest, ProgressTimeMovesOnlyWithCommittedRounds) {
  prometheus::Registry registry;
  CoordinatorMetrics metrics(registry);
  const std::map<std::string, std::string> j1{{"fl_job", "j1"}};
  metrics.RefreshStatus({}, {Job("j1", QUEUED, 0)}, 50);  // waits its turn: not stuck
  EXPECT_EQ(Value(registry, "fl_coordinator_job_progress_timestamp_seconds", j1), std::nullopt);
  metrics.RefreshStatus({}, {Job("j1", RUNNING, 0), Job("old", DONE, 5)}, 100);
  EXPECT_EQ(Value(registry, "fl_coordinator_job_progress_timestamp_seconds", j1), 100);
  EXPECT_EQ(Value(registry, "fl_coordinator_job_rounds_planned", j1), 5);
  EXPECT_EQ(Value(registry, "fl_coordinator_job_round_deadline_seconds", j1), 120);
  EXPECT_EQ(Value(registry, "fl_coordinator_job_rounds_done", {{"fl_job", "old"}}), std::nullopt);

  metrics.RefreshStatus({}, {Job("j1", RUNNING, 0)}, 160);
  EXPECT_EQ(Value(registry, "fl_coordinator_job_progress_timestamp_seconds", j1), 100);
  metrics.RefreshStatus({}, {Job("j1", RUNNING, 1)}, 190);
  EXPECT_EQ(Value(registry, "fl_coordinator_job_progress_timestamp_seconds", j1), 190);
  EXPECT_EQ(Value(registry, "fl_coordinator_job_rounds_done", j1), 1);
  metrics.RefreshStatus({}, {Job("j1", RUNNING, 1)}, 250);
  EXPECT_EQ(Value(registry, "fl_coordinator_job_progress_timestamp_seconds", j1), 190);

  metrics.RefreshStatus({}, {Job("j1", FAILED, 1)}, 300);
  for (const char* name : {"fl_coordinator_job_rounds_done", "fl_coordinator_job_rounds_planned",
                           "fl_coordinator_job_round_deadline_seconds",
                           "fl_coordinator_job_progress_timestamp_seconds"}) {
    EXPECT_EQ(Value(registry, name, j1), std::nullopt) << name;
  }
}

// The job dashboard's AUROC per finding: a round's AUROCs come with the next round's reports,
// so the latest round that has them answers; a finished job leaves no series.
TEST(CoordinatorMetricsTest, LatestEvaluatedRoundAndLoss) {
  prometheus::Registry registry;
  CoordinatorMetrics metrics(registry);
  const std::map<std::string, std::string> j1{{"fl_job", "j1"}};
  JobStatus job = Job("j1", RUNNING, 2);
  RoundSummary* first = job.add_rounds();
  first->set_train_loss(0.7);
  LabelMetric* effusion = first->add_test();
  effusion->set_label("effusion");
  effusion->set_auroc(0.61);
  RoundSummary* second = job.add_rounds();
  second->set_train_loss(0.5);
  metrics.RefreshStatus({}, {job}, 100);
  EXPECT_EQ(Value(registry, "fl_coordinator_job_train_loss", j1), 0.5);
  EXPECT_EQ(Value(registry, "fl_coordinator_job_auroc", {{"fl_job", "j1"}, {"label", "effusion"}}),
            0.61);
  LabelMetric* cardiomegaly = job.mutable_rounds(1)->add_test();
  cardiomegaly->set_label("cardiomegaly");
  cardiomegaly->set_auroc(0.75);
  metrics.RefreshStatus({}, {job}, 110);
  EXPECT_EQ(
      Value(registry, "fl_coordinator_job_auroc", {{"fl_job", "j1"}, {"label", "cardiomegaly"}}),
      0.75);
  job.set_state(DONE);
  metrics.RefreshStatus({}, {job}, 120);
  EXPECT_EQ(Value(registry, "fl_coordinator_job_train_loss", j1), std::nullopt);
  for (const char* finding : {"effusion", "cardiomegaly"}) {
    EXPECT_EQ(Value(registry, "fl_coordinator_job_auroc", {{"fl_job", "j1"}, {"label", finding}}),
              std::nullopt)
        << finding;
  }
}

}  // namespace
}  // namespace fl
