#include "models/gram.h"

#ifdef FL_HAVE_DNNL
#include <oneapi/dnnl/dnnl.h>
#endif

namespace fl {

bool CpuGram(const float* a, int64_t n, int64_t t, int64_t f, float* out) {
#ifdef FL_HAVE_DNNL
  for (int64_t i = 0; i < n; ++i) {
    const float* ai = a + i * t * f;
    if (dnnl_sgemm('N', 'T', t, t, f, 1.0f, ai, f, ai, f, 0.0f, out + i * t * t, t) !=
        dnnl_success) {
      return false;
    }
  }
  return true;
#else
  (void)a, (void)n, (void)t, (void)f, (void)out;
  return false;
#endif
}

}  // namespace fl
