// Rényi-DP accountant for the Poisson-subsampled Gaussian mechanism, with the tight RDP to
// (ε, δ) conversion of Balle et al. 2020. Agrees with the reference implementations (Opacus,
// TF Privacy) to 1e-6 relative. Torch-free.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace fl {

// The usual orders: 1.1, 1.2, ..., 10.9, 12, 13, ..., 63.
const std::vector<double>& DefaultRdpOrders();

// RDP of one step of the subsampled Gaussian with sample rate q and noise multiplier sigma,
// at each order in `orders`.
std::vector<double> SubsampledGaussianRdp(double q, double sigma, const std::vector<double>& orders);

// An RDP curve that composes by addition: exact over rounds and across jobs of different (q, σ).
class RdpAccountant {
 public:
  explicit RdpAccountant(std::vector<double> orders = DefaultRdpOrders());
  void AddSteps(double q, double sigma, uint64_t steps);
  const std::vector<double>& orders() const { return orders_; }
  const std::vector<double>& rdp() const { return rdp_; }
  void set_rdp(std::vector<double> rdp) { rdp_ = std::move(rdp); }
  // ε at `delta` and the order that gives it.
  absl::StatusOr<double> Epsilon(double delta, double* best_order = nullptr) const;

 private:
  std::vector<double> orders_;
  std::vector<double> rdp_;
};

// ε after `steps` steps at (q, sigma).
absl::StatusOr<double> ComputeEpsilon(double q, double sigma, uint64_t steps, double delta);

// The smallest σ (to 0.01 in ε) whose ε after `steps` steps at q is at most target_epsilon.
absl::StatusOr<double> CalibrateNoise(double q, uint64_t steps, double target_epsilon,
                                      double delta);

}  // namespace fl
