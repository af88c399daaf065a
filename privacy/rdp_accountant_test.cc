#include "privacy/rdp_accountant.h"

#include <cmath>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

// Reference values: every number below that is not the published Opacus example was produced by
// privacy/reference_rdp.py, a plain-Python (standard library only) transcription of the Opacus /
// TF Privacy formulas written separately from this C++ code. Rerun it with
//   /usr/bin/python3 privacy/reference_rdp.py
// The tolerance is 1e-6 relative, as the header promises.

namespace fl {
namespace {

using ::testing::HasSubstr;

constexpr double kRelTol = 1e-6;

void ExpectRel(double actual, double expected) {
  EXPECT_NEAR(actual, expected, std::fabs(expected) * kRelTol) << "expected " << expected;
}

double OneOrder(double q, double sigma, double order) {
  return SubsampledGaussianRdp(q, sigma, {order})[0];
}

TEST(DefaultRdpOrdersTest, MatchOpacusDefaultAlphas) {
  const auto& orders = DefaultRdpOrders();
  ASSERT_EQ(orders.size(), 99u + 52u);
  EXPECT_EQ(orders.front(), 1.1);
  EXPECT_EQ(orders[98], 1 + 99 / 10.0);
  EXPECT_EQ(orders[99], 12.0);
  EXPECT_EQ(orders.back(), 63.0);
}

TEST(SubsampledGaussianRdpTest, FractionalOrders) {
  ExpectRel(OneOrder(0.04, 1.5, 3.9), 0.0018332021995636277);
  ExpectRel(OneOrder(0.01, 0.8, 2.5), 0.0004894537157368544);
  ExpectRel(OneOrder(0.5, 5.0, 7.3), 0.039139578606471055);
}

TEST(SubsampledGaussianRdpTest, IntegerOrders) {
  ExpectRel(OneOrder(0.04, 1.5, 4.0), 0.001885340064445743);
  ExpectRel(OneOrder(0.01, 0.8, 32.0), 20.246275937044548);
}

TEST(SubsampledGaussianRdpTest, TinySampleRate) {
  // At q = 1e-5 a fractional order's log A is about 1e-10, so double-precision log-space sums (as
  // in Opacus and in reference_rdp.py, which gives 1.2887824141216697e-10) keep only ~5 digits.
  // The expected value is the defining integral by 40-digit quadrature
  // (reference_rdp.py --quad); the long double code here agrees to ~1e-8.
  ExpectRel(OneOrder(1e-5, 1.0, 1.5), 1.2886939595148537e-10);
  ExpectRel(OneOrder(1e-5, 1.0, 10.0), 8.593267825700737e-10);
}

TEST(SubsampledGaussianRdpTest, LargeSigma) {
  ExpectRel(OneOrder(0.1, 50.0, 63.0), 0.00012630257361075643);
}

TEST(SubsampledGaussianRdpTest, SpecialCases) {
  // q == 1: the plain Gaussian mechanism, alpha / (2 sigma^2).
  EXPECT_DOUBLE_EQ(OneOrder(1.0, 2.0, 5.5), 0.6875);
  EXPECT_EQ(OneOrder(0.0, 1.0, 3.5), 0.0);
  EXPECT_TRUE(std::isinf(OneOrder(0.3, 0.0, 3.5)));
  EXPECT_TRUE(std::isnan(OneOrder(1.5, 1.0, 3.5)));
  EXPECT_TRUE(std::isnan(OneOrder(0.5, -1.0, 3.5)));
}

TEST(ComputeEpsilonTest, OpacusReferenceExample) {
  RdpAccountant accountant;
  accountant.AddSteps(0.04, 1.5, 2250);
  double best_order = 0;
  auto eps = accountant.Epsilon(1e-5, &best_order);
  ASSERT_TRUE(eps.ok()) << eps.status();
  ExpectRel(*eps, 7.32911117143);
  EXPECT_EQ(best_order, 3.9);
}

TEST(ComputeEpsilonTest, MoreReferenceValues) {
  struct Case {
    double q, sigma;
    uint64_t steps;
    double delta, eps, order;
  };
  const Case cases[] = {
      {0.01, 1.1, 10000, 1e-5, 5.63199236854841, 4.7},
      {1.0, 3.0, 10, 1e-6, 5.542921379930211, 5.7},
      {1e-4, 0.9, 1000, 1e-5, 0.5743437752250546, 15},
      {0.02, 20.0, 500, 1e-5, 0.11868436745431538, 63},
      {0.256, 0.7, 100, 1e-3, 31.47991709821363, 1.5},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(testing::Message() << "q=" << c.q << " sigma=" << c.sigma);
    RdpAccountant accountant;
    accountant.AddSteps(c.q, c.sigma, c.steps);
    double best_order = 0;
    auto eps = accountant.Epsilon(c.delta, &best_order);
    ASSERT_TRUE(eps.ok()) << eps.status();
    ExpectRel(*eps, c.eps);
    EXPECT_DOUBLE_EQ(best_order, c.order);
    auto direct = ComputeEpsilon(c.q, c.sigma, c.steps, c.delta);
    ASSERT_TRUE(direct.ok());
    EXPECT_EQ(*direct, *eps);
  }
}

TEST(ComputeEpsilonTest, ZeroNoiseIsInfinite) {
  auto eps = ComputeEpsilon(0.1, 0.0, 10, 1e-5);
  ASSERT_TRUE(eps.ok());
  EXPECT_TRUE(std::isinf(*eps));
}

TEST(ComputeEpsilonTest, RejectsBadArguments) {
  EXPECT_THAT(ComputeEpsilon(1.5, 1.0, 10, 1e-5).status().message(), HasSubstr("q"));
  EXPECT_THAT(ComputeEpsilon(0.1, -1.0, 10, 1e-5).status().message(), HasSubstr("sigma"));
  EXPECT_THAT(ComputeEpsilon(0.1, 1.0, 10, 0.0).status().message(), HasSubstr("delta"));
  EXPECT_THAT(ComputeEpsilon(0.1, 1.0, 10, 1.0).status().message(), HasSubstr("delta"));
}

TEST(RdpAccountantTest, CompositionAddsCurves) {
  RdpAccountant composed;
  composed.AddSteps(0.04, 1.5, 1000);
  composed.AddSteps(0.01, 0.9, 3000);
  const auto a = SubsampledGaussianRdp(0.04, 1.5, DefaultRdpOrders());
  const auto b = SubsampledGaussianRdp(0.01, 0.9, DefaultRdpOrders());
  ASSERT_EQ(composed.rdp().size(), a.size());
  for (size_t k = 0; k < a.size(); ++k) {
    EXPECT_NEAR(composed.rdp()[k], 1000 * a[k] + 3000 * b[k], 1e-12 * composed.rdp()[k]);
  }
  double best_order = 0;
  auto eps = composed.Epsilon(1e-5, &best_order);
  ASSERT_TRUE(eps.ok());
  ExpectRel(*eps, 6.571331891332624);
  EXPECT_DOUBLE_EQ(best_order, 4.1);
}

TEST(RdpAccountantTest, NanCurveIsAnError) {
  RdpAccountant accountant;
  accountant.AddSteps(2.0, 1.0, 5);  // q out of range poisons the curve
  EXPECT_FALSE(accountant.Epsilon(1e-5).ok());
}

TEST(RdpAccountantTest, CurveOfWrongLengthIsAnError) {
  RdpAccountant accountant;
  accountant.set_rdp({1.0, 2.0});
  EXPECT_FALSE(accountant.Epsilon(1e-5).ok());
}

TEST(CalibrateNoiseTest, MatchesReferenceAndRoundTrips) {
  struct Case {
    double q;
    uint64_t steps;
    double target, delta, sigma;
  };
  const Case cases[] = {{0.04, 2250, 8.0, 1e-5, 1.416015625}, {0.01, 5000, 1.0, 1e-5, 2.98828125}};
  for (const Case& c : cases) {
    auto sigma = CalibrateNoise(c.q, c.steps, c.target, c.delta);
    ASSERT_TRUE(sigma.ok()) << sigma.status();
    EXPECT_DOUBLE_EQ(*sigma, c.sigma);
    auto eps = ComputeEpsilon(c.q, *sigma, c.steps, c.delta);
    ASSERT_TRUE(eps.ok());
    EXPECT_LE(*eps, c.target);
    EXPECT_GE(*eps, c.target - 0.01);
  }
}

TEST(CalibrateNoiseTest, RejectsBadArguments) {
  EXPECT_THAT(CalibrateNoise(0.0, 10, 1.0, 1e-5).status().message(), HasSubstr("q"));
  EXPECT_THAT(CalibrateNoise(1.2, 10, 1.0, 1e-5).status().message(), HasSubstr("q"));
  EXPECT_THAT(CalibrateNoise(0.1, 0, 1.0, 1e-5).status().message(), HasSubstr("steps"));
  EXPECT_THAT(CalibrateNoise(0.1, 10, 0.0, 1e-5).status().message(), HasSubstr("epsilon"));
  EXPECT_THAT(CalibrateNoise(0.1, 10, 1.0, 1.0).status().message(), HasSubstr("delta"));
}

TEST(CalibrateNoiseTest, UnreachableTargetIsAnError) {
  // ε cannot go below about 0.1 at δ = 1e-5 with orders up to 63, whatever σ.
  auto sigma = CalibrateNoise(0.01, 100, 0.01, 1e-5);
  EXPECT_FALSE(sigma.ok());
  EXPECT_EQ(sigma.status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_THAT(sigma.status().message(), HasSubstr("unreachable"));
}

}  // namespace
}  // namespace fl
