// The coordinator core on a file system that really runs out of space: a small tmpfs mounted in a
// private user and mount namespace, entered before any thread starts; each test fills and frees
// it. Skipped, with the reason, where unprivileged namespaces are not allowed.
#include <fcntl.h>
#include <sched.h>
#include <sys/mount.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <iostream>

#include <gtest/gtest.h>

#include "server/coordinator_test_fixture.h"

namespace fl {
namespace {

namespace fs = std::filesystem;

std::string g_tmpfs;  // the mount point; empty when it could not be mounted (g_why says why)
std::string g_why;

absl::Status WriteProcFile(const std::string& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
  out.close();
  if (!out) return absl::UnavailableError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

absl::StatusOr<std::string> MountSmallTmpfs() {
  const uid_t uid = getuid();
  const gid_t gid = getgid();
  if (unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0) {
    return absl::UnavailableError(absl::StrCat("unshare: ", std::strerror(errno)));
  }
  RETURN_IF_ERROR(WriteProcFile("/proc/self/setgroups", "deny"));
  RETURN_IF_ERROR(WriteProcFile("/proc/self/uid_map", absl::StrCat("0 ", uid, " 1")));
  RETURN_IF_ERROR(WriteProcFile("/proc/self/gid_map", absl::StrCat("0 ", gid, " 1")));
  std::string dir = ::testing::TempDir();
  if (dir.empty() || dir.back() != '/') dir += '/';
  dir += "fl-storage-test.XXXXXX";
  if (mkdtemp(dir.data()) == nullptr) {
    return absl::UnavailableError(absl::StrCat("mkdtemp: ", std::strerror(errno)));
  }
  if (mount("tmpfs", dir.c_str(), "tmpfs", 0, "size=8m") != 0) {
    const int error = errno;
    rmdir(dir.c_str());
    return absl::UnavailableError(absl::StrCat("mount tmpfs: ", std::strerror(error)));
  }
  return dir;
}

class TmpfsEnvironment : public ::testing::Environment {
 public:
  void SetUp() override {
    absl::StatusOr<std::string> mounted = MountSmallTmpfs();
    // Said either way, so that a CI log shows whether the real-disk scenarios ran.
    if (mounted.ok()) {
      g_tmpfs = *mounted;
      std::cerr << "storage_test: running on a real 8 MiB tmpfs at " << g_tmpfs << "\n";
    } else {
      g_why = std::string(mounted.status().message());
      std::cerr << "storage_test: SKIPPED, no small tmpfs to fill (" << g_why
                << "); the same failures run through a FaultEnv in server_test "
                   "(server/coordinator_fault_test.cc)\n";
    }
  }
  void TearDown() override {
    if (g_tmpfs.empty()) return;
    umount(g_tmpfs.c_str());
    rmdir(g_tmpfs.c_str());
  }
};
::testing::Environment* const kTmpfs = ::testing::AddGlobalTestEnvironment(new TmpfsEnvironment);

class StorageTest : public CoordinatorTest {
 protected:
  std::string StateDir() override {
    std::string dir = g_tmpfs + "/state.XXXXXX";
    EXPECT_NE(mkdtemp(dir.data()), nullptr);
    return dir;
  }
  void SetUp() override {
    if (g_tmpfs.empty()) {
      GTEST_SKIP() << "no small tmpfs to fill: " << g_why
                   << " (coordinator_fault_test.cc runs the same failures through a FaultEnv)";
    }
    CoordinatorTest::SetUp();
  }

  // Writes a file until the tmpfs has no byte left.
  void FillDisk() {
    const int fd = open(Filler().c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    ASSERT_GE(fd, 0) << std::strerror(errno);
    const std::string block(1 << 16, '\0');
    for (size_t size : {block.size(), size_t{4096}, size_t{1}}) {
      while (write(fd, block.data(), size) > 0) {
      }
    }
    const int error = errno;
    close(fd);
    ASSERT_EQ(error, ENOSPC) << std::strerror(error);
  }
  void FreeDisk() { ASSERT_EQ(unlink(Filler().c_str()), 0) << std::strerror(errno); }
  std::string Filler() const { return g_tmpfs + "/filler"; }
};

// A submission on a full disk fails with the reason and leaves no job and no copy behind.
TEST_F(StorageTest, SubmissionOnAFullDiskLeavesNothing) {
  const std::string initial = FreshTestDir() + "/pretrained.safetensors";  // on the real disk
  ASSERT_TRUE(WriteSafetensors(initial, Update(1, 2, 3)).ok());
  JobSpec spec;
  spec.set_rounds(1);
  spec.set_initial_model(initial);
  FillDisk();
  absl::StatusOr<JobStatus> refused = core_->SubmitJob({"op", Role::kAdmin}, Filled(spec));
  ASSERT_FALSE(refused.ok());
  EXPECT_TRUE(absl::IsResourceExhausted(refused.status())) << refused.status();
  EXPECT_NE(refused.status().message().find("No space left on device"), std::string::npos)
      << refused.status();
  EXPECT_TRUE(core_->ListJobs().empty());
  EXPECT_TRUE(fs::is_empty(fs::path(dir_) / "initial"));
  FreeDisk();
  Submit(spec);
  EXPECT_EQ(core_->ListJobs().size(), 1u);
}

// A report and the job's ending that cannot be stored change nothing; the ending is stored once
// space is back (the job is not run again), and a restart finds the job done.
TEST_F(StorageTest, JobEndingThatCannotBeStoredIsWaitedOut) {
  clock_ = &blocking_clock_;  // the pause before the ending is stored again ends when we say
  Restart();
  JobSpec spec;
  spec.set_rounds(1);
  spec.set_round_deadline_seconds(2);
  const std::string id = Submit(spec);
  Task ta = a_->Next();
  Task tb = b_->Next();
  ASSERT_TRUE(UploadA(ta).ok());
  ASSERT_TRUE(UploadB(tb).ok());
  const Task ea = a_->Next();
  ASSERT_TRUE(ea.evaluate_only());
  FillDisk();
  const absl::Status reported = core_->Report(a_->who(), AurocReport(ea, 0.75, 5, 5, 10));
  EXPECT_TRUE(absl::IsResourceExhausted(reported)) << reported;
  EXPECT_EQ(core_->GetJob(id)->sites_size(), 0);  // not stored, so not shown either
  EXPECT_GE(metrics_.storage_failures.Value(), 1);
  // The final evaluation closes at its 2 s deadline; its ending cannot be stored, and the
  // scheduler pauses before it tries again.
  ASSERT_TRUE(WaitForPause(1));
  EXPECT_EQ(blocking_clock_.waits().back(), absl::Seconds(1));
  ASSERT_GE(metrics_.storage_failures.Value(), 2);
  EXPECT_EQ(core_->GetJob(id)->state(), RUNNING);
  FreeDisk();
  blocking_clock_.Advance(absl::Seconds(1));
  WaitForState(id, DONE);
  Restart();
  EXPECT_EQ(core_->GetJob(id)->state(), DONE);
  EXPECT_EQ(core_->GetJob(id)->rounds_done(), 1u);
}

}  // namespace
}  // namespace fl
