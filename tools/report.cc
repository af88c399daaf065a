#include "tools/report.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "google/protobuf/text_format.h"
#include "models/spec.h"
#include "privacy/rdp_accountant.h"
#include "tools/job_watch.h"

namespace fl {
namespace {

constexpr int kWidth = 720;
constexpr int kHeight = 320;
constexpr int kLeft = 60;
constexpr int kRight = 470;  // the legend sits right of the plot
constexpr int kTop = 30;
constexpr int kBottom = 280;
const char* const kColors[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                               "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};

std::string Num(double v) { return absl::StrFormat("%.1f", v); }

std::string Figure(double v, const char* format = "%.3f") {
  return std::isfinite(v) ? absl::StrFormat(format, v) : std::string("–");
}

struct Range {
  double lo = std::numeric_limits<double>::infinity();
  double hi = -std::numeric_limits<double>::infinity();
  void Add(double v) {
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  bool Empty() const { return !(lo <= hi); }
  // Widens a degenerate range so that it can be drawn.
  void Open(double pad) {
    if (Empty()) lo = 0, hi = 1;
    if (hi - lo < 1e-12) lo -= pad, hi += pad;
  }
};

// About `ticks` + 1 tick values over `x`: whole numbers when the range has whole ends at least 2
// apart (rounds).
std::vector<double> XTicks(const Range& x, int ticks) {
  std::vector<double> out;
  if (x.lo == std::floor(x.lo) && x.hi == std::floor(x.hi) && x.hi - x.lo >= 2) {
    const double step = std::max(1.0, std::ceil((x.hi - x.lo) / ticks));
    for (double v = x.lo; v <= x.hi; v += step) out.push_back(v);
    return out;
  }
  for (int i = 0; i <= ticks; ++i) out.push_back(x.lo + (x.hi - x.lo) * i / ticks);
  return out;
}

// <text> at (x, y) with optional attributes.
std::string Text(double x, double y, const std::string& text, const std::string& attrs = "") {
  return absl::StrCat("<text x=\"", Num(x), "\" y=\"", Num(y), "\"", attrs.empty() ? "" : " ",
                      attrs, ">", HtmlEscape(text), "</text>");
}

std::string Section(const std::string& title) {
  return absl::StrCat("<h2>", HtmlEscape(title), "</h2>\n");
}

// A table from a header row and rows of already escaped cells, scrolling sideways when wide.
std::string Table(const std::vector<std::string>& header,
                  const std::vector<std::vector<std::string>>& rows) {
  std::string out = "<div class=\"wide\"><table>\n<tr>";
  for (const std::string& h : header) absl::StrAppend(&out, "<th>", HtmlEscape(h), "</th>");
  absl::StrAppend(&out, "</tr>\n");
  for (const auto& row : rows) {
    absl::StrAppend(&out, "<tr>");
    for (const std::string& cell : row) absl::StrAppend(&out, "<td>", cell, "</td>");
    absl::StrAppend(&out, "</tr>\n");
  }
  return out + "</table></div>\n";
}

bool IsClassifier(const JobSpec& spec) { return KindOf(spec) == WorkloadKind::kClassification; }

// The x of a round's validation figures: the rounds done when its model was made (as best_round).
double RoundX(const RoundSummary& round) { return round.round() + 1.0; }

std::string ValidationSection(const JobStatus& job) {
  std::string out = Section("Validation over rounds");
  absl::StrAppend(&out,
                  "<p>Each round's global model as the sites evaluated it on their own held-out "
                  "splits; per figure the median over the sites (one site cannot move it beyond "
                  "the others' range).",
                  job.best_round() > 0
                      ? absl::StrFormat(" The best model so far is round %d's (score %s).",
                                        job.best_round(), Figure(job.best_score(), "%.4f"))
                      : std::string(),
                  "</p>\n");
  if (IsClassifier(job.spec())) {
    std::map<std::string, ChartSeries> by_label;
    ChartSeries mean{"mean over findings", {}};
    for (const RoundSummary& round : job.rounds()) {
      for (const LabelMetric& m : round.test()) {
        ChartSeries& s = by_label[m.label()];
        s.name = m.label();
        s.points.emplace_back(RoundX(round), m.auroc());
      }
      if (round.test_size() > 0) mean.points.emplace_back(RoundX(round), round.mean_auroc());
    }
    std::vector<ChartSeries> series{mean};
    for (const std::string& label : job.spec().labels()) {
      if (by_label.count(label)) series.push_back(by_label[label]);
    }
    absl::StrAppend(&out, SvgLineChart(series, {"AUROC per finding (median over sites)",
                                                "rounds done", "AUROC", 0, 0}));
  } else {
    std::map<std::string, ChartSeries> by_name;
    for (const RoundSummary& round : job.rounds()) {
      for (const Metric& m : round.metrics()) {
        ChartSeries& s = by_name[m.name()];
        s.name = m.name();
        s.points.emplace_back(RoundX(round), m.value());
      }
    }
    for (const auto& [name, series] : by_name) {
      absl::StrAppend(&out, SvgLineChart({series}, {absl::StrCat(name, " (median over sites)"),
                                                    "rounds done", name, 0, 0}));
    }
  }
  ChartSeries loss{"training loss", {}};
  for (const RoundSummary& round : job.rounds()) {
    if (round.has_train_loss()) loss.points.emplace_back(round.round() + 1.0, round.train_loss());
  }
  if (!loss.points.empty()) {
    absl::StrAppend(&out, SvgLineChart({loss}, {"Training loss (weighted mean over sites)", "round",
                                                "loss", 0, 0}));
  } else {
    absl::StrAppend(&out,
                    "<p>No training loss was reported (under DP a site keeps it: it is not "
                    "noised).</p>\n");
  }
  return out;
}

std::string SitesSection(const JobStatus& job, const std::vector<SiteInfo>& sites) {
  std::set<std::string> in_job;
  for (const RoundSummary& round : job.rounds())
    in_job.insert(round.sites().begin(), round.sites().end());
  for (const SiteReport& r : job.sites()) in_job.insert(r.site());
  std::vector<std::vector<std::string>> rows;
  for (const SiteInfo& s : sites) {
    if (!in_job.count(s.name())) continue;
    std::vector<std::string> labels;
    for (const SiteLabel& l : s.labels()) labels.push_back(l.name());
    rows.push_back({HtmlEscape(s.name()), absl::StrCat(s.num_images()),
                    HtmlEscape(absl::StrJoin(labels, ", ")), HtmlEscape(s.hardware()),
                    HtmlEscape(s.software_version()), s.connected() ? "connected" : "offline"});
  }
  std::string out = Section("Sites");
  if (rows.empty()) return out + "<p>No site has taken part yet.</p>\n";
  return out + Table({"site", "images", "labels", "hardware", "software", "now"}, rows);
}

// Per finding, each site's ROC curve of the final model (its final evaluation report), beside
// the chance line.
std::string RocCharts(const JobStatus& job) {
  std::string out;
  for (const std::string& label : job.spec().labels()) {
    std::vector<ChartSeries> series{{"chance", {{0, 0}, {1, 1}}}};
    for (const SiteReport& r : job.sites()) {
      for (const LabelMetric& m : r.test()) {
        if (m.label() != label || m.roc().empty()) continue;
        ChartSeries& s = series.emplace_back();
        s.name = absl::StrFormat("%s (AUROC %s)", r.site(), Figure(m.auroc()));
        for (const RocPoint& p : m.roc()) s.points.emplace_back(p.fpr(), p.tpr());
      }
    }
    if (series.size() == 1) continue;
    absl::StrAppend(&out,
                    SvgLineChart(series, {absl::StrCat("ROC: ", label, " (final model)"),
                                          "false positive rate", "true positive rate", 0, 1}));
  }
  return out;
}

std::string FinalSection(const JobStatus& job) {
  std::string out = Section("Each site's figures on the latest model");
  if (job.sites().empty()) return out + "<p>No site has reported yet.</p>\n";
  if (IsClassifier(job.spec())) {
    std::vector<std::string> header{"site", "mean AUROC"};
    for (const std::string& label : job.spec().labels()) header.push_back(label);
    std::vector<std::vector<std::string>> rows;
    for (const SiteReport& r : job.sites()) {
      std::vector<std::string> row{HtmlEscape(r.site()), Figure(r.mean_auroc())};
      for (const std::string& label : job.spec().labels()) {
        std::string cell = "–";
        for (const LabelMetric& m : r.test()) {
          if (m.label() != label) continue;
          cell = absl::StrCat(Figure(m.auroc()), " <small>(", m.positives(), "+ / ", m.negatives(),
                              "−)</small>");
        }
        row.push_back(cell);
      }
      rows.push_back(std::move(row));
    }
    absl::StrAppend(&out, Table(header, rows));
    // Each site's own mean AUROC over the rounds, beside the median above.
    std::map<std::string, ChartSeries> by_site;
    for (const RoundSummary& round : job.rounds()) {
      for (const SiteReport& r : round.reports()) {
        ChartSeries& s = by_site[r.site()];
        s.name = r.site();
        s.points.emplace_back(RoundX(round), r.mean_auroc());
      }
    }
    std::vector<ChartSeries> series;
    for (auto& [site, s] : by_site) series.push_back(std::move(s));
    if (!series.empty()) {
      absl::StrAppend(&out, SvgLineChart(series, {"Each site's mean AUROC on its own split",
                                                  "rounds done", "AUROC", 0, 0}));
    }
    return out + RocCharts(job);
  }
  std::set<std::string> names;
  for (const SiteReport& r : job.sites()) {
    for (const Metric& m : r.metrics()) names.insert(m.name());
  }
  std::vector<std::string> header{"site"};
  header.insert(header.end(), names.begin(), names.end());
  std::vector<std::vector<std::string>> rows;
  for (const SiteReport& r : job.sites()) {
    std::vector<std::string> row{HtmlEscape(r.site())};
    for (const std::string& name : names) {
      std::string cell = "–";
      for (const Metric& m : r.metrics()) {
        if (m.name() == name) cell = Figure(m.value(), "%.4g");
      }
      row.push_back(cell);
    }
    rows.push_back(std::move(row));
  }
  return out + Table(header, rows);
}

std::string PrivacySection(const JobStatus& job) {
  std::string out = Section("Privacy");
  std::vector<std::vector<std::string>> rows;
  std::vector<ChartSeries> series;
  for (const SiteReport& r : job.sites()) {
    const PrivacyReport& p = r.privacy();
    if (p.epsilon() <= 0) continue;
    rows.push_back({HtmlEscape(r.site()), Figure(p.epsilon(), "%.3f"), Figure(p.delta(), "%.3g"),
                    Figure(p.noise_multiplier(), "%.3f"), Figure(p.sample_rate(), "%.4g"),
                    absl::StrCat(p.steps())});
    series.push_back({r.site(), EpsilonOverRounds(p, job.spec().local_steps())});
  }
  if (rows.empty()) {
    return out + (job.spec().dp().enabled()
                      ? "<p>No site has reported privacy spent yet.</p>\n"
                      : "<p>This job trains without differential privacy.</p>\n");
  }
  absl::StrAppend(&out,
                  "<p>What each site reported with its last update: ε at δ for this job "
                  "(Rényi-DP accountant of the Poisson-subsampled Gaussian; a site's ledger "
                  "composes all jobs on its data and is authoritative).</p>\n",
                  Table({"site", "ε", "δ", "noise multiplier σ", "sample rate q", "steps"}, rows),
                  SvgLineChart(series, {"ε spent over the rounds a site trained", "rounds trained",
                                        "ε", 0, 0}));
  return out;
}

std::string SpecSection(const JobStatus& job) {
  std::string text;
  google::protobuf::TextFormat::PrintToString(job.spec(), &text);
  std::string out = absl::StrCat(Section("Job"), "<pre>", HtmlEscape(text), "</pre>\n");
  if (!job.frozen_digest().empty()) {
    std::string frozen;
    google::protobuf::TextFormat::PrintToString(job.frozen_spec(), &frozen);
    absl::StrAppend(&out, "<p>Frozen autoencoder: round ", job.frozen_round(), " of job ",
                    HtmlEscape(job.frozen_spec().name()), ", SHA-256 <code>",
                    HtmlEscape(job.frozen_digest()), "</code>.</p>\n<pre>", HtmlEscape(frozen),
                    "</pre>\n");
  }
  return out;
}

std::string ProvenanceSection(const JobStatus& job, const std::vector<SiteInfo>& sites,
                              const ReportContext& context) {
  std::set<std::string> versions;
  for (const SiteInfo& s : sites) {
    if (!s.software_version().empty()) versions.insert(s.software_version());
  }
  return absl::StrCat(
      Section("Provenance"), "<p>Job <code>", HtmlEscape(job.job_id()),
      "</code> on the coordinator at <code>", HtmlEscape(context.coordinator),
      "</code>; report written ", HtmlEscape(context.generated_utc), " by flctl ",
      HtmlEscape(context.flctl_version), "; sites' software: ",
      HtmlEscape(versions.empty() ? std::string("–") : absl::StrJoin(versions, ", ")),
      ". Every figure is one the sites reported in aggregate; no image and no per-image score "
      "left a site.</p>\n");
}

constexpr char kStyle[] =
    "body{font-family:sans-serif;max-width:980px;margin:24px auto;color:#222}"
    "h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ccc}"
    "table{border-collapse:collapse;margin:8px 0}th,td{border:1px solid #ccc;padding:3px 8px;"
    "text-align:left;font-size:0.9em}th{background:#f3f3f3}pre{background:#f7f7f7;padding:8px;"
    "overflow-x:auto;font-size:0.85em}svg{display:block;margin:8px 0}"
    ".state{font-weight:bold}.wide{overflow-x:auto}";

}  // namespace

std::string HtmlEscape(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

std::string SvgLineChart(const std::vector<ChartSeries>& series, const ChartOptions& options) {
  Range x, y;
  for (const ChartSeries& s : series) {
    for (const auto& [px, py] : s.points) {
      if (!std::isfinite(px) || !std::isfinite(py)) continue;
      x.Add(px);
      y.Add(py);
    }
  }
  if (options.y_min < options.y_max) {
    y.lo = options.y_min;
    y.hi = options.y_max;
  } else if (!y.Empty()) {
    const double pad = 0.05 * (y.hi - y.lo);
    y.lo -= pad;
    y.hi += pad;
  }
  x.Open(1);
  y.Open(0.05);
  auto sx = [&](double v) { return kLeft + (v - x.lo) / (x.hi - x.lo) * (kRight - kLeft); };
  auto sy = [&](double v) { return kBottom - (v - y.lo) / (y.hi - y.lo) * (kBottom - kTop); };
  std::string out =
      absl::StrCat("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"", kWidth, "\" height=\"",
                   kHeight, "\" viewBox=\"0 0 ", kWidth, " ", kHeight, "\" role=\"img\">\n",
                   "<title>", HtmlEscape(options.title), "</title>\n",
                   Text(kLeft, 18, options.title, "font-size=\"14\" font-weight=\"bold\""), "\n",
                   "<rect x=\"", kLeft, "\" y=\"", kTop, "\" width=\"", kRight - kLeft,
                   "\" height=\"", kBottom - kTop, "\" fill=\"none\" stroke=\"#999\"/>\n");
  constexpr int kTicks = 5;
  for (int i = 0; i <= kTicks; ++i) {
    const double yv = y.lo + (y.hi - y.lo) * i / kTicks;
    absl::StrAppend(&out, "<line x1=\"", kLeft, "\" x2=\"", kRight, "\" y1=\"", Num(sy(yv)),
                    "\" y2=\"", Num(sy(yv)), "\" stroke=\"#eee\"/>",
                    Text(kLeft - 6, sy(yv) + 4, absl::StrFormat("%.3g", yv),
                         "font-size=\"11\" text-anchor=\"end\""),
                    "\n");
  }
  for (double xv : XTicks(x, kTicks)) {
    absl::StrAppend(&out,
                    Text(sx(xv), kBottom + 16, absl::StrFormat("%.4g", xv),
                         "font-size=\"11\" text-anchor=\"middle\""),
                    "\n");
  }
  absl::StrAppend(&out,
                  Text((kLeft + kRight) / 2.0, kBottom + 34, options.x_label,
                       "font-size=\"12\" text-anchor=\"middle\""),
                  Text(14, (kTop + kBottom) / 2.0, options.y_label,
                       absl::StrFormat("font-size=\"12\" text-anchor=\"middle\" "
                                       "transform=\"rotate(-90 14 %s)\"",
                                       Num((kTop + kBottom) / 2.0))),
                  "\n");
  for (size_t i = 0; i < series.size(); ++i) {
    const char* color = kColors[i % (sizeof(kColors) / sizeof(kColors[0]))];
    // One polyline per run of finite points (a NaN breaks the line); a lone point is a dot.
    std::vector<std::pair<double, double>> run;
    auto flush = [&] {
      if (run.size() == 1) {
        absl::StrAppend(&out, "<circle cx=\"", Num(sx(run[0].first)), "\" cy=\"",
                        Num(sy(run[0].second)), "\" r=\"2.5\" fill=\"", color, "\"/>\n");
      } else if (run.size() > 1) {
        std::vector<std::string> pts;
        for (const auto& [px, py] : run) pts.push_back(absl::StrCat(Num(sx(px)), ",", Num(sy(py))));
        absl::StrAppend(&out, "<polyline fill=\"none\" stroke=\"", color,
                        "\" stroke-width=\"1.5\" points=\"", absl::StrJoin(pts, " "), "\"/>\n");
      }
      run.clear();
    };
    for (const auto& [px, py] : series[i].points) {
      if (std::isfinite(px) && std::isfinite(py)) {
        run.emplace_back(px, std::clamp(py, y.lo, y.hi));
      } else {
        flush();
      }
    }
    flush();
    const double ly = kTop + 8 + 16.0 * static_cast<double>(i);
    absl::StrAppend(&out, "<line x1=\"", kRight + 12, "\" x2=\"", kRight + 30, "\" y1=\"",
                    Num(ly - 4), "\" y2=\"", Num(ly - 4), "\" stroke=\"", color,
                    "\" stroke-width=\"2\"/>",
                    Text(kRight + 36, ly, series[i].name, "font-size=\"11\""), "\n");
  }
  return out + "</svg>\n";
}

std::vector<std::pair<double, double>> EpsilonOverRounds(const PrivacyReport& privacy,
                                                         uint32_t local_steps) {
  std::vector<std::pair<double, double>> out;
  if (privacy.epsilon() <= 0 || local_steps == 0 || privacy.steps() == 0) return out;
  const uint64_t rounds = privacy.steps() / local_steps;
  out.emplace_back(0.0, 0.0);  // nothing spent before the first round
  for (uint64_t k = 1; k <= rounds; ++k) {
    absl::StatusOr<double> eps = ComputeEpsilon(privacy.sample_rate(), privacy.noise_multiplier(),
                                                k * local_steps, privacy.delta());
    if (!eps.ok()) return {};
    out.emplace_back(static_cast<double>(k), *eps);
  }
  return out;
}

std::string ReportHtml(const JobStatus& job, const std::vector<SiteInfo>& sites,
                       const ReportContext& context) {
  const JobSpec& spec = job.spec();
  std::string summary = absl::StrFormat(
      "<p><span class=\"state\">%s</span>, %d of %d rounds; %s workload%s; sites in the last "
      "round: %d.%s%s</p>\n",
      JobStateName(job.state()), job.rounds_done(), spec.rounds(), WorkloadName(spec),
      spec.model().empty() ? std::string() : absl::StrCat(" (", HtmlEscape(spec.model()), ")"),
      job.rounds().empty() ? 0 : job.rounds(job.rounds_size() - 1).sites_size(),
      job.stopped_early() ? " Stopped early: the validation score stopped improving." : "",
      job.message().empty() ? "" : absl::StrCat(" ", HtmlEscape(job.message())));
  return absl::StrCat(
      "<!DOCTYPE html>\n<html xmlns=\"http://www.w3.org/1999/xhtml\" lang=\"en\">\n<head>\n"
      "<meta charset=\"utf-8\"/>\n<title>",
      HtmlEscape(job.job_id()), ": federated training report</title>\n<style>", kStyle,
      "</style>\n</head>\n<body>\n<h1>Federated training report: ", HtmlEscape(job.job_id()),
      "</h1>\n", summary, ValidationSection(job), FinalSection(job), PrivacySection(job),
      SitesSection(job, sites), SpecSection(job), ProvenanceSection(job, sites, context),
      "</body>\n</html>\n");
}

}  // namespace fl
