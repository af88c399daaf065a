#include "common/file_util.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status.h"

namespace fl {

absl::Status CheckOwnerOnly(const std::string& field, const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    return Annotate(ErrnoStatus("looking at", path, errno), field);
  }
  if ((st.st_mode & 077) != 0) {
    return absl::FailedPreconditionError(
        absl::StrFormat("%s: %s is readable by group or others (mode %04o); run 'chmod 600 %s'",
                        field, path, st.st_mode & 07777, path));
  }
  return absl::OkStatus();
}

std::string ParentDir(const std::string& path) {
  size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

absl::Status WriteFileAtomic(const std::string& path, mode_t mode,
                             const std::function<absl::Status(WritableFile&)>& write, Env* env) {
  const std::string tmp = absl::StrCat(path, ".tmp.", ::getpid());
  ASSIGN_OR_RETURN(std::unique_ptr<WritableFile> file, env->NewWritableFile(tmp, mode));
  absl::Status status = write(*file);
  if (status.ok()) status = file->Sync();
  if (absl::Status closed = file->Close(); status.ok()) status = closed;
  if (status.ok()) status = env->RenameFile(tmp, path);
  if (!status.ok()) {
    env->RemoveFile(tmp).IgnoreError();  // best effort: the error that matters is `status`
    return status;
  }
  return env->SyncDir(ParentDir(path));
}

absl::Status WriteFileAtomic(const std::string& path, const std::string& contents, mode_t mode,
                             Env* env) {
  return WriteFileAtomic(
      path, mode, [&](WritableFile& file) { return file.Append(contents); }, env);
}

absl::StatusOr<std::string> ReadFileToString(const std::string& path, Env* env) {
  return env->ReadFileToString(path);
}

absl::Status MakeDirs(const std::string& path, mode_t mode, Env* env) {
  if (path.empty()) return absl::InvalidArgumentError("MakeDirs: empty path");
  if (env->IsDirectory(path)) return absl::OkStatus();
  if (env->FileExists(path)) {
    return absl::FailedPreconditionError(absl::StrCat(path, " exists and is not a folder"));
  }
  std::string parent = ParentDir(path);
  if (parent != path) RETURN_IF_ERROR(MakeDirs(parent, mode, env));
  absl::Status created = env->CreateDir(path, mode);
  if (absl::IsAlreadyExists(created) && env->IsDirectory(path)) return absl::OkStatus();
  return created;
}

}  // namespace fl
