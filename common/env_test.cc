// The real Env, the atomic write over it, and the FaultEnv that breaks it: each fault leaves the
// file as it was, with the code ErrnoStatus gives its errno.
#include "common/env.h"

#include <sys/stat.h>

#include <algorithm>

#include <gtest/gtest.h>

#include "common/fault_env.h"
#include "common/file_util.h"
#include "common/safetensors.h"
#include "common/test_dir.h"

namespace fl {
namespace {

TEST(ErrnoStatusTest, EachErrnoHasItsCodeAndNamesOperationAndPath) {
  const std::pair<int, absl::StatusCode> cases[] = {
      {ENOSPC, absl::StatusCode::kResourceExhausted},
      {EDQUOT, absl::StatusCode::kResourceExhausted},
      {EIO, absl::StatusCode::kUnavailable},
      {EACCES, absl::StatusCode::kPermissionDenied},
      {EPERM, absl::StatusCode::kPermissionDenied},
      {EROFS, absl::StatusCode::kFailedPrecondition},
      {ENOTDIR, absl::StatusCode::kFailedPrecondition},
      {ENOENT, absl::StatusCode::kNotFound},
      {EEXIST, absl::StatusCode::kAlreadyExists},
      {EBADF, absl::StatusCode::kInternal},
  };
  for (const auto& [err, code] : cases) {
    absl::Status s = ErrnoStatus("writing", "/state/x", err);
    EXPECT_EQ(s.code(), code) << err;
    EXPECT_EQ(s.message(), std::string("writing /state/x: ") + std::strerror(err));
  }
}

TEST(EnvTest, WritesReadsListsRenamesAndRemoves) {
  Env* env = Env::Default();
  const std::string dir = FreshTestDir();
  auto file = env->NewWritableFile(dir + "/a", 0640);
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_TRUE((*file)->Append("hello ").ok());
  ASSERT_TRUE((*file)->Append(std::string(100000, 'x')).ok());  // past the buffer
  ASSERT_TRUE((*file)->Append("!").ok());
  ASSERT_TRUE((*file)->Sync().ok());
  ASSERT_TRUE((*file)->Close().ok());
  struct stat st;
  ASSERT_EQ(stat((dir + "/a").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0640u);  // exactly, whatever the umask
  EXPECT_EQ(*env->FileSize(dir + "/a"), 100007u);
  auto reader = env->NewRandomAccessFile(dir + "/a");
  ASSERT_TRUE(reader.ok());
  char got[6];
  ASSERT_TRUE((*reader)->ReadAt(0, 6, got).ok());
  EXPECT_EQ(std::string(got, 6), "hello ");
  EXPECT_TRUE(absl::IsDataLoss((*reader)->ReadAt(100005, 6, got)));  // past its end
  EXPECT_EQ(env->ReadFileToString(dir + "/a")->back(), '!');
  ASSERT_TRUE(env->RenameFile(dir + "/a", dir + "/b").ok());
  ASSERT_TRUE(env->SyncDir(dir).ok());
  EXPECT_FALSE(env->FileExists(dir + "/a"));
  EXPECT_EQ(*env->ListDir(dir), std::vector<std::string>{"b"});
  ASSERT_TRUE(env->RemoveFile(dir + "/b").ok());
  EXPECT_TRUE(absl::IsNotFound(env->RemoveFile(dir + "/b")));
  EXPECT_TRUE(absl::IsNotFound(env->NewRandomAccessFile(dir + "/b").status()));
  EXPECT_TRUE(env->ListDir(dir)->empty());
}

TEST(FileUtilTest, CheckOwnerOnlyRefusesWhatOthersMayReadNamingTheField) {
  const std::string dir = FreshTestDir();
  const std::string secret = dir + "/token";
  ASSERT_TRUE(WriteFileAtomic(secret, "s3cret", 0600).ok());
  EXPECT_TRUE(CheckOwnerOnly("x.token_file", secret).ok());
  ASSERT_EQ(chmod(secret.c_str(), 0640), 0);
  const absl::Status readable = CheckOwnerOnly("x.token_file", secret);
  EXPECT_EQ(readable.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(readable.message().find("x.token_file: " + secret), std::string::npos) << readable;
  EXPECT_NE(readable.message().find("chmod 600"), std::string::npos) << readable;
  const absl::Status missing = CheckOwnerOnly("x.token_file", dir + "/none");
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing.message().find("x.token_file"), std::string::npos) << missing;
}

TEST(EnvTest, MakeDirsCreatesParentsAndRefusesAFile) {
  const std::string dir = FreshTestDir();
  ASSERT_TRUE(MakeDirs(dir + "/x/y/z", 0700).ok());
  EXPECT_TRUE(Env::Default()->IsDirectory(dir + "/x/y/z"));
  EXPECT_TRUE(MakeDirs(dir + "/x/y", 0700).ok());  // already there
  ASSERT_TRUE(WriteFileAtomic(dir + "/f", "1", 0600).ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(MakeDirs(dir + "/f", 0700)));
  EXPECT_TRUE(absl::IsFailedPrecondition(MakeDirs(dir + "/f/g", 0700)));
}

class FaultEnvTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = FreshTestDir();
    path_ = dir_ + "/file";
    ASSERT_TRUE(WriteFileAtomic(path_, "old", 0600, &env_).ok());
  }
  // The file still holds the old contents, and no temporary file is left beside it.
  void ExpectUntouched() {
    EXPECT_EQ(*ReadFileToString(path_), "old");
    EXPECT_EQ(*Env::Default()->ListDir(dir_), std::vector<std::string>{"file"});
  }

  FaultEnv env_;
  std::string dir_, path_;
};

TEST_F(FaultEnvTest, EachFailedStepOfAnAtomicWriteLeavesTheOldFile) {
  const std::pair<FileOp, int> faults[] = {
      {FileOp::kOpen, EACCES}, {FileOp::kWrite, EIO},    {FileOp::kWrite, ENOSPC},
      {FileOp::kSync, EIO},    {FileOp::kClose, EDQUOT}, {FileOp::kRename, EROFS},
  };
  for (const auto& [op, err] : faults) {
    env_.Inject({op, err});
    absl::Status s = WriteFileAtomic(path_, "new", 0600, &env_);
    EXPECT_EQ(s.code(), ErrnoStatus("", "", err).code()) << s;
    EXPECT_NE(s.message().find(path_), std::string::npos) << s;
    EXPECT_NE(s.message().find(std::strerror(err)), std::string::npos) << s;
    ExpectUntouched();
  }
  EXPECT_EQ(env_.injected(), 6);
  ASSERT_TRUE(WriteFileAtomic(path_, "new", 0600, &env_).ok());  // every fault was spent
  EXPECT_EQ(*ReadFileToString(path_), "new");
}

TEST_F(FaultEnvTest, AShortWriteLeavesAPrefixThatIsNeverRenamedIntoPlace) {
  env_.Inject({FileOp::kWrite, ENOSPC, 1, false, /*short_write=*/true});
  absl::Status s = WriteFileAtomic(path_, std::string(1000, 'n'), 0600, &env_);
  EXPECT_TRUE(absl::IsResourceExhausted(s)) << s;
  ExpectUntouched();
}

TEST_F(FaultEnvTest, AFailedFolderSyncIsReportedAfterTheRename) {
  env_.Inject({FileOp::kSyncDir, EIO});
  absl::Status s = WriteFileAtomic(path_, "new", 0600, &env_);
  EXPECT_TRUE(absl::IsUnavailable(s)) << s;
  EXPECT_NE(s.message().find("syncing folder " + dir_), std::string::npos) << s;
}

TEST_F(FaultEnvTest, NthEveryAndPathPickWhatFails) {
  env_.Inject({FileOp::kRename, EIO, /*nth=*/2, /*every=*/true});
  EXPECT_TRUE(WriteFileAtomic(path_, "1", 0600, &env_).ok());
  EXPECT_FALSE(WriteFileAtomic(path_, "2", 0600, &env_).ok());
  EXPECT_FALSE(WriteFileAtomic(path_, "3", 0600, &env_).ok());
  env_.Clear();
  EXPECT_TRUE(WriteFileAtomic(path_, "4", 0600, &env_).ok());
  env_.Inject({FileOp::kOpen, ENOSPC, 1, true, false, "other"});
  EXPECT_TRUE(WriteFileAtomic(path_, "5", 0600, &env_).ok());
  EXPECT_TRUE(absl::IsResourceExhausted(WriteFileAtomic(dir_ + "/other", "x", 0600, &env_)));
  EXPECT_EQ(env_.count(FileOp::kRename), 6);  // SetUp's, then 1 to 5 (the last open failed)
}

TEST_F(FaultEnvTest, ReadsFailToo) {
  env_.Inject({FileOp::kRead, EIO});
  EXPECT_TRUE(absl::IsUnavailable(ReadFileToString(path_, &env_).status()));
  EXPECT_EQ(*ReadFileToString(path_, &env_), "old");
}

// safetensors writes through the same atomic write: a full disk is RESOURCE_EXHAUSTED (it was
// INTERNAL), an fsync that fails UNAVAILABLE, and the model on disk stays the old one.
TEST_F(FaultEnvTest, SafetensorsOnAFullDiskIsResourceExhaustedAndKeepsTheOldModel) {
  const std::string model = dir_ + "/model.safetensors";
  const TensorList old_weights = {{"w", {2}, {1, 2}}};
  ASSERT_TRUE(WriteSafetensors(model, old_weights, {}, &env_).ok());
  const TensorList new_weights = {{"w", {2}, {3, 4}}};
  env_.Inject({FileOp::kWrite, ENOSPC, /*nth=*/2});  // the header goes, the tensor does not
  absl::Status full = WriteSafetensors(model, new_weights, {}, &env_);
  EXPECT_TRUE(absl::IsResourceExhausted(full)) << full;
  env_.Inject({FileOp::kSync, EIO});
  EXPECT_TRUE(absl::IsUnavailable(WriteSafetensors(model, new_weights, {}, &env_)));
  EXPECT_EQ(ReadSafetensors(model, nullptr, &env_)->at(0).data, old_weights[0].data);
  ASSERT_TRUE(WriteSafetensors(model, new_weights, {}, &env_).ok());
  EXPECT_EQ(ReadSafetensors(model)->at(0).data, new_weights[0].data);
}

}  // namespace
}  // namespace fl
