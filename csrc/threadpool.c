/* threadpool.c: a persistent pool of worker threads running chunked jobs (see threadpool.h).
 *
 * Workers are created once, by pyphi_pool_create. Between jobs they spin for a short while (a
 * decode step posts jobs microseconds apart, and waking a sleeping thread costs tens of
 * microseconds), then sleep on a condition variable so an idle pool costs no CPU. The caller of
 * pyphi_pool_run works on the job too and waits the same way for the workers to finish.
 * ggml's thread pool works the same way (atomic chunk counter, spin then sleep). No OpenMP.
 */
#include "threadpool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>

/* The one architecture-specific line: a spin-wait hint, so a spinning thread yields pipeline
 * resources to its SMT sibling. Elsewhere spinning is a plain loop. */
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
static inline void cpu_relax(void) { _mm_pause(); }
#else
static inline void cpu_relax(void) {}
#endif

/* Spin iterations before sleeping: a few tens of microseconds of PAUSE on current x86 cores
 * (PAUSE takes roughly 10-150 cycles depending on the core). */
#define SPIN_ITERATIONS 2048
#define MAX_THREADS 1024

struct worker {
    pyphi_pool *pool;
    int index; /* 1 .. n_threads - 1; the caller of pyphi_pool_run is thread 0 */
    pthread_t thread;
};

struct pyphi_pool {
    int n_threads;
    struct worker *workers; /* (n_threads - 1,) */
    pthread_mutex_t run_lock; /* one job at a time, even if several threads share the pool */
    pthread_mutex_t mutex;
    pthread_cond_t wake; /* broadcast when a job is posted, or at shutdown */
    pthread_cond_t done; /* signalled by the last worker to finish a job */

    /* The current job: written by the caller before it bumps `generation` (release), read by
     * workers after they see the new generation (acquire). */
    pyphi_chunk_fn fn;
    void *ctx;
    int64_t n_chunks;
    atomic_int_fast64_t next_chunk;
    atomic_int pending; /* workers not yet finished with the current job */
    atomic_uint generation;
    atomic_bool stop;
};

static void run_chunks(pyphi_pool *pool, int thread) {
    for (;;) {
        int64_t chunk = atomic_fetch_add_explicit(&pool->next_chunk, 1, memory_order_relaxed);
        if (chunk >= pool->n_chunks) {
            return;
        }
        pool->fn(pool->ctx, chunk, thread);
    }
}

/* Waits until a job newer than `seen` is posted (returns its generation) or the pool stops. */
static unsigned wait_for_job(pyphi_pool *pool, unsigned seen) {
    for (int i = 0; i < SPIN_ITERATIONS; i++) {
        unsigned gen = atomic_load_explicit(&pool->generation, memory_order_acquire);
        if (gen != seen || atomic_load_explicit(&pool->stop, memory_order_acquire)) {
            return gen;
        }
        cpu_relax();
    }
    pthread_mutex_lock(&pool->mutex);
    unsigned gen;
    while ((gen = atomic_load_explicit(&pool->generation, memory_order_acquire)) == seen &&
           !atomic_load_explicit(&pool->stop, memory_order_acquire)) {
        pthread_cond_wait(&pool->wake, &pool->mutex);
    }
    pthread_mutex_unlock(&pool->mutex);
    return gen;
}

static void *worker_main(void *arg) {
    struct worker *self = arg;
    pyphi_pool *pool = self->pool;
    unsigned seen = 0;
    for (;;) {
        seen = wait_for_job(pool, seen);
        if (atomic_load_explicit(&pool->stop, memory_order_acquire)) {
            return NULL;
        }
        run_chunks(pool, self->index);
        /* acq_rel: our chunk results happen-before the caller's acquire load of `pending` */
        if (atomic_fetch_sub_explicit(&pool->pending, 1, memory_order_acq_rel) == 1) {
            pthread_mutex_lock(&pool->mutex);
            pthread_cond_signal(&pool->done);
            pthread_mutex_unlock(&pool->mutex);
        }
    }
}

static void wait_for_workers(pyphi_pool *pool) {
    for (int i = 0; i < SPIN_ITERATIONS; i++) {
        if (atomic_load_explicit(&pool->pending, memory_order_acquire) == 0) {
            return;
        }
        cpu_relax();
    }
    pthread_mutex_lock(&pool->mutex);
    while (atomic_load_explicit(&pool->pending, memory_order_acquire) != 0) {
        pthread_cond_wait(&pool->done, &pool->mutex);
    }
    pthread_mutex_unlock(&pool->mutex);
}

void pyphi_pool_run(pyphi_pool *pool, pyphi_chunk_fn fn, void *ctx, int64_t n_chunks) {
    if (pool == NULL || pool->n_threads == 1 || n_chunks <= 1) {
        for (int64_t chunk = 0; chunk < n_chunks; chunk++) {
            fn(ctx, chunk, 0);
        }
        return;
    }
    pthread_mutex_lock(&pool->run_lock);
    pool->fn = fn;
    pool->ctx = ctx;
    pool->n_chunks = n_chunks;
    atomic_store_explicit(&pool->next_chunk, 0, memory_order_relaxed);
    atomic_store_explicit(&pool->pending, pool->n_threads - 1, memory_order_relaxed);
    /* bump under the mutex so a worker about to sleep cannot miss the broadcast */
    pthread_mutex_lock(&pool->mutex);
    atomic_fetch_add_explicit(&pool->generation, 1, memory_order_release);
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->mutex);

    run_chunks(pool, 0);
    wait_for_workers(pool);
    pthread_mutex_unlock(&pool->run_lock);
}

/* Stops and joins the first n_started workers, then frees the pool. */
static void pool_shutdown(pyphi_pool *pool, int n_started) {
    pthread_mutex_lock(&pool->mutex);
    atomic_store_explicit(&pool->stop, true, memory_order_release);
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->mutex);
    for (int i = 0; i < n_started; i++) {
        pthread_join(pool->workers[i].thread, NULL);
    }
    pthread_cond_destroy(&pool->done);
    pthread_cond_destroy(&pool->wake);
    pthread_mutex_destroy(&pool->mutex);
    pthread_mutex_destroy(&pool->run_lock);
    free(pool->workers);
    free(pool);
}

pyphi_pool *pyphi_pool_create(int n_threads) {
    if (n_threads < 1 || n_threads > MAX_THREADS) {
        return NULL;
    }
    pyphi_pool *pool = calloc(1, sizeof *pool);
    if (pool == NULL) {
        return NULL;
    }
    pool->workers = calloc((size_t)n_threads, sizeof *pool->workers);
    if (pool->workers == NULL) {
        free(pool);
        return NULL;
    }
    pool->n_threads = n_threads;
    pthread_mutex_init(&pool->run_lock, NULL);
    pthread_mutex_init(&pool->mutex, NULL);
    pthread_cond_init(&pool->wake, NULL);
    pthread_cond_init(&pool->done, NULL);
    atomic_init(&pool->next_chunk, 0);
    atomic_init(&pool->pending, 0);
    atomic_init(&pool->generation, 0);
    atomic_init(&pool->stop, false);
    for (int i = 0; i < n_threads - 1; i++) {
        pool->workers[i].pool = pool;
        pool->workers[i].index = i + 1;
        if (pthread_create(&pool->workers[i].thread, NULL, worker_main, &pool->workers[i]) != 0) {
            pool_shutdown(pool, i);
            return NULL;
        }
    }
    return pool;
}

void pyphi_pool_destroy(pyphi_pool *pool) {
    if (pool != NULL) {
        pool_shutdown(pool, pool->n_threads - 1);
    }
}

int pyphi_pool_size(const pyphi_pool *pool) {
    return pool == NULL ? 1 : pool->n_threads; /* NULL: the caller alone, as pyphi_pool_run */
}
