// For tests only: runs the running test binary again as worker processes (e.g. the ranks of a
// process group), each running one DISABLED_ test of it with its own value of an environment
// variable, and waits for them.
#pragma once

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

extern char** environ;

namespace fl {

// Starts one process of this binary per entry of `values`, running only the test `test`
// ("Suite.DISABLED_Name") with `variable`=values[i] added to this process's environment, and
// waits for all of them. A worker that fails, or is still running after `timeout` (then
// killed), fails the calling test.
inline void RunWorkers(const std::string& test, const std::string& variable,
                       const std::vector<std::string>& values,
                       std::chrono::seconds timeout = std::chrono::seconds(120)) {
  std::vector<pid_t> pids;
  for (const std::string& value : values) {
    std::vector<std::string> env = {variable + "=" + value};
    for (char** e = environ; *e != nullptr; ++e) env.emplace_back(*e);
    std::vector<char*> envp;
    for (std::string& e : env) envp.push_back(e.data());
    envp.push_back(nullptr);
    std::string exe = "/proc/self/exe", all = "--gtest_also_run_disabled_tests",
                filter = "--gtest_filter=" + test;
    char* argv[] = {exe.data(), all.data(), filter.data(), nullptr};
    pid_t pid = 0;
    const int spawned = posix_spawn(&pid, exe.c_str(), nullptr, nullptr, argv, envp.data());
    EXPECT_EQ(spawned, 0) << "cannot start a worker";
    if (spawned == 0) pids.push_back(pid);
  }
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (pid_t pid : pids) {
    int status = 0;
    while (waitpid(pid, &status, WNOHANG) == 0) {
      if (std::chrono::steady_clock::now() > deadline) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        ADD_FAILURE() << "a worker of " << test << " was still running after " << timeout.count()
                      << " s";
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
        << "a worker of " << test << " failed (wait status " << status << ")";
  }
}

}  // namespace fl
