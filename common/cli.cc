#include "common/cli.h"

#include <algorithm>
#include <iostream>

namespace fl {

std::string CommandPath(const CLI::App& app) {
  std::string path = app.get_name();
  for (const CLI::App* sub = &app; !sub->get_subcommands().empty();) {
    sub = sub->get_subcommands().front();
    path += " " + sub->get_name();
  }
  return path;
}

void ConfigureApp(CLI::App& app) {
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  app.option_defaults()->always_capture_default();  // the help shows each default
  app.failure_message([](const CLI::App* failed, const CLI::Error& e) {
    const std::string path = CommandPath(*failed);
    return path + ": " + e.what() + "\nRun '" + path + " --help' for the usage.\n";
  });
}

namespace {

// A required option's placeholder value is no default: the help shows none.
void HideRequiredDefaults(CLI::App& app) {
  for (CLI::Option* option : app.get_options()) {
    if (option->get_required()) option->default_str("");
  }
  for (CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; })) {
    HideRequiredDefaults(*sub);
  }
}

}  // namespace

std::optional<int> ParseCommandLine(CLI::App& app, const std::vector<std::string>& args) {
  HideRequiredDefaults(app);
  std::vector<std::string> reversed(args.rbegin(), args.rend());  // as CLI11 takes them
  try {
    app.parse(reversed);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e, std::cout, std::cerr);
    return code == static_cast<int>(CLI::ExitCodes::Success) ? 0 : kUsageExit;
  }
  return std::nullopt;
}

}  // namespace fl
