#!/usr/bin/python3
"""Reference values for privacy/rdp_accountant_test.cc.

A plain-Python (standard library only: no numpy, scipy or mpmath) transcription of the
Opacus / TF Privacy RDP accountant for the Poisson-subsampled Gaussian mechanism
(opacus/accountants/analysis/rdp.py: _compute_log_a_for_int_alpha,
_compute_log_a_for_frac_alpha, _log_erfc, _compute_rdp, get_privacy_spent) and of Opacus'
get_noise_multiplier. It is written independently of the C++ code so that the numbers the
C++ tests pin come from a second implementation.

Run:  /usr/bin/python3 privacy/reference_rdp.py [--quad]

--quad additionally evaluates the one-step RDP from its definition,
log(E_{z~N(0,s^2)}[(1 - q + q exp((2z - 1) / (2 s^2)))^alpha]) / (alpha - 1), by 40-digit
quadrature (needs mpmath). That is the arbiter where the double-precision series above lose
digits to cancellation (tiny q, where log A is ~1e-10).
"""

import math
import sys

# Opacus DEFAULT_ALPHAS, built the same way so the float orders are bit-identical.
DEFAULT_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))


def log_add(logx, logy):
    a, b = min(logx, logy), max(logx, logy)
    if a == -math.inf:
        return b
    return math.log1p(math.exp(a - b)) + b


def log_sub(logx, logy):
    if logx < logy:
        raise ValueError("log_sub: result would be negative")
    if logy == -math.inf:
        return logx
    if logx == logy:
        return -math.inf
    try:
        return math.log(math.expm1(logx - logy)) + logy
    except OverflowError:
        return logx


def log_erfc(x):
    r = math.erfc(x)
    if r == 0.0:
        # Asymptotic expansion used by TF Privacy when erfc underflows.
        return (-math.log(math.pi) / 2 - math.log(x) - x**2 - .5 * x**-2 +
                .625 * x**-4 - 37. / 24. * x**-6 + 353. / 64. * x**-8)
    return math.log(r)


def gen_binom(alpha, i):
    """Generalised binomial coefficient C(alpha, i) for real alpha."""
    c = 1.0
    for k in range(i):
        c *= (alpha - k) / (k + 1)
    return c


def log_a_int(q, sigma, alpha):
    log_a = -math.inf
    for i in range(alpha + 1):
        log_coef_i = (math.log(math.comb(alpha, i)) + i * math.log(q) +
                      (alpha - i) * math.log(1 - q))
        s = log_coef_i + (i * i - i) / (2 * sigma**2)
        log_a = log_add(log_a, s)
    return log_a


def log_a_frac(q, sigma, alpha):
    log_a0, log_a1 = -math.inf, -math.inf
    i = 0
    z0 = sigma**2 * math.log(1 / q - 1) + .5
    while True:
        coef = gen_binom(alpha, i)
        log_coef = math.log(abs(coef))
        j = alpha - i
        log_t0 = log_coef + i * math.log(q) + j * math.log(1 - q)
        log_t1 = log_coef + j * math.log(q) + i * math.log(1 - q)
        log_e0 = math.log(.5) + log_erfc((i - z0) / (math.sqrt(2) * sigma))
        log_e1 = math.log(.5) + log_erfc((z0 - j) / (math.sqrt(2) * sigma))
        log_s0 = log_t0 + (i * i - i) / (2 * sigma**2) + log_e0
        log_s1 = log_t1 + (j * j - j) / (2 * sigma**2) + log_e1
        if coef > 0:
            log_a0 = log_add(log_a0, log_s0)
            log_a1 = log_add(log_a1, log_s1)
        else:
            log_a0 = log_sub(log_a0, log_s0)
            log_a1 = log_sub(log_a1, log_s1)
        i += 1
        if max(log_s0, log_s1) < -30:
            break
    return log_add(log_a0, log_a1)


def rdp_one_step(q, sigma, alpha):
    if q == 0:
        return 0.0
    if sigma == 0:
        return math.inf
    if q == 1.0:
        return alpha / (2 * sigma**2)
    if float(alpha).is_integer():
        return log_a_int(q, sigma, int(alpha)) / (alpha - 1)
    return log_a_frac(q, sigma, alpha) / (alpha - 1)


def rdp_curve(q, sigma, steps, orders=DEFAULT_ORDERS):
    return [rdp_one_step(q, sigma, a) * steps for a in orders]


def privacy_spent(orders, rdp, delta):
    """Balle et al. 2020 conversion, as Opacus get_privacy_spent: (eps, best order)."""
    best = (math.inf, math.nan)
    for a, r in zip(orders, rdp):
        eps = r - (math.log(delta) + math.log(a)) / (a - 1) + math.log((a - 1) / a)
        if not math.isnan(eps) and eps < best[0]:
            best = (eps, a)
    return best


def epsilon(q, sigma, steps, delta):
    return privacy_spent(DEFAULT_ORDERS, rdp_curve(q, sigma, steps), delta)


def noise_multiplier(q, steps, target_eps, delta, tol=0.01):
    """Opacus get_noise_multiplier (accountant='rdp')."""
    eps_high = math.inf
    sigma_low, sigma_high = 0.0, 10.0
    while eps_high > target_eps:
        sigma_high *= 2
        eps_high = epsilon(q, sigma_high, steps, delta)[0]
        if sigma_high > 1e6:
            raise ValueError("privacy budget too low")
    while target_eps - eps_high > tol:
        sigma = (sigma_low + sigma_high) / 2
        eps = epsilon(q, sigma, steps, delta)[0]
        if eps < target_eps:
            sigma_high, eps_high = sigma, eps
        else:
            sigma_low = sigma
    return sigma_high


def rdp_by_quadrature(q, sigma, alpha):
    import mpmath as mp  # only for --quad
    mp.mp.dps = 40
    q, s, a = mp.mpf(q), mp.mpf(sigma), mp.mpf(alpha)
    f = lambda z: mp.npdf(z, 0, s) * (1 - q + q * mp.exp((2 * z - 1) / (2 * s * s)))**a
    area = mp.quad(f, [-mp.inf, -10 * s, 0, 0.5, 1, 10 * s + 1, mp.inf])
    return float(mp.log(area) / (a - 1))


def main():
    print("# one-step RDP at single orders: (q, sigma, order) -> rdp")
    for q, sigma, order in [(0.04, 1.5, 3.9), (0.04, 1.5, 4.0), (0.01, 0.8, 2.5),
                            (0.01, 0.8, 32.0), (1e-5, 1.0, 1.5), (1e-5, 1.0, 10.0),
                            (0.5, 5.0, 7.3), (1.0, 2.0, 5.5), (0.1, 50.0, 63.0)]:
        line = f"  q={q!r} sigma={sigma!r} order={order!r}: {rdp_one_step(q, sigma, order)!r}"
        if "--quad" in sys.argv[1:]:
            line += f"  (quadrature: {rdp_by_quadrature(q, sigma, order)!r})"
        print(line)
    print("# epsilon over the default orders: (q, sigma, steps, delta) -> (eps, order)")
    for q, sigma, steps, delta in [(0.04, 1.5, 2250, 1e-5), (0.01, 1.1, 10000, 1e-5),
                                   (1.0, 3.0, 10, 1e-6), (1e-4, 0.9, 1000, 1e-5),
                                   (0.02, 20.0, 500, 1e-5), (0.256, 0.7, 100, 1e-3)]:
        eps, order = epsilon(q, sigma, steps, delta)
        print(f"  q={q!r} sigma={sigma!r} steps={steps} delta={delta!r}: {eps!r} @ {order!r}")
    print("# composition: (0.04,1.5,1000) then (0.01,0.9,3000), delta=1e-5")
    curve = [a + b for a, b in zip(rdp_curve(0.04, 1.5, 1000), rdp_curve(0.01, 0.9, 3000))]
    print(f"  {privacy_spent(DEFAULT_ORDERS, curve, 1e-5)!r}")
    print("# noise calibration: (q, steps, target eps, delta) -> sigma")
    for q, steps, eps, delta in [(0.04, 2250, 8.0, 1e-5), (0.01, 5000, 1.0, 1e-5)]:
        print(f"  q={q!r} steps={steps} eps={eps!r} delta={delta!r}: "
              f"{noise_multiplier(q, steps, eps, delta)!r}")


if __name__ == "__main__":
    main()
