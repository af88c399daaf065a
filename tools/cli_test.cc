// The flctl command line (RunFlctl over CLI11): help, usage errors and their exit codes, on a
// command registered here as cmd_*.cc files register theirs.
#include "tools/cli.h"

#include <gtest/gtest.h>

#include <iostream>
#include <memory>
#include <sstream>

namespace fl::cli {
namespace {

struct Seen {
  double rate = 0;
  int64_t steps = 3;
  bool verbose = false;
  std::string file;
  int runs = 0;
};
Seen seen;

CommandRun SetUpProbe(CLI::App& app) {
  app.require_subcommand(1);
  CLI::App* measure = app.add_subcommand("measure", "a subcommand with options");
  measure->add_option("--rate", seen.rate, "a required number")->required();
  measure->add_option("--steps", seen.steps, "an integer with a default");
  measure->add_flag("--verbose", seen.verbose, "a flag");
  measure->add_option("FILE", seen.file, "a positional argument");
  return [] { return ++seen.runs, 0; };
}

FL_COMMAND("probe", "a command of the test", SetUpProbe);

// Runs flctl on `args` with stdout and stderr captured.
struct Result {
  int code;
  std::string out, err;
};
Result Flctl(const std::vector<std::string>& args) {
  std::ostringstream out, err;
  std::streambuf* old_out = std::cout.rdbuf(out.rdbuf());
  std::streambuf* old_err = std::cerr.rdbuf(err.rdbuf());
  seen = Seen();
  const int code = RunFlctl(args);
  std::cout.rdbuf(old_out);
  std::cerr.rdbuf(old_err);
  return {code, out.str(), err.str()};
}

TEST(CliTest, ParsesOptionsPositionalsAndFlagsInAnyOrder) {
  Result r = Flctl({"probe", "measure", "data.csv", "--steps=7", "--verbose", "--rate", "0.5"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(seen.runs, 1);
  EXPECT_EQ(seen.rate, 0.5);
  EXPECT_EQ(seen.steps, 7);
  EXPECT_TRUE(seen.verbose);
  EXPECT_EQ(seen.file, "data.csv");
}

TEST(CliTest, AnOptionGivenTwiceTakesTheLastValue) {
  EXPECT_EQ(Flctl({"probe", "measure", "--rate", "1", "--rate", "2"}).code, 0);
  EXPECT_EQ(seen.rate, 2);
}

TEST(CliTest, HelpIsGeneratedAndExitsZero) {
  Result top = Flctl({"--help"});
  EXPECT_EQ(top.code, 0);
  EXPECT_NE(top.out.find("probe"), std::string::npos) << top.out;
  EXPECT_NE(top.out.find("a command of the test"), std::string::npos) << top.out;
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"probe", "measure", "--help"},
        {"help", "probe", "measure"},
        {"probe", "measure", "-h"}}) {
    Result r = Flctl(args);
    EXPECT_EQ(r.code, 0) << args[0];
    EXPECT_NE(r.out.find("--rate"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("--steps"), std::string::npos) << r.out;
    EXPECT_EQ(seen.runs, 0);
  }
  EXPECT_EQ(Flctl({"help"}).code, 0);
}

TEST(CliTest, NoWordsPrintTheHelpAsAUsageError) {
  Result r = Flctl({});
  EXPECT_EQ(r.code, kUsageExit);
  EXPECT_NE(r.out.find("probe"), std::string::npos);
}

TEST(CliTest, UsageErrorsNameTheProblemAndExitTwo) {
  struct Case {
    std::vector<std::string> args;
    std::string says;
  };
  const Case cases[] = {
      {{"probe", "measure", "--rate", "1", "--bogus", "3"}, "--bogus"},
      {{"probe", "measure", "--rate"}, "--rate"},        // missing value
      {{"probe", "measure"}, "--rate"},                  // missing required option
      {{"probe", "measure", "--rate", "fast"}, "fast"},  // not a number
      {{"probe", "measure", "--rate", "1", "--steps", "2.5"}, "--steps"},  // not an integer
      {{"probe", "measure", "--rate", "1", "a.csv", "b.csv"}, "b.csv"},    // extra word
      {{"probe"}, "subcommand"},
      {{"nosuch"}, "unknown command 'nosuch'"},
  };
  for (const Case& c : cases) {
    Result r = Flctl(c.args);
    EXPECT_EQ(r.code, kUsageExit) << c.says;
    EXPECT_NE(r.err.find(c.says), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("flctl"), std::string::npos) << r.err;
    EXPECT_EQ(seen.runs, 0) << c.says;
  }
}

TEST(CliTest, UsageErrorAfterParsingPointsToTheCommandsHelp) {
  CLI::App app("", "flctl");
  CLI::App* sub = app.add_subcommand("probe");
  std::ostringstream err;
  std::streambuf* old_err = std::cerr.rdbuf(err.rdbuf());
  const int code = UsageError(*sub, absl::InvalidArgumentError("--delta must be in (0, 1)"));
  std::cerr.rdbuf(old_err);
  EXPECT_EQ(code, kUsageExit);
  EXPECT_NE(err.str().find("flctl: --delta must be in (0, 1)"), std::string::npos) << err.str();
  EXPECT_NE(err.str().find("flctl probe --help"), std::string::npos) << err.str();
}

}  // namespace
}  // namespace fl::cli
