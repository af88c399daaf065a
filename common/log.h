// One log line to stderr: "2026-11-26T18:00:00.123Z <program>: <line>". Never patient data.
#pragma once

#include <string>

namespace fl {

void LogLine(const char* program, const std::string& line);

}  // namespace fl
