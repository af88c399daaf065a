// Loading and validating the text-format protobuf configs (one schema, in proto/fl/config.proto).
// Unknown fields and invalid values are refused with a message that names the field.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "fl/config.pb.h"

namespace fl {

// Parses a text-format message of type T from `text`; `origin` names it in errors.
template <typename T>
absl::StatusOr<T> ParseTextProto(const std::string& text, const std::string& origin);

// Reads and parses `path`; errors name the file, line and field.
template <typename T>
absl::StatusOr<T> LoadTextProto(const std::string& path);

// `retry` with its unset fields at their defaults (1 s, doubling to 60 s, 3 tries); both
// ValidateCoordinatorConfig and the coordinator (whose tests build configs by hand) use it.
RoundRetry RoundRetryWithDefaults(RoundRetry retry);

// Each validates, fills defaults for unset fields, and returns the completed message.
absl::StatusOr<CoordinatorConfig> ValidateCoordinatorConfig(CoordinatorConfig config);
absl::StatusOr<ClientConfig> ValidateClientConfig(ClientConfig config);
absl::StatusOr<AdminConfig> ValidateAdminConfig(AdminConfig config);
absl::StatusOr<JobSpec> ValidateJobSpec(JobSpec spec);

// Load + validate in one step, for daemon start-up.
absl::StatusOr<CoordinatorConfig> LoadCoordinatorConfig(const std::string& path);
absl::StatusOr<ClientConfig> LoadClientConfig(const std::string& path);
absl::StatusOr<AdminConfig> LoadAdminConfig(const std::string& path);

}  // namespace fl
