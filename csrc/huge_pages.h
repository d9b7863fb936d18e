/* huge_pages.h: transparent huge pages for a large long-lived buffer (internal). */
#ifndef PYPHI_HUGE_PAGES_H
#define PYPHI_HUGE_PAGES_H

#include <stddef.h>

#define PYPHI_HUGE_PAGE ((size_t)2 << 20)

typedef struct pyphi_collapser pyphi_collapser;

/* Backs [p, p + bytes) (2 MiB aligned, not yet touched) with transparent huge pages if the kernel
 * hands them out fast, which it times on the first few: 1 when it does or when there is no THP to
 * wait for; 0 when huge pages come slowly, and the rest of the buffer then gets small pages, to
 * be collapsed once filled (pyphi_collapser_start). */
int pyphi_huge_pages_advise(void *p, size_t bytes);

/* Starts a thread, at the lowest CPU priority, that asks the kernel (MADV_COLLAPSE, Linux 6.1+)
 * to back [p, p + bytes) with transparent huge pages, one 2 MiB page at a time, while its owner
 * is idle (pyphi_collapser_busy; it starts busy). p is 2 MiB aligned and its pages already
 * written. The contents never change, so readers need no care; a read of a page being collapsed
 * waits for it. NULL where it cannot start (not Linux, or no thread); where THP is off the thread
 * ends at its first page. Either way the buffer keeps the pages it has: only its speed changes. */
pyphi_collapser *pyphi_collapser_start(void *p, size_t bytes);

/* busy 1: the owner is computing, so the thread waits before its next page (a collapse would
 * take a core and stall reads of its page); busy 0: it may go on. */
void pyphi_collapser_busy(pyphi_collapser *c, int busy);

/* Stops the thread after the page it is collapsing and waits for it; NULL does nothing. */
void pyphi_collapser_stop(pyphi_collapser *c);

#endif
