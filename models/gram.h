// Per-sample Gram matrices on the CPU without the system BLAS (torch-free).
#pragma once

#include <cstdint>

namespace fl {

// out[i] = a[i] a[i]^T for n row-major t x f matrices a[i] (out: n row-major t x t matrices),
// with oneDNN's sgemm: the JIT kernels LibTorch's CPU convolutions run on. LibTorch's own bmm goes
// through the system BLAS, Debian's reference implementation by default, which made the ghost
// norms the largest part of a DP-SGD step. False when built without oneDNN's headers.
bool CpuGram(const float* a, int64_t n, int64_t t, int64_t f, float* out);

}  // namespace fl
