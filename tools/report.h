// `flctl report`: one self-contained HTML file about a job, for people who do not run flctl: the
// validation figures over rounds (inline SVG, no script, no network), each site's own figures
// on the final model, the privacy each site spent over the rounds it trained, and the job's spec
// and provenance. Built from the Admin API's job status and site list only: what the sites
// reported in aggregate, never an image or a per-image score.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "fl/federation.pb.h"

namespace fl {

// One line of a chart: its name and (x, y) points; a NaN y breaks the line.
struct ChartSeries {
  std::string name;
  std::vector<std::pair<double, double>> points;
};

struct ChartOptions {
  std::string title;
  std::string x_label;
  std::string y_label;
  // The y range shown; when y_min >= y_max it is taken from the data.
  double y_min = 0;
  double y_max = 0;
};

// An SVG line chart (720 x 320 with its legend), every text escaped. Series without a finite
// point are listed in the legend only.
std::string SvgLineChart(const std::vector<ChartSeries>& series, const ChartOptions& options);

// `text` with &, <, >, " and ' escaped for HTML text and attribute values.
std::string HtmlEscape(const std::string& text);

// Who made the report and when, for its provenance section.
struct ReportContext {
  std::string generated_utc;  // e.g. "2026-12-03 17:20:00 UTC"
  std::string flctl_version;
  std::string coordinator;  // the admin config's coordinator address
};

// The report: a complete HTML5 document that is also well-formed XML (every element closed), so
// that it can be checked by an XML parser.
std::string ReportHtml(const JobStatus& job, const std::vector<SiteInfo>& sites,
                       const ReportContext& context);

// ε of a site after each round it trained, from the (q, σ, steps, δ) of its latest privacy
// report and the job's local_steps: the RDP accountant's figure after k × local_steps steps, for
// k = 1 .. steps / local_steps, after (0, 0) (the site's own ledger is authoritative; this is
// the curve the coordinator can reconstruct). Empty without DP figures.
std::vector<std::pair<double, double>> EpsilonOverRounds(const PrivacyReport& privacy,
                                                         uint32_t local_steps);

}  // namespace fl
