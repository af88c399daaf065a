// The coordinator on a disk that fails, on every machine: a FaultEnv breaks the files under
// state_dir as an I/O error or a full disk would (a write, a short write, an fsync, a rename, an
// open). server/storage_test.cc runs the full-disk cases on a real tmpfs where user namespaces
// allow one. Each failure is reported with the code of its cause, counted as a storage failure,
// waited out on a clock the test advances, and leaves no stored state behind.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>

#include "server/coordinator_test_fixture.h"

namespace fl {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

struct DiskFault {
  std::string name;
  Fault fault;
  absl::StatusCode code;  // the code the failure is logged (and an admin answered) with
};

std::ostream& operator<<(std::ostream& out, const DiskFault& f) { return out << f.name; }

Fault Make(FileOp op, int error, bool short_write = false) {
  Fault fault;
  fault.op = op;
  fault.error = error;
  fault.short_write = short_write;
  return fault;
}

// What can go wrong while a file is created and filled.
const DiskFault kWriteFaults[] = {
    {"WriteEio", Make(FileOp::kWrite, EIO), absl::StatusCode::kUnavailable},
    {"WriteEnospc", Make(FileOp::kWrite, ENOSPC), absl::StatusCode::kResourceExhausted},
    {"ShortWrite", Make(FileOp::kWrite, ENOSPC, true), absl::StatusCode::kResourceExhausted},
    {"FsyncEio", Make(FileOp::kSync, EIO), absl::StatusCode::kUnavailable},
    {"OpenEacces", Make(FileOp::kOpen, EACCES), absl::StatusCode::kPermissionDenied},
};
// And after it, while it is put in place atomically.
const DiskFault kPlaceFaults[] = {
    {"RenameEio", Make(FileOp::kRename, EIO), absl::StatusCode::kUnavailable},
    {"RenameErofs", Make(FileOp::kRename, EROFS), absl::StatusCode::kFailedPrecondition},
    {"FolderFsyncEio", Make(FileOp::kSyncDir, EIO), absl::StatusCode::kUnavailable},
};

std::vector<DiskFault> AllFaults() {
  std::vector<DiskFault> all(std::begin(kWriteFaults), std::end(kWriteFaults));
  all.insert(all.end(), std::begin(kPlaceFaults), std::end(kPlaceFaults));
  return all;
}

class FaultTest : public CoordinatorTest, public ::testing::WithParamInterface<DiskFault> {
 protected:
  void SetUp() override {
    env_ = &faults_;
    clock_ = &blocking_clock_;
    CoordinatorTest::SetUp();
  }
  // Arms the test's fault for every operation on a path under state_dir/`folder`.
  void Break(const std::string& folder, bool every) {
    Fault fault = GetParam().fault;
    fault.every = every;
    fault.path_part = "/" + folder;  // its files and the folder itself (a folder's fsync)
    faults_.Inject(fault);
  }
  // The files in state_dir/`folder`.
  std::vector<std::string> Files(const std::string& folder) {
    std::vector<std::string> names;
    for (const auto& entry : fs::directory_iterator(fs::path(dir_) / folder)) {
      names.push_back(entry.path().filename().string());
    }
    return names;
  }
  // What the log says a failure with the test's fault is: its code and its errno's text.
  void ExpectLogged(const std::string& log, const std::string& what) {
    EXPECT_THAT(log,
                HasSubstr(absl::StrCat(absl::StatusCodeToString(GetParam().code), ": ", what)));
    EXPECT_THAT(log, HasSubstr(std::strerror(GetParam().fault.error)));
  }
};

// A submission whose copy of the initial model cannot be written is refused with the cause's
// code and leaves no job and no file; once the disk is well again it goes through (the
// scenario of StorageTest.SubmissionOnAFullDiskLeavesNothing, for every fault).
TEST_P(FaultTest, SubmissionThatCannotBeStoredLeavesNothing) {
  const std::string initial = dir_ + "/pretrained.safetensors";
  ASSERT_TRUE(WriteSafetensors(initial, Update(1, 2, 3)).ok());
  JobSpec spec;
  spec.set_rounds(1);
  spec.set_initial_model(initial);
  Break("initial", /*every=*/false);
  absl::StatusOr<JobStatus> refused = core_->SubmitJob({"op", Role::kAdmin}, Filled(spec));
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), GetParam().code) << refused.status();
  EXPECT_THAT(refused.status().message(), HasSubstr(std::strerror(GetParam().fault.error)));
  EXPECT_EQ(faults_.injected(), 1);
  EXPECT_TRUE(core_->ListJobs().empty());
  EXPECT_TRUE(Files("initial").empty());
  Submit(spec);
  EXPECT_EQ(core_->ListJobs().size(), 1u);
}

// A round whose checkpoint cannot be written is logged with the cause's code, counted as a
// storage failure and tried again after a pause (1 s, 2 s, ...: none of the job's attempts are
// spent), with nothing committed and no partial checkpoint left; once the disk is well again
// the round commits each update exactly once, the job completes, and a restart finds it so.
TEST_P(FaultTest, CommitThatCannotBeStoredIsTriedAgainUntilStorageIsBack) {
  ConnectSites();
  JobSpec spec;
  spec.set_rounds(1);
  const std::string id = Submit(spec);
  Task ta = a_->Next();
  Task tb = b_->Next();
  Break("checkpoints", /*every=*/true);
  ::testing::internal::CaptureStderr();
  ASSERT_TRUE(UploadA(ta).ok());
  ASSERT_TRUE(UploadB(tb).ok());
  ASSERT_TRUE(WaitForPause(1));
  blocking_clock_.Advance(absl::Seconds(1));
  ASSERT_TRUE(WaitForPause(2));
  const std::string log = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(blocking_clock_.waits(),
            (std::vector<absl::Duration>{absl::Seconds(1), absl::Seconds(2)}));
  ExpectLogged(log, "cannot store round 0: ");
  EXPECT_EQ(metrics_.storage_failures.Value(), 2);
  EXPECT_EQ(metrics_.rounds_failed.Value(), 2);
  EXPECT_EQ(metrics_.rounds_completed.Value(), 0);
  const JobStatus waiting = *core_->GetJob(id);
  EXPECT_EQ(waiting.state(), RUNNING);
  EXPECT_EQ(waiting.rounds_done(), 0u);
  EXPECT_TRUE(absl::IsNotFound(store_->LatestCheckpoint(id).status()));
  for (const std::string& name : Files("checkpoints")) {
    EXPECT_THAT(name, ::testing::Not(HasSubstr(".tmp"))) << "a partial checkpoint is left";
  }

  faults_.Clear();
  blocking_clock_.Advance(absl::Seconds(2));
  Task final_a = a_->Next();
  ASSERT_TRUE(final_a.evaluate_only());
  ASSERT_TRUE(b_->Next().evaluate_only());
  ExpectWeightedMeanOfAAndB(id);
  ASSERT_TRUE(core_->Report(a_->who(), AurocReport(final_a, 0.75, 5, 5, 10)).ok());
  ASSERT_TRUE(core_->Report(b_->who(), AurocReport(final_a, 0.75, 5, 5, 10)).ok());
  WaitForState(id, DONE);
  EXPECT_EQ(metrics_.rounds_completed.Value(), 1);
  Restart();
  EXPECT_EQ(core_->GetJob(id)->state(), DONE);
  EXPECT_EQ(core_->GetJob(id)->rounds_done(), 1u);
  ExpectWeightedMeanOfAAndB(id);
}

INSTANTIATE_TEST_SUITE_P(EveryFault, FaultTest, ::testing::ValuesIn(AllFaults()),
                         [](const auto& info) { return info.param.name; });

using SpoolFaultTest = FaultTest;

// An update that cannot be spooled is this side's failure, not the site's: counted as failed
// (never rejected) and as a storage failure, logged with the cause's code, answered with a code
// the site sends again on (RESOURCE_EXHAUSTED for a full disk, UNAVAILABLE otherwise) and
// without the cause (a path is for this side's operator); no spool is left, and the same
// update sent again is taken and folded once.
TEST_P(SpoolFaultTest, UpdateThatCannotBeSpooledIsSentAgain) {
  ConnectSites();
  JobSpec spec;
  spec.set_rounds(1);
  const std::string id = Submit(spec);
  Task ta = a_->Next();
  Task tb = b_->Next();
  Break("spool", /*every=*/false);
  ::testing::internal::CaptureStderr();
  absl::StatusOr<UploadResponse> failed = UploadA(ta);
  const std::string log = ::testing::internal::GetCapturedStderr();
  ASSERT_FALSE(failed.ok());
  const bool full = GetParam().fault.error == ENOSPC;
  EXPECT_EQ(failed.status().code(),
            full ? absl::StatusCode::kResourceExhausted : absl::StatusCode::kUnavailable)
      << failed.status();
  EXPECT_THAT(failed.status().message(), HasSubstr("send it again"));
  EXPECT_THAT(failed.status().message(), ::testing::Not(HasSubstr(dir_)));
  ExpectLogged(log, "");
  EXPECT_EQ(Counted(registry_, "fl_coordinator_updates_total", "failed"), 1);
  EXPECT_EQ(Rejected(registry_), 0);
  EXPECT_EQ(metrics_.storage_failures.Value(), 1);
  EXPECT_TRUE(Files("spool").empty());

  ASSERT_TRUE(UploadA(ta).ok());
  ASSERT_TRUE(UploadB(tb).ok());
  ASSERT_TRUE(a_->Next().evaluate_only());
  ExpectWeightedMeanOfAAndB(id);
  EXPECT_EQ(metrics_.rounds_failed.Value(), 0);
  ASSERT_TRUE(core_->CancelJob({"op", Role::kAdmin}, id).ok());  // skip the final evaluation
}

INSTANTIATE_TEST_SUITE_P(EveryWriteFault, SpoolFaultTest, ::testing::ValuesIn(kWriteFaults),
                         [](const auto& info) { return info.param.name; });

}  // namespace
}  // namespace fl
