/* huge_pages.h: transparent huge pages for a large long-lived buffer (internal). */
#ifndef PYPHI_HUGE_PAGES_H
#define PYPHI_HUGE_PAGES_H

#include <stddef.h>

#define PYPHI_HUGE_PAGE ((size_t)2 << 20)

typedef struct pyphi_collapser pyphi_collapser;

/* Asks for transparent huge pages for [p, p + bytes), 2 MiB aligned, before its first touch. */
void pyphi_huge_pages_advise(void *p, size_t bytes);

/* Faults in the pages of [p, p + bytes) not yet present and times it: 1 if they came at 2 GB/s
 * or faster (or there were none), 0 if slower. It writes zeros into the range (every 4 KiB). */
int pyphi_fault_in_timed(void *p, size_t bytes);

/* Gives up huge pages for the whole 2 MiB pages of [p, end) not yet touched: they fill as 4 KiB
 * pages, for pyphi_collapser_start to move once the buffer is full. */
void pyphi_huge_pages_decline(void *p, void *end);

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
