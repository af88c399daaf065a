// Protobuf messages as JSON (protobuf's JSON mapping, proto field names): every JSON document the
// daemons and flctl write for people and scripts (job status, reports, model cards) is a message
// of proto/, never a string put together by hand.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "google/protobuf/message.h"

namespace fl {

// Indented JSON with the proto field names; fields at their default value are written too.
std::string ToJson(const google::protobuf::Message& message);

// Parses `json` into `message`; an unknown field or a wrong type is INVALID_ARGUMENT naming
// `origin` and protobuf's reason.
absl::Status FromJson(const std::string& json, const std::string& origin,
                      google::protobuf::Message* message);

}  // namespace fl
