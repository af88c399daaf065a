#include "client/metrics.h"

#include <gtest/gtest.h>
#include <prometheus/registry.h>

namespace fl {
namespace {

// The PACS gauges exist only once a sync was exported, and carry its figures.
TEST(ClientMetricsTest, PacsSyncIsExportedOnlyWhereThereIsOne) {
  prometheus::Registry registry;
  ClientMetrics metrics(registry);
  auto names = [&registry] {
    std::vector<std::string> out;
    for (const auto& family : registry.Collect()) {
      if (!family.metric.empty() && family.name.rfind("fl_client_pacs", 0) == 0) {
        out.push_back(family.name);
      }
    }
    return out;
  };
  EXPECT_TRUE(names().empty());  // a site without a PACS source shows no PACS series
  PacsSyncOutcome outcome;
  outcome.report.fetched = 3;
  outcome.report.already_cached = 5;
  outcome.report.rejected = 1;
  outcome.report.fetched_bytes = 12345;
  outcome.sync = absl::UnavailableError("the PACS went away");
  outcome.cached = 8;
  metrics.ExportPacsSync(outcome, 1.7e9);
  EXPECT_EQ(names().size(), 5u);
  EXPECT_EQ(metrics.pacs_sync_instances.Add({{"result", "fetched"}}).Value(), 3);
  EXPECT_EQ(metrics.pacs_sync_instances.Add({{"result", "already_cached"}}).Value(), 5);
  EXPECT_EQ(metrics.pacs_sync_instances.Add({{"result", "rejected"}}).Value(), 1);
  EXPECT_EQ(metrics.pacs_sync_instances.Add({{"result", "failed"}}).Value(), 0);
  EXPECT_EQ(metrics.pacs_sync_fetched_bytes.Add({}).Value(), 12345);
  EXPECT_EQ(metrics.pacs_cached_instances.Add({}).Value(), 8);
  EXPECT_EQ(metrics.pacs_sync_success.Add({}).Value(), 0);
  EXPECT_EQ(metrics.pacs_sync_timestamp.Add({}).Value(), 1.7e9);
}

}  // namespace
}  // namespace fl
