/* huge_pages.h: transparent huge pages for a large long-lived buffer (internal). */
#ifndef PYPHI_HUGE_PAGES_H
#define PYPHI_HUGE_PAGES_H

#include <stddef.h>

#define PYPHI_HUGE_PAGE ((size_t)2 << 20)

#include <stdatomic.h>

typedef struct pyphi_filler pyphi_filler;

/* Asks for transparent huge pages for [p, p + bytes), 2 MiB aligned, before its first touch. */
void pyphi_huge_pages_advise(void *p, size_t bytes);

/* Faults in the pages of [p, p + bytes) not yet present and times it: 1 if they came at 2 GB/s
 * or faster (or there were none), 0 if slower. It writes zeros into the range (every 4 KiB). */
int pyphi_fault_in_timed(void *p, size_t bytes);

/* Gives up huge pages for the whole 2 MiB pages of [p, end) not yet touched: they fill as 4 KiB
 * pages, for pyphi_filler_start's collapse to move once the buffer is full. */
void pyphi_huge_pages_decline(void *p, void *end);

/* fill(ctx, stop) writes the buffer, returning early once *stop is set, and returns nonzero if
 * it left any of it in 4 KiB pages (pyphi_huge_pages_decline). */
typedef int (*pyphi_fill_fn)(void *ctx, const atomic_bool *stop);

/* Starts a thread that runs fill at once, then, if fill left small pages, asks the kernel
 * (MADV_COLLAPSE, Linux 6.1+) at the lowest CPU priority to back [p, p + bytes) with transparent
 * huge pages, one 2 MiB page at a time, only while its owner is idle (pyphi_filler_busy). p is
 * 2 MiB aligned. Collapsing never changes the contents, so readers of the filled parts need no
 * care; a read of a page being collapsed waits for it. Where no thread can start (or not on
 * Linux) fill runs here, before the return, and the result is NULL. Where THP is off the
 * collapse ends at its first page. Either way the buffer keeps the pages it has: only its speed
 * changes. */
pyphi_filler *pyphi_filler_start(void *p, size_t bytes, pyphi_fill_fn fill, void *ctx);

/* busy 1: the owner is computing, so a collapse waits before its next page (it would take a
 * core and stall reads of its page); busy 0: it may go on. The fill does not wait. */
void pyphi_filler_busy(pyphi_filler *f, int busy);

/* Stops the thread (the fill where it checks *stop, the collapse after its page) and waits for
 * it; NULL does nothing. */
void pyphi_filler_stop(pyphi_filler *f);

#endif
