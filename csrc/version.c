/* version.c: the library's version string and the text of each status code. */
#include "pyphi.h"

#ifndef PYPHI_VERSION
#error "PYPHI_VERSION must be defined by the build (CMakeLists.txt)"
#endif

const char *pyphi_version(void) {
    return PYPHI_VERSION;
}

const char *pyphi_status_string(int status) {
    switch (status) {
    case PYPHI_OK:
        return "ok";
    case PYPHI_E_TYPE:
        return "unsupported tensor type";
    case PYPHI_E_SHAPE:
        return "bad shape: a count is negative, too large, or not a multiple of the block size";
    case PYPHI_E_ISA:
        return "instruction set not supported by this CPU or build";
    case PYPHI_E_NOMEM:
        return "out of memory";
    case PYPHI_E_ARG:
        return "invalid argument (NULL pointer or overlapping buffers)";
    case PYPHI_E_CONTEXT:
        return "the sequence does not fit in the context (n_ctx)";
    default:
        return "unknown status";
    }
}
