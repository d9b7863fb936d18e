/* huge_pages.c: putting a large long-lived buffer on transparent huge pages without making its
 * first fill slow.
 *
 * Decode streams packed matrices 2-4% faster from 2 MiB pages than from 4 KiB ones on one thread
 * and 7-20% on two (TLB misses; full-size q4_0 on the benchmark's VM). But a fresh 2 MiB page is
 * zeroed whole at its first touch, and where the memory comes back from a hypervisor (a VM whose
 * host reclaims freed guest memory, as free page reporting does) that runs at 0.4-0.7 GB/s:
 * gigabytes of packed weights then take seconds. So the buffer is filled on a thread of its own
 * (its owner goes on without it meanwhile), advised MADV_HUGEPAGE, and the filler times the
 * faults of each piece it writes:
 * - fast (bare metal: several GB/s): huge pages to the end;
 * - at the first slow piece, the rest of the buffer is filled in 4 KiB pages (MADV_NOHUGEPAGE),
 *   faster there, and once full the same thread moves it onto huge pages (MADV_COLLAPSE) while
 *   the owner is idle (between a chat's turns, a server's requests). The first pieces of a fill often
 *   come fast, from memory another process has just freed, and the rest slowly; hence a check per
 *   piece rather than one probe. Collapsing during an eval took a third off a prefill, the copy
 *   and the stalled reads of each page competing with it. The thread runs at nice 19, so other
 *   processes' work comes first too.
 */
#include "huge_pages.h"

#include <stdint.h>
#include <stdlib.h>

#if defined(__linux__)
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25 /* Linux 6.1 uapi; older kernels answer EINVAL */
#endif

#define FAST_FAULTS_BYTES_PER_S 2e9

static double seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

void pyphi_huge_pages_advise(void *p, size_t bytes) {
    madvise(p, bytes, MADV_HUGEPAGE);
}

int pyphi_fault_in_timed(void *p, size_t bytes) {
    volatile unsigned char *buffer = p;
    double start = seconds();
    for (size_t off = 0; off < bytes; off += 4096) {
        buffer[off] = 0; /* the first write to a page faults it in */
    }
    return (double)bytes >= FAST_FAULTS_BYTES_PER_S * (seconds() - start);
}

void pyphi_huge_pages_decline(void *p, void *end) {
    uintptr_t first = ((uintptr_t)p + PYPHI_HUGE_PAGE - 1) / PYPHI_HUGE_PAGE * PYPHI_HUGE_PAGE;
    if ((uintptr_t)end > first) {
        madvise((void *)first, (uintptr_t)end - first, MADV_NOHUGEPAGE);
    }
}

struct pyphi_filler {
    unsigned char *p; /* (bytes,) 2 MiB aligned */
    size_t bytes;
    pyphi_fill_fn fill;
    void *ctx;
    atomic_bool stop;
    atomic_int busy;
    pthread_t thread;
};

static void collapse_pages(pyphi_filler *f) {
    /* on Linux a thread has its own nice value, addressed by its thread id */
    setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 19);
    madvise(f->p, f->bytes, MADV_HUGEPAGE); /* MADV_COLLAPSE skips MADV_NOHUGEPAGE ranges */
    const struct timespec idle_poll = {0, 10 * 1000 * 1000}; /* 10 ms */
    for (size_t off = 0; off + PYPHI_HUGE_PAGE <= f->bytes; off += PYPHI_HUGE_PAGE) {
        while (atomic_load(&f->busy) && !atomic_load(&f->stop)) {
            nanosleep(&idle_poll, NULL);
        }
        if (atomic_load(&f->stop)) {
            break;
        }
        /* EAGAIN / ENOMEM: no free huge page now, that page stays small; EINVAL: THP is off
         * for this process or the kernel predates MADV_COLLAPSE, so no page will succeed */
        if (madvise(f->p + off, PYPHI_HUGE_PAGE, MADV_COLLAPSE) != 0 && errno == EINVAL) {
            break;
        }
    }
}

static void *fill_then_collapse(void *arg) {
    pyphi_filler *f = arg;
    if (f->fill(f->ctx, &f->stop) && !atomic_load(&f->stop)) {
        collapse_pages(f);
    }
    return NULL;
}

pyphi_filler *pyphi_filler_start(void *p, size_t bytes, pyphi_fill_fn fill, void *ctx) {
    pyphi_filler *f = malloc(sizeof *f);
    if (f != NULL) {
        *f = (pyphi_filler){.p = p, .bytes = bytes, .fill = fill, .ctx = ctx};
        atomic_init(&f->stop, false);
        atomic_init(&f->busy, 0);
        if (pthread_create(&f->thread, NULL, fill_then_collapse, f) == 0) {
            return f;
        }
        free(f);
    }
    static const atomic_bool never = false;
    fill(ctx, &never);
    return NULL;
}

void pyphi_filler_busy(pyphi_filler *f, int busy) {
    if (f != NULL) {
        atomic_store(&f->busy, busy);
    }
}

void pyphi_filler_stop(pyphi_filler *f) {
    if (f == NULL) {
        return;
    }
    atomic_store(&f->stop, true);
    pthread_join(f->thread, NULL);
    free(f);
}

#else

void pyphi_huge_pages_advise(void *p, size_t bytes) {
    (void)p;
    (void)bytes;
}

int pyphi_fault_in_timed(void *p, size_t bytes) {
    (void)p;
    (void)bytes;
    return 1;
}

void pyphi_huge_pages_decline(void *p, void *end) {
    (void)p;
    (void)end;
}

pyphi_filler *pyphi_filler_start(void *p, size_t bytes, pyphi_fill_fn fill, void *ctx) {
    (void)p;
    (void)bytes;
    static const atomic_bool never = false;
    fill(ctx, &never);
    return NULL;
}

void pyphi_filler_busy(pyphi_filler *f, int busy) {
    (void)f;
    (void)busy;
}

void pyphi_filler_stop(pyphi_filler *f) {
    (void)f;
}

#endif
