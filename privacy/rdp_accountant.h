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
// at each order in `orders`: 0 when q == 0, +inf when sigma == 0, NaN for q outside [0, 1],
// sigma < 0 or an order <= 1.
std::vector<double> SubsampledGaussianRdp(double q, double sigma,
                                          const std::vector<double>& orders);

// An RDP curve that composes by addition: exact over rounds and across jobs of different (q, σ).
class RdpAccountant {
 public:
  explicit RdpAccountant(std::vector<double> orders = DefaultRdpOrders());
  void AddSteps(double q, double sigma, uint64_t steps);
  const std::vector<double>& orders() const { return orders_; }
  const std::vector<double>& rdp() const { return rdp_; }
  void set_rdp(std::vector<double> rdp) { rdp_ = std::move(rdp); }
  // ε at `delta` (the Balle et al. 2020 bound, minimised over the orders where it is finite) and
  // the order that gives it; +inf (order NaN) when no order gives a finite bound. Fails when the
  // curve is NaN everywhere (invalid q or sigma was added) or does not match the orders.
  absl::StatusOr<double> Epsilon(double delta, double* best_order = nullptr) const;

 private:
  std::vector<double> orders_;
  std::vector<double> rdp_;
};

// ε after `steps` steps at (q, sigma); +inf when sigma == 0. INVALID_ARGUMENT naming the argument
// for q outside [0, 1], sigma < 0 or infinite, delta outside (0, 1).
absl::StatusOr<double> ComputeEpsilon(double q, double sigma, uint64_t steps, double delta);

// The smallest σ (to 0.01 in ε) whose ε after `steps` steps at q is at most target_epsilon
// (Opacus get_noise_multiplier, epsilon_tolerance 0.01). INVALID_ARGUMENT naming the argument for
// q outside (0, 1], steps == 0, target_epsilon <= 0, delta outside (0, 1); OUT_OF_RANGE when no
// σ up to 1e6 reaches the target (the orders put a floor under ε at each δ).
absl::StatusOr<double> CalibrateNoise(double q, uint64_t steps, double target_epsilon,
                                      double delta);

}  // namespace fl
