/* threadpool.h: the internal API of the persistent thread pool (threadpool.c).
 *
 * A job is a function run over a count of chunks: every thread of the pool, the caller's
 * included, takes the next chunk index from one shared atomic counter until none are left, so
 * uneven chunks balance themselves. pyphi_pool_run returns only when every chunk has finished,
 * which makes each run a barrier: the next run (or the caller) sees all of its writes.
 * The pool knows nothing about what a chunk means.
 */
#ifndef PYPHI_THREADPOOL_H
#define PYPHI_THREADPOOL_H

#include "pyphi.h"

/* Processes chunk `chunk` (0 <= chunk < n_chunks) of a job. `thread` (0 = the caller, up to
 * pool size - 1) names the thread running it, e.g. to pick a per-thread scratch buffer; which
 * thread gets which chunk varies from run to run, so results must not depend on it. */
typedef void (*pyphi_chunk_fn)(void *ctx, int64_t chunk, int thread);

/* Runs fn over chunks [0, n_chunks) on the pool and waits for all of them. pool may be NULL: the
 * caller then runs every chunk itself, as thread 0. Several threads may share a pool: their jobs
 * run one after the other. A chunk must not run a job on its own pool (that would deadlock). */
void pyphi_pool_run(pyphi_pool *pool, pyphi_chunk_fn fn, void *ctx, int64_t n_chunks);

#endif /* PYPHI_THREADPOOL_H */
