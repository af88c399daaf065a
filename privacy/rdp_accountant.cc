#include "privacy/rdp_accountant.h"

#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"

// The RDP formulas follow Mironov, Talwar, Zhang, "Rényi Differential Privacy of the Sampled
// Gaussian Mechanism" (2019), in the form Opacus and TF Privacy implement them
// (`_compute_log_a_for_int_alpha`, `_compute_log_a_for_frac_alpha`, `get_privacy_spent`), so that
// numbers agree with those libraries. All intermediate sums are carried in long double and in log
// space; results are rounded to double once at the end.

namespace fl {
namespace {

using Real = long double;

constexpr Real kInf = std::numeric_limits<Real>::infinity();
constexpr Real kNan = std::numeric_limits<Real>::quiet_NaN();
// Opacus gives up when σ has to exceed this to reach the target ε.
constexpr double kMaxSigma = 1e6;

// log(exp(logx) + exp(logy)).
Real LogAdd(Real logx, Real logy) {
  const Real a = std::fmin(logx, logy);
  const Real b = std::fmax(logx, logy);
  if (a == -kInf) return b;
  return std::log1p(std::exp(a - b)) + b;
}

// log(exp(logx) - exp(logy)); NaN when the difference would be negative (a numerical failure
// that the ε conversion then skips instead of trusting).
Real LogSub(Real logx, Real logy) {
  if (logx < logy) return kNan;
  if (logy == -kInf) return logx;
  if (logx == logy) return -kInf;
  const Real diff = std::expm1(logx - logy);
  if (std::isinf(diff)) return logx;
  return std::log(diff) + logy;
}

// log(erfc(x)), accurate where erfc(x) underflows.
Real LogErfc(Real x) {
  if (x < 50) return std::log(std::erfc(x));
  // Asymptotic expansion (the one TF Privacy falls back to); the next term is O(x^-10).
  const Real x2 = x * x;
  return -std::log(static_cast<Real>(M_PI)) / 2 - std::log(x) - x2 - 0.5L / x2 +
         0.625L / (x2 * x2) - 37.0L / 24.0L / (x2 * x2 * x2) + 353.0L / 64.0L / (x2 * x2 * x2 * x2);
}

// log(A_alpha) for integer alpha: the finite binomial expansion.
Real LogAInt(Real q, Real sigma, int alpha) {
  Real log_a = -kInf;
  const Real log_q = std::log(q);
  const Real log_1mq = std::log1p(-q);
  const Real lgamma_alpha = std::lgamma(static_cast<Real>(alpha) + 1);
  for (int i = 0; i <= alpha; ++i) {
    const Real log_binom = lgamma_alpha - std::lgamma(static_cast<Real>(i) + 1) -
                           std::lgamma(static_cast<Real>(alpha - i) + 1);
    const Real term = log_binom + i * log_q + (alpha - i) * log_1mq +
                      static_cast<Real>(i) * (i - 1) / (2 * sigma * sigma);
    log_a = LogAdd(log_a, term);
  }
  return log_a;
}

// log(A_alpha) for fractional alpha: two infinite series with signed generalised binomial
// coefficients, summed until both terms drop below e^-30 (as the reference implementations do).
Real LogAFrac(Real q, Real sigma, Real alpha) {
  Real log_a0 = -kInf;
  Real log_a1 = -kInf;
  const Real log_q = std::log(q);
  const Real log_1mq = std::log1p(-q);
  const Real z0 = sigma * sigma * std::log(1 / q - 1) + 0.5L;
  const Real erfc_scale = std::sqrt(static_cast<Real>(2)) * sigma;
  const Real log_half = std::log(static_cast<Real>(0.5));
  Real log_coef = 0;     // log|C(alpha, i)|
  bool positive = true;  // sign of C(alpha, i)
  for (int i = 0;; ++i) {
    const Real j = alpha - i;
    const Real log_t0 = log_coef + i * log_q + j * log_1mq;
    const Real log_t1 = log_coef + j * log_q + i * log_1mq;
    const Real log_e0 = log_half + LogErfc((i - z0) / erfc_scale);
    const Real log_e1 = log_half + LogErfc((z0 - j) / erfc_scale);
    const Real log_s0 = log_t0 + static_cast<Real>(i) * (i - 1) / (2 * sigma * sigma) + log_e0;
    const Real log_s1 = log_t1 + j * (j - 1) / (2 * sigma * sigma) + log_e1;
    if (positive) {
      log_a0 = LogAdd(log_a0, log_s0);
      log_a1 = LogAdd(log_a1, log_s1);
    } else {
      log_a0 = LogSub(log_a0, log_s0);
      log_a1 = LogSub(log_a1, log_s1);
    }
    if (std::fmax(log_s0, log_s1) < -30 || std::isnan(log_a0) || std::isnan(log_a1)) break;
    // C(alpha, i + 1) = C(alpha, i) * (alpha - i) / (i + 1).
    log_coef += std::log(std::fabs(alpha - i)) - std::log(static_cast<Real>(i) + 1);
    if (alpha - i < 0) positive = !positive;
  }
  return LogAdd(log_a0, log_a1);
}

// RDP at one order of one step; NaN for parameters outside q in [0, 1], sigma >= 0, order > 1.
Real OneStepRdp(Real q, Real sigma, Real order) {
  if (!(q >= 0 && q <= 1 && sigma >= 0 && order > 1)) return kNan;
  if (q == 0) return 0;
  if (sigma == 0) return kInf;
  if (q == 1) return order / (2 * sigma * sigma);
  if (std::isinf(order)) return kInf;
  if (std::floor(order) == order && order <= std::numeric_limits<int>::max()) {
    return LogAInt(q, sigma, static_cast<int>(order)) / (order - 1);
  }
  return LogAFrac(q, sigma, order) / (order - 1);
}

absl::Status CheckDelta(double delta) {
  if (!(delta > 0 && delta < 1)) {
    return absl::InvalidArgumentError(absl::StrCat("delta must be in (0, 1), got ", delta));
  }
  return absl::OkStatus();
}

}  // namespace

const std::vector<double>& DefaultRdpOrders() {
  static const auto* orders = [] {
    auto* v = new std::vector<double>();
    // Built exactly like Opacus' DEFAULT_ALPHAS (1 + x / 10.0) so the orders are bit-identical.
    for (int x = 1; x < 100; ++x) v->push_back(1 + x / 10.0);
    for (int a = 12; a < 64; ++a) v->push_back(a);
    return v;
  }();
  return *orders;
}

std::vector<double> SubsampledGaussianRdp(double q, double sigma,
                                          const std::vector<double>& orders) {
  std::vector<double> rdp;
  rdp.reserve(orders.size());
  for (double order : orders) rdp.push_back(static_cast<double>(OneStepRdp(q, sigma, order)));
  return rdp;
}

RdpAccountant::RdpAccountant(std::vector<double> orders)
    : orders_(std::move(orders)), rdp_(orders_.size(), 0.0) {}

void RdpAccountant::AddSteps(double q, double sigma, uint64_t steps) {
  // A curve of the wrong length (from set_rdp) is poisoned rather than silently realigned.
  if (rdp_.size() != orders_.size()) rdp_.assign(orders_.size(), std::nan(""));
  if (steps == 0) return;
  for (size_t k = 0; k < orders_.size(); ++k) {
    const Real one = OneStepRdp(q, sigma, orders_[k]);
    rdp_[k] = static_cast<double>(rdp_[k] + one * static_cast<Real>(steps));
  }
}

absl::StatusOr<double> RdpAccountant::Epsilon(double delta, double* best_order) const {
  if (auto s = CheckDelta(delta); !s.ok()) return s;
  if (rdp_.size() != orders_.size()) {
    return absl::FailedPreconditionError(
        absl::StrCat("RDP curve has ", rdp_.size(), " values for ", orders_.size(), " orders"));
  }
  Real best = kInf;
  double best_alpha = std::nan("");
  bool any_number = false;
  for (size_t k = 0; k < orders_.size(); ++k) {
    const Real a = orders_[k];
    if (!(a > 1)) {
      return absl::FailedPreconditionError(
          absl::StrCat("RDP order must exceed 1, got ", orders_[k]));
    }
    // Balle et al. 2020, Theorem 21 (Opacus get_privacy_spent).
    const Real eps = rdp_[k] - (std::log(static_cast<Real>(delta)) + std::log(a)) / (a - 1) +
                     std::log((a - 1) / a);
    if (std::isnan(eps)) continue;
    any_number = true;
    if (std::isfinite(eps) && eps < best) {
      best = eps;
      best_alpha = orders_[k];
    }
  }
  if (!any_number && !orders_.empty()) {
    return absl::FailedPreconditionError("RDP curve is NaN at every order (invalid q or sigma?)");
  }
  if (best_order != nullptr) *best_order = best_alpha;
  // A negative bound (possible only for δ near 1) still certifies ε = 0.
  return std::fmax(0.0, static_cast<double>(best));
}

absl::StatusOr<double> ComputeEpsilon(double q, double sigma, uint64_t steps, double delta) {
  if (!(q >= 0 && q <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat("sample rate q must be in [0, 1], got ", q));
  }
  if (!(sigma >= 0) || std::isinf(sigma)) {
    return absl::InvalidArgumentError(
        absl::StrCat("noise multiplier sigma must be finite and >= 0, got ", sigma));
  }
  if (auto s = CheckDelta(delta); !s.ok()) return s;
  RdpAccountant accountant;
  accountant.AddSteps(q, sigma, steps);
  return accountant.Epsilon(delta);
}

absl::StatusOr<double> CalibrateNoise(double q, uint64_t steps, double target_epsilon,
                                      double delta) {
  if (!(q > 0 && q <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat("sample rate q must be in (0, 1], got ", q));
  }
  if (steps == 0) return absl::InvalidArgumentError("steps must be at least 1");
  if (!(target_epsilon > 0) || std::isinf(target_epsilon)) {
    return absl::InvalidArgumentError(
        absl::StrCat("target epsilon must be finite and > 0, got ", target_epsilon));
  }
  if (auto s = CheckDelta(delta); !s.ok()) return s;
  // Opacus get_noise_multiplier: double σ from 20 until ε fits, then bisect until ε is within
  // the tolerance below the target. Returns the upper end, so ε(σ) <= target always holds.
  constexpr double kTolerance = 0.01;
  double sigma_low = 0, sigma_high = 10, eps_high = std::numeric_limits<double>::infinity();
  while (eps_high > target_epsilon) {
    sigma_high *= 2;
    auto eps = ComputeEpsilon(q, sigma_high, steps, delta);
    if (!eps.ok()) return eps.status();
    eps_high = *eps;
    if (sigma_high > kMaxSigma && eps_high > target_epsilon) {
      return absl::OutOfRangeError(absl::StrCat("target epsilon ", target_epsilon,
                                                " is unreachable at delta ", delta, ": sigma ",
                                                sigma_high, " still gives epsilon ", eps_high));
    }
  }
  while (target_epsilon - eps_high > kTolerance) {
    const double sigma = (sigma_low + sigma_high) / 2;
    auto eps = ComputeEpsilon(q, sigma, steps, delta);
    if (!eps.ok()) return eps.status();
    if (*eps < target_epsilon) {
      sigma_high = sigma;
      eps_high = *eps;
    } else {
      sigma_low = sigma;
    }
  }
  return sigma_high;
}

}  // namespace fl
