/* huge_pages.c: collapse a filled buffer into transparent huge pages, in the background.
 *
 * Why not ask for huge pages when allocating (MADV_HUGEPAGE)? Because a fresh 2 MiB page has to
 * be zeroed whole at its first touch, and where the memory comes back from a hypervisor (a VM
 * whose host reclaims freed guest memory, as free page reporting does) the fault rate drops to
 * 0.4-0.7 GB/s: gigabytes of packed weights would then take seconds before the first token. With
 * 4 KiB pages the buffer fills several times faster, and a packed matrix streams a few percent
 * slower through the TLB until this thread has moved it onto huge pages. It does so while the
 * model is idle (between a chat's turns, a server's requests): collapsing during an eval took a
 * third off a prefill, the copy and the stalled reads of each page competing with the eval. It
 * runs at nice 19, so other processes' work comes first too.
 */
#include "huge_pages.h"

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

struct pyphi_collapser {
    unsigned char *p; /* (bytes,) 2 MiB aligned */
    size_t bytes;
    atomic_bool stop;
    atomic_int busy;
    pthread_t thread;
};

static void *collapse_pages(void *arg) {
    pyphi_collapser *c = arg;
    /* on Linux a thread has its own nice value, addressed by its thread id */
    setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 19);
    const struct timespec idle_poll = {0, 10 * 1000 * 1000}; /* 10 ms */
    for (size_t off = 0; off + PYPHI_HUGE_PAGE <= c->bytes; off += PYPHI_HUGE_PAGE) {
        while (atomic_load(&c->busy) && !atomic_load(&c->stop)) {
            nanosleep(&idle_poll, NULL);
        }
        if (atomic_load(&c->stop)) {
            break;
        }
        /* EAGAIN / ENOMEM: no free huge page now, that page stays small; EINVAL: THP is off
         * for this process or the kernel predates MADV_COLLAPSE, so no page will succeed */
        if (madvise(c->p + off, PYPHI_HUGE_PAGE, MADV_COLLAPSE) != 0 && errno == EINVAL) {
            break;
        }
    }
    return NULL;
}

pyphi_collapser *pyphi_collapser_start(void *p, size_t bytes) {
    pyphi_collapser *c = malloc(sizeof *c);
    if (c == NULL) {
        return NULL;
    }
    c->p = p;
    c->bytes = bytes;
    atomic_init(&c->stop, false);
    atomic_init(&c->busy, 1); /* started from inside an eval */
    if (pthread_create(&c->thread, NULL, collapse_pages, c) != 0) {
        free(c);
        return NULL;
    }
    return c;
}

void pyphi_collapser_busy(pyphi_collapser *c, int busy) {
    if (c != NULL) {
        atomic_store(&c->busy, busy);
    }
}

void pyphi_collapser_stop(pyphi_collapser *c) {
    if (c == NULL) {
        return;
    }
    atomic_store(&c->stop, true);
    pthread_join(c->thread, NULL);
    free(c);
}

#else

pyphi_collapser *pyphi_collapser_start(void *p, size_t bytes) {
    (void)p;
    (void)bytes;
    return NULL;
}

void pyphi_collapser_busy(pyphi_collapser *c, int busy) {
    (void)c;
    (void)busy;
}

void pyphi_collapser_stop(pyphi_collapser *c) {
    (void)c;
}

#endif
