// Status helpers shared by every module. Fallible calls return absl::Status / absl::StatusOr;
// no exception crosses a module boundary.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

#define FL_STATUS_CONCAT_INNER(a, b) a##b
#define FL_STATUS_CONCAT(a, b) FL_STATUS_CONCAT_INNER(a, b)

// Returns from the current function if `expr` (an absl::Status) is not OK.
#define RETURN_IF_ERROR(expr)                \
  do {                                       \
    ::absl::Status fl_status_ = (expr);      \
    if (!fl_status_.ok()) return fl_status_; \
  } while (0)

// `lhs = value of rexpr` (an absl::StatusOr<T>), or returns its status.
#define ASSIGN_OR_RETURN(lhs, rexpr) \
  ASSIGN_OR_RETURN_IMPL(FL_STATUS_CONCAT(fl_statusor_, __LINE__), lhs, rexpr)
#define ASSIGN_OR_RETURN_IMPL(tmp, lhs, rexpr) \
  auto tmp = (rexpr);                          \
  if (!tmp.ok()) return tmp.status();          \
  lhs = std::move(tmp).value()

namespace fl {

// Prefixes a status message with context ("loading config: ..."), keeping the code.
inline absl::Status Annotate(const absl::Status& s, absl::string_view context) {
  if (s.ok()) return s;
  return absl::Status(s.code(), absl::StrCat(context, ": ", s.message()));
}

}  // namespace fl
