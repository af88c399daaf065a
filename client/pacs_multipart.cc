#include "client/pacs_multipart.h"

#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace fl {
namespace {

constexpr size_t kMaxHeaderBytes = 64 << 10;

// Splits 'a; b="c;d"; e=f' at the semicolons outside quotes.
std::vector<std::string> SplitParameters(absl::string_view text) {
  std::vector<std::string> out(1);
  bool quoted = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (quoted && c == '\\' && i + 1 < text.size()) {
      out.back() += text[++i];
      continue;
    }
    if (c == '"') quoted = !quoted;
    if (c == ';' && !quoted) {
      out.emplace_back();
    } else {
      out.back() += c;
    }
  }
  return out;
}

std::string Unquote(absl::string_view value) {
  value = absl::StripAsciiWhitespace(value);
  std::string out;
  for (char c : value) {
    if (c != '"') out += c;
  }
  return out;
}

bool IsSpaceOrTab(char c) { return c == ' ' || c == '\t'; }

}  // namespace

absl::StatusOr<std::string> MultipartBoundary(absl::string_view content_type) {
  const std::vector<std::string> params = SplitParameters(content_type);
  if (!absl::StartsWithIgnoreCase(absl::StripAsciiWhitespace(params[0]), "multipart/")) {
    return absl::InvalidArgumentError(
        absl::StrCat("Content-Type '", content_type, "' is not multipart"));
  }
  for (size_t i = 1; i < params.size(); ++i) {
    const size_t eq = params[i].find('=');
    if (eq == std::string::npos) continue;
    const absl::string_view name = absl::StripAsciiWhitespace(params[i].substr(0, eq));
    if (!absl::EqualsIgnoreCase(name, "boundary")) continue;
    std::string boundary = Unquote(params[i].substr(eq + 1));
    if (boundary.empty() || boundary.size() > 70) break;
    return boundary;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("Content-Type '", content_type, "' has no boundary of 1 to 70 characters"));
}

MultipartReader::MultipartReader(std::string boundary, PartFn on_part, size_t max_part_bytes)
    : delimiter_("\r\n--" + boundary),
      on_part_(std::move(on_part)),
      max_part_bytes_(max_part_bytes),
      buffer_("\r\n") {}  // so that a delimiter at the very start is found like any other

absl::Status MultipartReader::Feed(absl::string_view data) {
  if (state_ == State::kFailed) {
    return absl::FailedPreconditionError("the multipart body failed before");
  }
  if (state_ == State::kEpilogue) return absl::OkStatus();
  buffer_.append(data.data(), data.size());
  bool progressed = true;
  while (progressed && state_ != State::kEpilogue) {
    progressed = false;
    if (absl::Status step = Step(&progressed); !step.ok()) return Fail(std::move(step));
  }
  if (state_ == State::kEpilogue) buffer_.clear();
  return absl::OkStatus();
}

absl::Status MultipartReader::Finish() const {
  if (state_ == State::kEpilogue) return absl::OkStatus();
  return absl::DataLossError(
      absl::StrCat("the multipart body ended before its closing delimiter",
                   state_ == State::kPreamble ? " (no delimiter at all)" : "", " after ", parts_,
                   " complete parts"));
}

absl::Status MultipartReader::Fail(absl::Status status) {
  state_ = State::kFailed;
  buffer_.clear();
  part_ = MultipartPart();
  return status;
}

absl::Status MultipartReader::Step(bool* progressed) {
  switch (state_) {
    case State::kPreamble: {
      const size_t at = buffer_.find(delimiter_);
      if (at == std::string::npos) {  // the preamble is ignored; keep what may start a delimiter
        if (buffer_.size() >= delimiter_.size())
          buffer_.erase(0, buffer_.size() - delimiter_.size());
        return absl::OkStatus();
      }
      buffer_.erase(0, at + delimiter_.size());
      state_ = State::kDelimiterEnd;
      *progressed = true;
      return absl::OkStatus();
    }
    case State::kDelimiterEnd:
      return AfterDelimiter(progressed);
    case State::kHeaders:
      return Headers(progressed);
    case State::kBody:
      return Body(progressed);
    case State::kEpilogue:
    case State::kFailed:
      return absl::OkStatus();
  }
  return absl::OkStatus();
}

// After "--BOUNDARY": "--" closes the body; else optional spaces and tabs, then CRLF.
absl::Status MultipartReader::AfterDelimiter(bool* progressed) {
  if (buffer_.size() < 2) return absl::OkStatus();
  if (absl::StartsWith(buffer_, "--")) {
    state_ = State::kEpilogue;
    *progressed = true;
    return absl::OkStatus();
  }
  size_t i = 0;
  while (i < buffer_.size() && IsSpaceOrTab(buffer_[i])) ++i;
  if (buffer_.size() - i < 2) return absl::OkStatus();
  if (buffer_.compare(i, 2, "\r\n") != 0) {
    return absl::DataLossError(absl::StrCat("multipart: a delimiter followed by '",
                                            absl::CEscape(buffer_.substr(i, 8)),
                                            "' instead of CRLF or \"--\""));
  }
  buffer_.erase(0, i + 2);
  state_ = State::kHeaders;
  *progressed = true;
  return absl::OkStatus();
}

absl::Status MultipartReader::Headers(bool* progressed) {
  size_t end = 0;
  if (absl::StartsWith(buffer_, "\r\n")) {
    end = 0;  // a part without headers
  } else if ((end = buffer_.find("\r\n\r\n")) == std::string::npos) {
    if (buffer_.size() > kMaxHeaderBytes) {
      return absl::DataLossError("multipart: a part's headers run over 64 KiB");
    }
    return absl::OkStatus();
  }
  std::string* last = nullptr;
  const absl::string_view block = absl::string_view(buffer_).substr(0, end);
  for (absl::string_view line : absl::StrSplit(block, "\r\n", absl::SkipEmpty())) {
    if (!line.empty() && IsSpaceOrTab(line[0]) && last != nullptr) {  // folded onto the last
      absl::StrAppend(last, " ", absl::StripAsciiWhitespace(line));
      continue;
    }
    const size_t colon = line.find(':');
    if (colon == absl::string_view::npos || colon == 0) {
      return absl::DataLossError(absl::StrCat("multipart: a part header line without a name: '",
                                              absl::CEscape(line), "'"));
    }
    last = &part_.headers[absl::AsciiStrToLower(absl::StripAsciiWhitespace(line.substr(0, colon)))];
    *last = std::string(absl::StripAsciiWhitespace(line.substr(colon + 1)));
  }
  buffer_.erase(0, end == 0 ? 2 : end + 4);
  state_ = State::kBody;
  *progressed = true;
  return absl::OkStatus();
}

// The CRLF before a delimiter belongs to the delimiter, not to the part's body.
absl::Status MultipartReader::Body(bool* progressed) {
  const size_t at = buffer_.find(delimiter_);
  const size_t take = at != std::string::npos               ? at
                      : buffer_.size() >= delimiter_.size() ? buffer_.size() - delimiter_.size() + 1
                                                            : 0;
  if (part_.body.size() + take > max_part_bytes_) {
    return absl::ResourceExhaustedError(
        absl::StrCat("multipart: part ", parts_ + 1, " is over ", max_part_bytes_, " bytes"));
  }
  part_.body.append(buffer_, 0, take);
  buffer_.erase(0, take);
  if (at == std::string::npos) return absl::OkStatus();
  buffer_.erase(0, delimiter_.size());
  ++parts_;
  MultipartPart done = std::move(part_);
  part_ = MultipartPart();
  state_ = State::kDelimiterEnd;
  *progressed = true;
  return on_part_(done);
}

}  // namespace fl
