/* The session thread pool: every task runs exactly once per job, on more than
 * one thread when asked, across many consecutive jobs. */
#include <pthread.h>

#include "check.h"
#include "pool.h"

typedef struct job {
    int *hits;
    pthread_t threads[64];
    int n_threads;
    pthread_mutex_t lock;
} job;

static void task(void *arg, int i) {
    job *j = arg;
    __atomic_add_fetch(&j->hits[i], 1, __ATOMIC_RELAXED);
    volatile double x = 0; /* enough work that every worker gets some */
    for (int k = 0; k < 20000; k++) x += k * 0.5;
    pthread_mutex_lock(&j->lock);
    int seen = 0;
    for (int t = 0; t < j->n_threads; t++) seen |= pthread_equal(j->threads[t], pthread_self());
    if (!seen && j->n_threads < 64) j->threads[j->n_threads++] = pthread_self();
    pthread_mutex_unlock(&j->lock);
}

int main(void) {
    for (int threads = 1; threads <= 4; threads++) {
        bmi_pool *p = NULL;
        CHECK_OK(bmi_pool_new(threads, &p));
        CHECK(bmi_pool_size(p) == threads);
        int max_seen = 0, all_once = 1;
        for (int round = 0; round < 200; round++) {
            int n = 1 + round % 37;
            int hits[64] = {0};
            job j = {.hits = hits, .n_threads = 0};
            pthread_mutex_init(&j.lock, NULL);
            bmi_pool_run(p, n, task, &j);
            for (int i = 0; i < n; i++) all_once &= hits[i] == 1;
            if (j.n_threads > max_seen) max_seen = j.n_threads;
            pthread_mutex_destroy(&j.lock);
        }
        CHECK_MSG(all_once, "threads=%d: a task ran other than once", threads);
        CHECK_MSG(threads == 1 ? max_seen == 1 : max_seen >= 2, "threads=%d: work ran on %d threads", threads,
                  max_seen);
        bmi_pool_free(p);
    }
    bmi_pool_run(NULL, 3, task, &(job){.hits = (int[3]){0}}); /* NULL pool runs serially */
    return check_summary("test_pool");
}
