// For tests only: a fresh, empty folder unique to the running test and process, so that CTest
// may run tests of one binary in parallel without them sharing files.
#pragma once

#include <stdlib.h>

#include <algorithm>
#include <string>

#include <gtest/gtest.h>

namespace fl {

// Creates TMP/<suite>.<test>.<tag>.XXXXXX and returns its path.
inline std::string FreshTestDir(const std::string& tag = "") {
  const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string pattern = ::testing::TempDir();
  if (pattern.empty() || pattern.back() != '/') pattern += '/';
  std::string name = std::string(info ? info->test_suite_name() : "test") + "." +
                     (info ? info->name() : "setup") + (tag.empty() ? "" : "." + tag);
  std::replace(name.begin(), name.end(), '/', '_');  // parameterised tests: "Suite/Test/0"
  pattern += name + ".XXXXXX";
  if (mkdtemp(pattern.data()) == nullptr) {
    ADD_FAILURE() << "cannot create a test folder from " << pattern;
  }
  return pattern;
}

}  // namespace fl
