#include "common/memory.h"

#include <malloc.h>

namespace fl {

void ReturnFreedModels() {
  mallopt(M_MMAP_THRESHOLD, 2 << 20);
  mallopt(M_TRIM_THRESHOLD, 32 << 20);
}

void RetainFreedMemory() {
  mallopt(M_MMAP_MAX, 0);         // large blocks come from the heap, where freed ones are reused
  mallopt(M_TRIM_THRESHOLD, -1);  // never trim on free; ReleaseFreedMemory trims
}

void ReleaseFreedMemory() { malloc_trim(0); }

}  // namespace fl
