// How the daemons give freed memory back to the system (glibc malloc settings). Call one policy
// once at start-up, before other threads run.
#pragma once

namespace fl {

// fl-coordinator: whole-model buffers (global weights, sums, moments) are mmapped and given back
// to the system when freed. By default glibc raises its mmap threshold after such a free, after
// which multi-MiB tensors come from the heap and freed ones stay resident. A high trim threshold
// keeps the chunk-sized buffers of transfers in the heap instead of growing and shrinking it on
// every message.
void ReturnFreedModels();

// fl-client: keeps freed memory in the process for reuse instead of returning it at once. A
// training step allocates and frees activations and gradients of tens of MiB each; glibc serves
// such blocks with fresh mmaps, so every step would fault in (and zero) every page again, which
// measured 2-3x the time of a whole non-private CPU step (fl-bench dp).
void RetainFreedMemory();

// Returns the memory kept by RetainFreedMemory to the system, e.g. when a task is done.
void ReleaseFreedMemory();

}  // namespace fl
