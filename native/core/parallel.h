// Process-wide CPU thread pool.
//
// One pool serves every caller. parallel_for is re-entrant: when the pool is already running a
// job (another libuv worker got there first, or a kernel calls parallel_for from inside a task),
// the call runs its range inline on the calling thread instead of waiting, so there is no deadlock
// and no oversubscription.
#pragma once
#include <cstdint>
#include <functional>

namespace mvq {

// Number of threads parallel_for may use (the caller counts as one). Starts at
// MERGEVQ_NUM_THREADS when set, else the number of CPUs this process may run on.
int num_threads();
// Sets the thread count (>= 1). Takes effect for the next parallel_for.
void set_num_threads(int n);

// Runs fn(task, thread) for task in [0, ntasks), spread over the pool. `thread` is in
// [0, num_threads()) and is unique among tasks running at the same moment, so it can index
// per-thread scratch buffers. Exceptions thrown by fn are captured and the first is rethrown on
// the calling thread after every task has finished.
void parallel_tasks(int64_t ntasks, const std::function<void(int64_t task, int thread)>& fn);

// Splits [0, n) into contiguous chunks of at least `grain` elements and runs fn(begin, end) on each.
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t begin, int64_t end)>& fn);

}  // namespace mvq
