#include "server/store.h"

#include <filesystem>

#include <gtest/gtest.h>
#include <sqlite3.h>

#include "common/test_dir.h"

namespace fl {
namespace {

std::string TempDb(const std::string& name) { return FreshTestDir(name) + "/state.db"; }

TEST(StoreTest, JobsRoundsAndCheckpointsSurviveReopen) {
  const std::string path = TempDb("reopen");
  {
    auto store = Store::Open(path);
    ASSERT_TRUE(store.ok()) << store.status();
    JobStatus job;
    job.set_job_id("j1");
    job.set_state(RUNNING);
    ASSERT_TRUE((*store)->PutJob(job).ok());
    job.set_rounds_done(1);
    job.add_rounds()->set_round(0);
    ASSERT_TRUE((*store)->CommitRound(job, Checkpoint{"/x/j1-1.safetensors", 42, 1}).ok());
  }
  auto store = Store::Open(path);
  ASSERT_TRUE(store.ok());
  auto jobs = (*store)->Jobs();
  ASSERT_TRUE(jobs.ok());
  ASSERT_EQ(jobs->size(), 1u);
  EXPECT_EQ((*jobs)[0].rounds_done(), 1u);
  auto checkpoint = (*store)->LatestCheckpoint("j1");
  ASSERT_TRUE(checkpoint.ok());
  EXPECT_EQ(checkpoint->crc32c, 42u);
  EXPECT_EQ(checkpoint->round, 1u);
  EXPECT_EQ((*store)->LatestCheckpoint("nope").status().code(), absl::StatusCode::kNotFound);
}

TEST(StoreTest, DuplicateReceiptRefusedAndReceiptsReadBack) {
  auto store = Store::Open(TempDb("receipt"));
  ASSERT_TRUE(store.ok());
  Receipt r{"j1", 3, 1, "site-a"};
  r.header.set_num_samples(10);
  r.header.add_labels("a");
  r.scale = 0.5;
  r.bytes = 100;
  r.spool = "/spool/j1-3-1-site-a";
  ASSERT_TRUE((*store)->AddReceipt(r).ok());
  EXPECT_EQ((*store)->AddReceipt(r).code(), absl::StatusCode::kAlreadyExists);
  r.attempt = 2;  // the round run again
  EXPECT_TRUE((*store)->AddReceipt(r).ok());
  auto receipts = (*store)->Receipts("j1", 3);
  ASSERT_TRUE(receipts.ok());
  ASSERT_EQ(receipts->size(), 2u);
  EXPECT_EQ((*receipts)[1].attempt, 2u);
  EXPECT_EQ((*receipts)[1].header.labels(0), "a");
  EXPECT_DOUBLE_EQ((*receipts)[1].scale, 0.5);
  EXPECT_EQ((*receipts)[1].spool, "/spool/j1-3-1-site-a");
  EXPECT_TRUE((*store)->Receipts("j1", 4)->empty());
}

TEST(StoreTest, AuditLogAppends) {
  auto store = Store::Open(TempDb("audit"));
  ASSERT_TRUE(store.ok());
  ASSERT_TRUE((*store)->Audit("alice", "submit-job", "j1").ok());
  ASSERT_TRUE((*store)->Audit("site-a", "join", "10 images").ok());
  auto log = (*store)->AuditLog(10);
  ASSERT_TRUE(log.ok());
  ASSERT_EQ(log->size(), 2u);
  EXPECT_NE((*log)[1].find("site-a join"), std::string::npos);
}

TEST(StoreTest, NotADatabaseRefused) {
  const std::string path = TempDb("garbage");
  FILE* f = std::fopen(path.c_str(), "wb");
  std::fputs("this is not sqlite, just text that is long enough to be a header", f);
  std::fclose(f);
  EXPECT_FALSE(Store::Open(path).ok());
}

// The coordinator's readiness probe: a usable state answers, a damaged schema does not.
TEST(StoreTest, CheckFailsWhenATableIsGone) {
  const std::string path = TempDb("check");
  auto store = Store::Open(path);
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_TRUE((*store)->Check().ok());
  sqlite3* other = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &other), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(other, "DROP TABLE receipts", nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(other);
  absl::Status status = (*store)->Check();
  EXPECT_FALSE(status.ok());
  EXPECT_NE(status.message().find("receipts"), std::string::npos) << status;
}

}  // namespace
}  // namespace fl
