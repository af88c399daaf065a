#include "common/env.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace fl {

absl::Status ErrnoStatus(absl::string_view operation, absl::string_view path, int err) {
  std::string message = absl::StrCat(operation, " ", path, ": ", std::strerror(err));
  switch (err) {
    case ENOSPC:
    case EDQUOT:
      return absl::ResourceExhaustedError(message);
    case EIO:
      return absl::UnavailableError(message);
    case EACCES:
    case EPERM:
      return absl::PermissionDeniedError(message);
    case EROFS:
    case ENOTDIR:
    case EISDIR:
      return absl::FailedPreconditionError(message);
    case ENOENT:
      return absl::NotFoundError(message);
    case EEXIST:
      return absl::AlreadyExistsError(message);
    default:
      return absl::InternalError(message);
  }
}

namespace {

// Writes all of `size` bytes at `data` to `fd`, again after a short write or EINTR.
absl::Status WriteFully(int fd, const char* data, size_t size, const std::string& path) {
  while (size > 0) {
    ssize_t n = ::write(fd, data, std::min<size_t>(size, size_t{1} << 30));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoStatus("writing", path, errno);
    data += n;
    size -= static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

class PosixWritableFile : public WritableFile {
 public:
  PosixWritableFile(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  ~PosixWritableFile() override {
    if (fd_ >= 0) ::close(fd_);
  }

  absl::Status Append(absl::string_view data) override {
    if (buffer_.size() + data.size() <= kBufferBytes) {
      buffer_.append(data.data(), data.size());
      return absl::OkStatus();
    }
    absl::Status flushed = Flush();
    if (!flushed.ok()) return flushed;
    if (data.size() < kBufferBytes) {
      buffer_.assign(data.data(), data.size());
      return absl::OkStatus();
    }
    return WriteFully(fd_, data.data(), data.size(), path_);
  }
  absl::Status Sync() override {
    absl::Status flushed = Flush();
    if (!flushed.ok()) return flushed;
    if (::fsync(fd_) != 0) return ErrnoStatus("syncing", path_, errno);
    return absl::OkStatus();
  }
  absl::Status Close() override {
    absl::Status status = Flush();
    if (::close(fd_) != 0 && status.ok()) status = ErrnoStatus("closing", path_, errno);
    fd_ = -1;
    return status;
  }

 private:
  // Small appends (a spool's pieces of tensors) are gathered into one write of up to 64 KiB.
  static constexpr size_t kBufferBytes = 1 << 16;

  absl::Status Flush() {
    absl::Status status = WriteFully(fd_, buffer_.data(), buffer_.size(), path_);
    buffer_.clear();
    return status;
  }

  int fd_;
  const std::string path_;
  std::string buffer_;
};

class PosixRandomAccessFile : public RandomAccessFile {
 public:
  PosixRandomAccessFile(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  ~PosixRandomAccessFile() override { ::close(fd_); }

  absl::Status ReadAt(uint64_t offset, size_t n, char* out) const override {
    while (n > 0) {
      ssize_t got =
          ::pread(fd_, out, std::min<size_t>(n, size_t{1} << 30), static_cast<off_t>(offset));
      if (got < 0 && errno == EINTR) continue;
      if (got < 0) return ErrnoStatus("reading", path_, errno);
      if (got == 0) return absl::DataLossError(absl::StrCat(path_, ": unexpected end of file"));
      out += got;
      offset += static_cast<uint64_t>(got);
      n -= static_cast<size_t>(got);
    }
    return absl::OkStatus();
  }
  absl::StatusOr<uint64_t> Size() const override {
    struct stat st;
    if (::fstat(fd_, &st) != 0) return ErrnoStatus("looking at", path_, errno);
    return static_cast<uint64_t>(st.st_size);
  }

 private:
  const int fd_;
  const std::string path_;
};

class PosixEnv : public Env {
 public:
  absl::StatusOr<std::unique_ptr<WritableFile>> NewWritableFile(const std::string& path,
                                                                mode_t mode) override {
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0) return ErrnoStatus("creating", path, errno);
    // open() applies the umask; fchmod sets exactly the mode asked for.
    if (::fchmod(fd, mode) != 0) {
      const int err = errno;
      ::close(fd);
      return ErrnoStatus("setting the mode of", path, err);
    }
    return std::unique_ptr<WritableFile>(new PosixWritableFile(fd, path));
  }
  absl::StatusOr<std::unique_ptr<RandomAccessFile>> NewRandomAccessFile(
      const std::string& path) override {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return ErrnoStatus("opening", path, errno);
    return std::unique_ptr<RandomAccessFile>(new PosixRandomAccessFile(fd, path));
  }
  absl::StatusOr<std::string> ReadFileToString(const std::string& path) override;
  absl::Status RenameFile(const std::string& from, const std::string& to) override {
    if (::rename(from.c_str(), to.c_str()) != 0) {
      return ErrnoStatus(absl::StrCat("renaming ", from, " onto"), to, errno);
    }
    return absl::OkStatus();
  }
  absl::Status LinkFile(const std::string& from, const std::string& to) override {
    if (::link(from.c_str(), to.c_str()) != 0) {
      return ErrnoStatus(absl::StrCat("linking ", from, " as"), to, errno);
    }
    return absl::OkStatus();
  }
  absl::Status SyncDir(const std::string& dir) override {
    int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return ErrnoStatus("opening folder", dir, errno);
    int rc = ::fsync(fd);
    int err = errno;
    ::close(fd);
    if (rc != 0) return ErrnoStatus("syncing folder", dir, err);
    return absl::OkStatus();
  }
  absl::Status RemoveFile(const std::string& path) override {
    if (::unlink(path.c_str()) != 0) return ErrnoStatus("removing", path, errno);
    return absl::OkStatus();
  }
  absl::Status CreateDir(const std::string& path, mode_t mode) override {
    if (::mkdir(path.c_str(), mode) != 0) return ErrnoStatus("creating folder", path, errno);
    if (::chmod(path.c_str(), mode) != 0) return ErrnoStatus("setting the mode of", path, errno);
    return absl::OkStatus();
  }
  absl::StatusOr<std::vector<std::string>> ListDir(const std::string& dir) override {
    DIR* d = ::opendir(dir.c_str());
    if (d == nullptr) return ErrnoStatus("listing", dir, errno);
    std::vector<std::string> names;
    while (const struct dirent* entry = ::readdir(d)) {
      const std::string name = entry->d_name;
      if (name != "." && name != "..") names.push_back(name);
    }
    ::closedir(d);
    return names;
  }
  absl::StatusOr<uint64_t> FileSize(const std::string& path) override {
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) return ErrnoStatus("looking at", path, errno);
    return static_cast<uint64_t>(st.st_size);
  }
  bool FileExists(const std::string& path) override {
    struct stat st;
    return ::lstat(path.c_str(), &st) == 0;
  }
  bool IsDirectory(const std::string& path) override {
    struct stat st;
    return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
  }
};

absl::StatusOr<std::string> PosixEnv::ReadFileToString(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus("cannot read", path, errno);
  std::string contents;
  char buffer[1 << 16];
  while (true) {
    ssize_t n = ::read(fd, buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int err = errno;
      ::close(fd);
      return ErrnoStatus("error reading", path, err);
    }
    if (n == 0) break;
    contents.append(buffer, static_cast<size_t>(n));
  }
  ::close(fd);
  return contents;
}

}  // namespace

Env* Env::Default() {
  static Env* const env = new PosixEnv;
  return env;
}

}  // namespace fl
