// A strict JSON subset (objects, arrays, strings, non-negative integers) for the small headers
// and reports the project reads and writes itself, and JSON string quoting.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace fl {

// One parsed value of the subset.
struct JsonValue {
  enum class Kind { kObject, kArray, kString, kInteger };
  Kind kind = Kind::kInteger;
  std::vector<std::pair<std::string, JsonValue>> members;  // kObject, in file order
  std::vector<JsonValue> items;                            // kArray
  std::string text;                                        // kString
  uint64_t integer = 0;                                    // kInteger
};

// Parses `text` as one value; floats, negatives, true/false/null, nesting deeper than
// `max_depth`, duplicate keys and trailing text are refused. Errors start with `context`.
absl::StatusOr<JsonValue> ParseJsonSubset(absl::string_view text, int max_depth,
                                          absl::string_view context);

// `s` as a JSON string literal, quotes included.
std::string JsonQuote(absl::string_view s);

}  // namespace fl
