#include "tools/report.h"

#include <cmath>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "privacy/rdp_accountant.h"

namespace fl {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

size_t Count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

TEST(SvgLineChartTest, ANanBreaksTheLineAndTextIsEscaped) {
  ChartSeries a{"a<b", {{1, 0.5}, {2, 0.6}, {3, NAN}, {4, 0.7}, {5, 0.8}}};
  ChartSeries lone{"lone", {{2, 0.55}}};
  ChartSeries empty{"empty", {}};
  const std::string svg = SvgLineChart({a, lone, empty}, {"t & t", "x", "y", 0, 1});
  EXPECT_EQ(Count(svg, "<polyline"), 2u);  // 1-2 and 4-5
  EXPECT_EQ(Count(svg, "<circle"), 1u);    // the lone point
  EXPECT_THAT(svg, HasSubstr("a&lt;b"));
  EXPECT_THAT(svg, HasSubstr("t &amp; t"));
  EXPECT_THAT(svg, Not(HasSubstr("a<b")));
  EXPECT_THAT(svg, HasSubstr(">empty</text>"));  // in the legend all the same
  EXPECT_EQ(Count(svg, "<svg"), Count(svg, "</svg>"));
}

TEST(SvgLineChartTest, NoDataStillDraws) {
  const std::string svg = SvgLineChart({}, {"nothing yet", "x", "y", 0, 0});
  EXPECT_THAT(svg, HasSubstr("nothing yet"));
  EXPECT_THAT(svg, Not(HasSubstr("nan")));
  EXPECT_THAT(svg, Not(HasSubstr("inf")));
}

TEST(EpsilonOverRoundsTest, OnePointPerRoundEndingAtTheReportedSteps) {
  PrivacyReport p;
  p.set_epsilon(1.0);
  p.set_delta(1e-5);
  p.set_noise_multiplier(1.1);
  p.set_sample_rate(0.01);
  p.set_steps(50);
  const auto curve = EpsilonOverRounds(p, 10);
  ASSERT_EQ(curve.size(), 6u);
  EXPECT_EQ(curve[0], std::make_pair(0.0, 0.0));
  for (size_t i = 1; i < curve.size(); ++i) EXPECT_GT(curve[i].second, curve[i - 1].second);
  EXPECT_DOUBLE_EQ(curve.back().second, *ComputeEpsilon(0.01, 1.1, 50, 1e-5));
  EXPECT_TRUE(EpsilonOverRounds(PrivacyReport(), 10).empty());
}

JobStatus Job() {
  JobStatus job;
  job.set_job_id("cxr-1234");
  job.set_state(DONE);
  job.set_rounds_done(3);
  job.set_best_round(2);
  job.set_best_score(0.81);
  JobSpec& spec = *job.mutable_spec();
  spec.set_name("cxr");
  spec.set_model("smallcnn");
  spec.set_rounds(3);
  spec.set_local_steps(10);
  spec.add_labels("cardiomegaly");
  spec.add_labels("effusion");
  spec.mutable_dp()->set_enabled(true);
  for (int r = 0; r < 3; ++r) {
    RoundSummary* round = job.add_rounds();
    round->set_round(r);
    round->add_sites("site-a");
    round->add_sites("<script>alert(1)</script>");
    LabelMetric* m = round->add_test();
    m->set_label("cardiomegaly");
    m->set_auroc(0.7 + 0.05 * r);
    m = round->add_test();
    m->set_label("effusion");
    m->set_auroc(0.6 + 0.05 * r);
    round->set_mean_auroc(0.65 + 0.05 * r);
    SiteReport* own = round->add_reports();
    own->set_site("site-a");
    own->set_mean_auroc(0.66 + 0.05 * r);
  }
  SiteReport* final_report = job.add_sites();
  final_report->set_site("site-a");
  final_report->set_mean_auroc(0.76);
  LabelMetric* m = final_report->add_test();
  m->set_label("cardiomegaly");
  m->set_auroc(0.8);
  m->set_positives(12);
  m->set_negatives(88);
  for (auto [fpr, tpr] : {std::pair{0.0, 0.0}, {0.2, 0.7}, {1.0, 1.0}}) {
    RocPoint* p = m->add_roc();
    p->set_fpr(fpr);
    p->set_tpr(tpr);
  }
  PrivacyReport& p = *final_report->mutable_privacy();
  p.set_epsilon(2.5);
  p.set_delta(1e-5);
  p.set_noise_multiplier(1.0);
  p.set_sample_rate(0.02);
  p.set_steps(30);
  return job;
}

TEST(ReportHtmlTest, EverySectionFromTheJobsFigures) {
  SiteInfo site;
  site.set_name("site-a");
  site.set_num_images(500);
  site.set_software_version("0.1.0");
  site.add_labels()->set_name("cardiomegaly");
  const std::string html =
      ReportHtml(Job(), {site}, {"2026-12-03 17:00:00 UTC", "0.1.0", "coord.example:50051"});
  EXPECT_THAT(html, HasSubstr("<!DOCTYPE html>"));
  EXPECT_THAT(html, HasSubstr("Federated training report: cxr-1234"));
  EXPECT_THAT(html, HasSubstr("The best model so far is round 2"));
  EXPECT_THAT(html, HasSubstr(">cardiomegaly</text>"));              // a legend entry
  EXPECT_THAT(html, HasSubstr("0.800 <small>(12+ / 88−)</small>"));  // final figures
  EXPECT_THAT(html, HasSubstr("<td>2.500</td>"));                    // ε table
  EXPECT_THAT(html, HasSubstr("No training loss was reported"));
  EXPECT_THAT(html, HasSubstr("model: &quot;smallcnn&quot;"));  // the spec, escaped
  EXPECT_THAT(html, HasSubstr("coord.example:50051"));
  EXPECT_THAT(html, Not(HasSubstr("<script")));  // no script at all, and names escaped
  EXPECT_THAT(html, Not(HasSubstr("src=")));     // nothing fetched: self-contained
  EXPECT_THAT(html, Not(HasSubstr("href=")));
  // Charts: validation, each site's own, the ROC of the one finding with a curve, privacy.
  EXPECT_EQ(Count(html, "<svg"), 4u);
  EXPECT_EQ(Count(html, "</svg>"), 4u);
  EXPECT_THAT(html, HasSubstr("ROC: cardiomegaly (final model)"));
  EXPECT_THAT(html, HasSubstr(">site-a (AUROC 0.800)</text>"));
}

}  // namespace
}  // namespace fl
