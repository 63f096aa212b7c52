/* The session thread pool. A decode step runs a few hundred short jobs, so a
 * job must start and finish in about a microsecond: workers and the caller
 * first spin on shared counters for a short while and only then block on a
 * condition variable, so a pool between jobs costs no CPU for long and a busy
 * one rarely pays for a sleep and a wake-up. The spin is short (10 us by
 * default; BM_CPU_SPIN_US sets it): on a machine shared with other work a
 * thread of ours may be descheduled in the middle of a job, and a long spin
 * by the other then only takes CPU time from it.
 *
 * Hand-over protocol (all counters are atomics):
 * - the caller fills the job, sets `pending` to the number of workers and
 *   bumps `generation`; a worker seeing a new generation claims task indices
 *   from `next_task` until they run out, then decrements `pending`;
 * - a worker about to block increments `sleepers` and re-checks the
 *   generation under the lock; the caller wakes (broadcast under the lock)
 *   only when it sees sleepers after publishing. Both sides use sequentially
 *   consistent operations, so either the worker sees the new generation or
 *   the caller sees the sleeper;
 * - the same for the caller waiting on `pending` with `caller_waiting`. */
#include "pool.h"

#include <pthread.h>
#include <stdlib.h>
#include <time.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define CPU_RELAX() __asm__ __volatile__("yield")
#else
#define CPU_RELAX() ((void)0)
#endif

/* How long a thread spins before it blocks, unless BM_CPU_SPIN_US says. */
#define DEFAULT_SPIN_NS 10000

struct bmi_pool {
    int n_threads;
    pthread_t *workers;
    int n_workers;
    pthread_mutex_t lock;
    pthread_cond_t wake, done;
    /* the job in flight */
    bmi_task_fn fn;
    void *ctx;
    int n_tasks;
    int next_task;       /* atomic: next task index to claim */
    int pending;         /* atomic: workers not yet finished with the job */
    uint64_t generation; /* atomic: bumped to publish a job (or quit) */
    int sleepers;        /* atomic: workers blocked on `wake` */
    int caller_waiting;  /* atomic: the caller blocked on `done` */
    int quit;            /* atomic */
    uint64_t spin_ns;
};

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Spin until *word != value or spin_ns pass; returns 1 if it changed. */
static int spin_while_u64(const uint64_t *word, uint64_t value, uint64_t spin_ns) {
    uint64_t start = 0;
    for (unsigned i = 1;; i++) {
        if (__atomic_load_n(word, __ATOMIC_ACQUIRE) != value) return 1;
        CPU_RELAX();
        if ((i & 63) == 0) {
            uint64_t t = now_ns();
            if (!start) start = t;
            else if (t - start > spin_ns) return 0;
        }
    }
}

static int spin_while_nonzero(const int *word, uint64_t spin_ns) {
    uint64_t start = 0;
    for (unsigned i = 1;; i++) {
        if (__atomic_load_n(word, __ATOMIC_ACQUIRE) == 0) return 1;
        CPU_RELAX();
        if ((i & 63) == 0) {
            uint64_t t = now_ns();
            if (!start) start = t;
            else if (t - start > spin_ns) return 0;
        }
    }
}

static void run_tasks(bmi_pool *p, bmi_task_fn fn, void *ctx, int n_tasks) {
    for (;;) {
        int i = __atomic_fetch_add(&p->next_task, 1, __ATOMIC_RELAXED);
        if (i >= n_tasks) break;
        fn(ctx, i);
    }
}

static void *worker_main(void *arg) {
    bmi_pool *p = arg;
    uint64_t seen = 0;
    for (;;) {
        if (!spin_while_u64(&p->generation, seen, p->spin_ns)) {
            pthread_mutex_lock(&p->lock);
            __atomic_add_fetch(&p->sleepers, 1, __ATOMIC_SEQ_CST);
            while (__atomic_load_n(&p->generation, __ATOMIC_SEQ_CST) == seen) pthread_cond_wait(&p->wake, &p->lock);
            __atomic_sub_fetch(&p->sleepers, 1, __ATOMIC_SEQ_CST);
            pthread_mutex_unlock(&p->lock);
        }
        seen = __atomic_load_n(&p->generation, __ATOMIC_ACQUIRE);
        if (__atomic_load_n(&p->quit, __ATOMIC_ACQUIRE)) break;
        run_tasks(p, p->fn, p->ctx, p->n_tasks);
        if (__atomic_sub_fetch(&p->pending, 1, __ATOMIC_SEQ_CST) == 0 &&
            __atomic_load_n(&p->caller_waiting, __ATOMIC_SEQ_CST)) {
            pthread_mutex_lock(&p->lock);
            pthread_cond_signal(&p->done);
            pthread_mutex_unlock(&p->lock);
        }
    }
    return NULL;
}

bm_status bmi_pool_new(int n_threads, bmi_pool **out) {
    bmi_pool *p = bmi_calloc(1, sizeof *p);
    if (!p) return bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory for the thread pool");
    p->n_threads = n_threads < 1 ? 1 : n_threads;
    const char *spin = getenv("BM_CPU_SPIN_US");
    p->spin_ns = spin && *spin ? (uint64_t)strtoull(spin, NULL, 10) * 1000u : DEFAULT_SPIN_NS;
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->done, NULL);
    if (p->n_threads > 1) {
        p->workers = bmi_calloc((size_t)p->n_threads - 1, sizeof *p->workers);
        if (!p->workers) {
            bmi_pool_free(p);
            return bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory for the thread pool");
        }
        for (int i = 0; i < p->n_threads - 1; i++) {
            if (pthread_create(&p->workers[i], NULL, worker_main, p) != 0) {
                bmi_pool_free(p);
                return bmi_fail(BM_ERR_OUT_OF_MEMORY, "cannot start worker thread %d", i);
            }
            p->n_workers++;
        }
    }
    *out = p;
    return BM_OK;
}

void bmi_pool_free(bmi_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->lock);
    __atomic_store_n(&p->quit, 1, __ATOMIC_SEQ_CST);
    __atomic_add_fetch(&p->generation, 1, __ATOMIC_SEQ_CST);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->lock);
    for (int i = 0; i < p->n_workers; i++) pthread_join(p->workers[i], NULL);
    pthread_cond_destroy(&p->wake);
    pthread_cond_destroy(&p->done);
    pthread_mutex_destroy(&p->lock);
    bmi_free(p->workers);
    bmi_free(p);
}

int bmi_pool_size(const bmi_pool *p) { return p ? p->n_threads : 1; }

void bmi_pool_run(bmi_pool *p, int n_tasks, bmi_task_fn fn, void *ctx) {
    if (n_tasks <= 0) return;
    if (!p || p->n_workers == 0 || n_tasks == 1) {
        for (int i = 0; i < n_tasks; i++) fn(ctx, i);
        return;
    }
    p->fn = fn;
    p->ctx = ctx;
    p->n_tasks = n_tasks;
    __atomic_store_n(&p->next_task, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&p->pending, p->n_workers, __ATOMIC_RELAXED);
    __atomic_add_fetch(&p->generation, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&p->sleepers, __ATOMIC_SEQ_CST) > 0) {
        pthread_mutex_lock(&p->lock);
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->lock);
    }
    run_tasks(p, fn, ctx, n_tasks);
    if (!spin_while_nonzero(&p->pending, p->spin_ns)) {
        pthread_mutex_lock(&p->lock);
        __atomic_store_n(&p->caller_waiting, 1, __ATOMIC_SEQ_CST);
        while (__atomic_load_n(&p->pending, __ATOMIC_SEQ_CST) > 0) pthread_cond_wait(&p->done, &p->lock);
        __atomic_store_n(&p->caller_waiting, 0, __ATOMIC_SEQ_CST);
        pthread_mutex_unlock(&p->lock);
    }
}
