/* A tiny test harness: CHECK records a failure and goes on; each test program
 * ends with check_summary(), which prints "N passed, N failed" and returns the
 * exit code. */
#ifndef BM_CHECK_H
#define BM_CHECK_H

#include <stdio.h>
#include <stdlib.h>

static int check_passed, check_failed;

#define CHECK(cond)                                                                    \
    do {                                                                               \
        if (cond) {                                                                    \
            check_passed++;                                                            \
        } else {                                                                       \
            check_failed++;                                                            \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);   \
        }                                                                              \
    } while (0)

#define CHECK_MSG(cond, ...)                                                           \
    do {                                                                               \
        if (cond) {                                                                    \
            check_passed++;                                                            \
        } else {                                                                       \
            check_failed++;                                                            \
            fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond);   \
            fprintf(stderr, __VA_ARGS__);                                              \
            fputc('\n', stderr);                                                       \
        }                                                                              \
    } while (0)

/* A status call that must succeed. */
#define CHECK_OK(call)                                                                 \
    do {                                                                               \
        bm_status check_st_ = (call);                                                  \
        CHECK_MSG(check_st_ == BM_OK, "%s -> %d (%s)", #call, (int)check_st_,          \
                  bm_last_error());                                                    \
    } while (0)

/* A status call that must fail with `want` and leave a message. */
#define CHECK_ERR(call, want)                                                          \
    do {                                                                               \
        bm_status check_st_ = (call);                                                  \
        CHECK_MSG(check_st_ == (want) && bm_last_error()[0] != '\0',                   \
                  "%s -> %d, wanted %d (%s)", #call, (int)check_st_, (int)(want),      \
                  bm_last_error());                                                    \
    } while (0)

static inline int check_summary(const char *name) {
    printf("%s: %d passed, %d failed\n", name, check_passed, check_failed);
    return check_failed ? 1 : 0;
}

/* Where ../shared is: $BM_SHARED, else ../shared. */
static inline const char *check_shared_dir(void) {
    const char *s = getenv("BM_SHARED");
    return s && *s ? s : "../shared";
}

#endif
