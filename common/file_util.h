// Small filesystem helpers shared by tools and daemons.
#pragma once

#include <sys/types.h>

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace fl {

// Replaces `path` with `contents` atomically: writes a temporary file in the same folder with
// permissions `mode`, fsyncs it, renames it over `path` and fsyncs the folder. A reader sees the
// old file or the new one, never a partial one. The parent folder must exist.
absl::Status WriteFileAtomic(const std::string& path, const std::string& contents, mode_t mode);

// The whole contents of `path`, or an error naming the file.
absl::StatusOr<std::string> ReadFileToString(const std::string& path);

// Creates `path` and its missing parents; folders it creates get `mode`. An existing folder is
// left as it is.
absl::Status MakeDirs(const std::string& path, mode_t mode);

}  // namespace fl
