// How a process that trains reuses freed memory.
#pragma once

namespace fl {

// Keeps freed memory in the process for reuse instead of returning it to the kernel at once.
// A training step allocates and frees activations and gradients of tens of MiB each; glibc
// serves such blocks with fresh mmaps, so every step would fault in (and zero) every page again,
// which measured 2-3x the time of a whole non-private CPU step (fl-bench dp). Call once at
// start-up, before other threads run.
void RetainFreedMemory();

// Returns the memory kept by RetainFreedMemory to the kernel, e.g. when a task is done.
void ReleaseFreedMemory();

}  // namespace fl
