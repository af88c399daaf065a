#include "privacy/ledger.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "privacy/rdp_accountant.h"
#include <sqlite3.h>

namespace fl {
namespace {

using ::testing::HasSubstr;

constexpr double kDelta = 1e-5;

// A fresh ledger path for the running test, removed (with its WAL files) on destruction.
class LedgerFile {
 public:
  LedgerFile() {
    const auto* info = testing::UnitTest::GetInstance()->current_test_info();
    path_ = testing::TempDir() + "ledger_" + info->name() + "_" + std::to_string(getpid()) + ".db";
    Remove();
  }
  ~LedgerFile() { Remove(); }
  const std::string& path() const { return path_; }

 private:
  void Remove() {
    for (const char* suffix : {"", "-wal", "-shm"}) std::remove((path_ + suffix).c_str());
  }
  std::string path_;
};

std::unique_ptr<PrivacyLedger> OpenOrDie(const std::string& path) {
  auto ledger = PrivacyLedger::Open(path);
  EXPECT_TRUE(ledger.ok()) << ledger.status();
  return ledger.ok() ? std::move(*ledger) : nullptr;
}

TEST(PrivacyLedgerTest, RecordThenGet) {
  LedgerFile file;
  auto ledger = OpenOrDie(file.path());
  ASSERT_NE(ledger, nullptr);
  ASSERT_TRUE(ledger->Record("job1", "chest", 0, 0.04, 1.5, 1000).ok());
  ASSERT_TRUE(ledger->Record("job1", "chest", 1, 0.04, 1.5, 1250).ok());

  auto spent = ledger->Get("job1", "chest");
  ASSERT_TRUE(spent.ok()) << spent.status();
  EXPECT_EQ(spent->rounds, 2);
  EXPECT_EQ(spent->steps, 2250u);
  EXPECT_EQ(spent->orders, DefaultRdpOrders());
  RdpAccountant expected;
  expected.AddSteps(0.04, 1.5, 2250);
  ASSERT_EQ(spent->rdp.size(), expected.rdp().size());
  for (size_t k = 0; k < spent->rdp.size(); ++k) {
    EXPECT_DOUBLE_EQ(spent->rdp[k], expected.rdp()[k]);
  }
  // The Opacus reference example, through the ledger.
  auto eps = ledger->Epsilon("job1", "chest", kDelta);
  ASSERT_TRUE(eps.ok());
  EXPECT_NEAR(*eps, 7.32911117143, 7.33e-6);
}

TEST(PrivacyLedgerTest, NothingRecordedIsZero) {
  LedgerFile file;
  auto ledger = OpenOrDie(file.path());
  ASSERT_NE(ledger, nullptr);
  auto spent = ledger->Get("job1", "chest");
  ASSERT_TRUE(spent.ok());
  EXPECT_EQ(spent->rounds, 0);
  EXPECT_EQ(spent->rdp, std::vector<double>(DefaultRdpOrders().size(), 0.0));
  auto eps = ledger->Epsilon(std::nullopt, "chest", kDelta);
  ASSERT_TRUE(eps.ok());
  EXPECT_EQ(*eps, 0.0);
}

// A round trained again is a second release with fresh noise: it counts again.
TEST(PrivacyLedgerTest, ARoundTrainedTwiceCountsTwice) {
  LedgerFile file;
  auto ledger = OpenOrDie(file.path());
  ASSERT_NE(ledger, nullptr);
  ASSERT_TRUE(ledger->Record("job1", "chest", 3, 0.01, 1.1, 500).ok());
  auto once = ledger->Epsilon("job1", "chest", 1e-5);
  ASSERT_TRUE(ledger->Record("job1", "chest", 3, 0.01, 1.1, 500).ok());
  auto spent = ledger->Get("job1", "chest");
  ASSERT_TRUE(spent.ok());
  EXPECT_EQ(spent->rounds, 2);
  EXPECT_EQ(spent->steps, 1000u);
  auto twice = ledger->Epsilon("job1", "chest", 1e-5);
  ASSERT_TRUE(once.ok() && twice.ok());
  EXPECT_GT(*twice, *once);
}

TEST(PrivacyLedgerTest, RejectsInvalidRecords) {
  LedgerFile file;
  auto ledger = OpenOrDie(file.path());
  ASSERT_NE(ledger, nullptr);
  EXPECT_THAT(ledger->Record("", "chest", 0, 0.1, 1, 1).message(), HasSubstr("job_id"));
  EXPECT_THAT(ledger->Record("j", "chest", -1, 0.1, 1, 1).message(), HasSubstr("round"));
  EXPECT_THAT(ledger->Record("j", "chest", 0, 1.1, 1, 1).message(), HasSubstr("q"));
  EXPECT_THAT(ledger->Record("j", "chest", 0, 0.1, -1, 1).message(), HasSubstr("sigma"));
}

TEST(PrivacyLedgerTest, ComposesAcrossJobsOnTheSameDataset) {
  LedgerFile file;
  auto ledger = OpenOrDie(file.path());
  ASSERT_NE(ledger, nullptr);
  ASSERT_TRUE(ledger->Record("jobA", "chest", 0, 0.04, 1.5, 1000).ok());
  ASSERT_TRUE(ledger->Record("jobB", "chest", 0, 0.01, 0.9, 3000).ok());
  ASSERT_TRUE(ledger->Record("jobB", "knee", 0, 0.5, 0.5, 100).ok());  // other data: not counted

  auto all = ledger->Epsilon(std::nullopt, "chest", kDelta);
  ASSERT_TRUE(all.ok()) << all.status();
  // privacy/reference_rdp.py, "composition".
  EXPECT_NEAR(*all, 6.571331891332624, 6.58e-6);

  auto job_a = ledger->Epsilon("jobA", "chest", kDelta);
  auto job_b = ledger->Epsilon("jobB", "chest", kDelta);
  ASSERT_TRUE(job_a.ok() && job_b.ok());
  EXPECT_DOUBLE_EQ(*job_a, *ComputeEpsilon(0.04, 1.5, 1000, kDelta));
  EXPECT_DOUBLE_EQ(*job_b, *ComputeEpsilon(0.01, 0.9, 3000, kDelta));
  EXPECT_LT(*job_a, *all);
  EXPECT_LT(*job_b, *all);
}

TEST(PrivacyLedgerTest, SurvivesReopen) {
  LedgerFile file;
  {
    auto ledger = OpenOrDie(file.path());
    ASSERT_NE(ledger, nullptr);
    ASSERT_TRUE(ledger->Record("job1", "chest", 0, 0.04, 1.5, 2250).ok());
  }
  auto ledger = OpenOrDie(file.path());
  ASSERT_NE(ledger, nullptr);
  auto spent = ledger->Get("job1", "chest");
  ASSERT_TRUE(spent.ok());
  EXPECT_EQ(spent->rounds, 1);
  EXPECT_EQ(spent->steps, 2250u);
}

TEST(PrivacyLedgerTest, CapCheckDeclinesTheRoundThatWouldExceedIt) {
  LedgerFile file;
  auto ledger = OpenOrDie(file.path());
  ASSERT_NE(ledger, nullptr);
  constexpr double kCap = 4.0;
  constexpr double kQ = 0.04, kSigma = 1.5;
  constexpr uint64_t kStepsPerRound = 250;
  int64_t accepted = 0;
  for (int64_t round = 0; round < 100; ++round) {
    auto eps = ledger->EpsilonIfAdded("chest", kQ, kSigma, kStepsPerRound, kDelta);
    ASSERT_TRUE(eps.ok()) << eps.status();
    if (*eps > kCap) break;
    ASSERT_TRUE(ledger->Record("job1", "chest", round, kQ, kSigma, kStepsPerRound).ok());
    ++accepted;
  }
  // The cap stops training after a finite number of rounds, and never later than it should.
  ASSERT_GT(accepted, 0);
  ASSERT_LT(accepted, 100);
  EXPECT_LE(*ComputeEpsilon(kQ, kSigma, accepted * kStepsPerRound, kDelta), kCap);
  EXPECT_GT(*ComputeEpsilon(kQ, kSigma, (accepted + 1) * kStepsPerRound, kDelta), kCap);
  auto spent_eps = ledger->Epsilon(std::nullopt, "chest", kDelta);
  ASSERT_TRUE(spent_eps.ok());
  EXPECT_LE(*spent_eps, kCap);
  // A second job on the same data sees the first job's spending.
  auto other_job = ledger->EpsilonIfAdded("chest", kQ, kSigma, kStepsPerRound, kDelta);
  ASSERT_TRUE(other_job.ok());
  EXPECT_GT(*other_job, kCap);
}

TEST(PrivacyLedgerTest, RecordSurvivesKillBeforeSending) {
  LedgerFile file;
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // The client: record the round, then die before anything could be sent.
    auto ledger = PrivacyLedger::Open(file.path());
    if (!ledger.ok()) _exit(10);
    if (!(*ledger)->Record("job1", "chest", 7, 0.04, 1.5, 2250).ok()) _exit(11);
    raise(SIGKILL);
    _exit(12);
  }
  int wstatus = 0;
  ASSERT_EQ(waitpid(child, &wstatus, 0), child);
  ASSERT_TRUE(WIFSIGNALED(wstatus)) << "child exited with " << WEXITSTATUS(wstatus);
  ASSERT_EQ(WTERMSIG(wstatus), SIGKILL);

  auto ledger = OpenOrDie(file.path());
  ASSERT_NE(ledger, nullptr);
  auto spent = ledger->Get("job1", "chest");
  ASSERT_TRUE(spent.ok()) << spent.status();
  EXPECT_EQ(spent->rounds, 1);
  EXPECT_EQ(spent->steps, 2250u);
  // Training the round again after the restart is a second release, and is counted.
  ASSERT_TRUE(ledger->Record("job1", "chest", 7, 0.04, 1.5, 2250).ok());
  EXPECT_EQ(ledger->Get("job1", "chest")->rounds, 2);
}

TEST(PrivacyLedgerTest, OpenFailsWithThePath) {
  auto ledger = PrivacyLedger::Open("/nonexistent-dir/for/ledger.db");
  ASSERT_FALSE(ledger.ok());
  EXPECT_THAT(ledger.status().message(), HasSubstr("/nonexistent-dir/for/ledger.db"));
}

TEST(PrivacyLedgerTest, OpenRefusesAFileThatIsNotADatabase) {
  LedgerFile file;
  FILE* f = std::fopen(file.path().c_str(), "w");
  ASSERT_NE(f, nullptr);
  std::fputs("this is not an SQLite database, just some text padding it out a bit\n", f);
  std::fclose(f);
  EXPECT_FALSE(PrivacyLedger::Open(file.path()).ok());
}

TEST(PrivacyLedgerTest, DefaultDatasetIdIsKeptInTheFile) {
  LedgerFile file;
  std::string first;
  {
    auto ledger = OpenOrDie(file.path());
    ASSERT_NE(ledger, nullptr);
    auto id = ledger->DefaultDatasetId();
    ASSERT_TRUE(id.ok()) << id.status();
    EXPECT_THAT(*id, ::testing::StartsWith("site-data-"));
    first = *id;
    EXPECT_EQ(*ledger->DefaultDatasetId(), first);
  }
  auto reopened = OpenOrDie(file.path());
  ASSERT_NE(reopened, nullptr);
  EXPECT_EQ(*reopened->DefaultDatasetId(), first);
}

TEST(PrivacyLedgerTest, TheSameImagesUnderASecondIdAreRefused) {
  LedgerFile file;
  auto ledger = OpenOrDie(file.path());
  ASSERT_NE(ledger, nullptr);
  ASSERT_EQ(*ledger->BindDataset("archive", {1, 2, 3}), "archive");
  // The same folder again (it moved, or more images were added) keeps its id.
  ASSERT_EQ(*ledger->BindDataset("archive", {1, 2, 3, 4}), "archive");
  // A second id for any of those images would be a second budget on the same patients.
  auto renamed = ledger->BindDataset("archive-v2", {4, 5});
  ASSERT_FALSE(renamed.ok());
  EXPECT_EQ(renamed.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(renamed.status().message(), HasSubstr("dataset_id: \"archive\""));
  // Refused whole: image 5 was not bound to archive-v2 either.
  EXPECT_TRUE(ledger->BindDataset("other", {5, 6}).ok());
  auto datasets = ledger->Datasets();
  ASSERT_TRUE(datasets.ok()) << datasets.status();
  ASSERT_EQ(datasets->size(), 2u);
  EXPECT_EQ((*datasets)[0].id, "archive");
  EXPECT_EQ((*datasets)[0].images, 4);
  EXPECT_EQ((*datasets)[1].id, "other");
}

// A ledger written before dataset ids (schema 1) named the dataset by the client's data_dir, as
// spelled in its config: here three spellings of one folder. The first binding adopts them, and
// the three spend one budget from then on.
TEST(PrivacyLedgerTest, AVersion1LedgerMigratesItsPathNamesIntoTheBoundDataset) {
  LedgerFile file;
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(file.path().c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db,
                         "CREATE TABLE rounds (job_id TEXT NOT NULL, dataset_id TEXT NOT NULL, "
                         "round INTEGER NOT NULL, sample_rate REAL NOT NULL, noise_multiplier "
                         "REAL NOT NULL, steps INTEGER NOT NULL, recorded_at_unix_us INTEGER "
                         "NOT NULL, PRIMARY KEY (job_id, dataset_id, round));"
                         "INSERT INTO rounds VALUES ('j1', '/data/cxr', 0, 0.01, 1.0, 100, 1);"
                         "INSERT INTO rounds VALUES ('j2', '/data/cxr/', 0, 0.01, 1.0, 100, 2);"
                         "INSERT INTO rounds VALUES ('j3', '/mnt/archive', 0, 0.01, 1.0, 100, 3);"
                         "PRAGMA user_version=1;",
                         nullptr, nullptr, nullptr),
            SQLITE_OK);
  sqlite3_close(db);
  auto ledger = OpenOrDie(file.path());
  ASSERT_NE(ledger, nullptr);
  auto id = ledger->DefaultDatasetId();
  ASSERT_TRUE(id.ok()) << id.status();
  ASSERT_EQ(*ledger->BindDataset(*id, {7, 8}), *id);
  RdpAccountant all_three;
  all_three.AddSteps(0.01, 1.0, 300);
  const double expected = *all_three.Epsilon(kDelta);
  EXPECT_NEAR(*ledger->Epsilon(std::nullopt, *id, kDelta), expected, 1e-9);
  // An old name reads the whole dataset, and a job keeps its own rows.
  EXPECT_NEAR(*ledger->Epsilon(std::nullopt, "/data/cxr/", kDelta), expected, 1e-9);
  EXPECT_EQ(ledger->Get("j3", *id)->steps, 100u);
  // A new round composes with all of them.
  ASSERT_TRUE(ledger->Record("j4", *id, 0, 0.01, 1.0, 100).ok());
  all_three.AddSteps(0.01, 1.0, 100);
  EXPECT_NEAR(*ledger->Epsilon(std::nullopt, *id, kDelta), *all_three.Epsilon(kDelta), 1e-9);
  auto datasets = ledger->Datasets();
  ASSERT_EQ(datasets->size(), 1u);
  EXPECT_THAT((*datasets)[0].aliases,
              ::testing::ElementsAre("/data/cxr", "/data/cxr/", "/mnt/archive"));
}

}  // namespace
}  // namespace fl
