/* The session thread pool. A decode step runs a few hundred short jobs, so a
 * job must start and finish in about a microsecond: workers and the caller
 * first spin on shared counters for a short while and only then block on a
 * condition variable, so a pool between jobs costs no CPU for long and a busy
 * one rarely pays for a sleep and a wake-up. The spin is short (10 us by
 * default; BM_CPU_SPIN_US sets it): on a machine shared with other work a
 * thread of ours may be descheduled at any time, and a long spin by the other
 * then only takes CPU time from it.
 *
 * For the same reason the caller never waits for a worker that has not
 * started on the job: workers join a job through a gate, and once the caller
 * has run out of tasks it closes the gate and waits only for the workers
 * that joined (a descheduled worker that wakes up later finds the gate
 * closed and goes back to waiting). So a pool with no free core for its
 * workers runs about as fast as one thread.
 *
 * Hand-over protocol (all shared words are atomics):
 * - the caller fills the job (fn, ctx, n_tasks, next_task = 0, finished = 0),
 *   opens the gate: gate = (generation << 32), and publishes the generation;
 * - a worker seeing a new generation joins by incrementing the gate's count,
 *   with a compare-and-swap that fails if the gate is closed or belongs to
 *   another generation; a joined worker claims task indices from next_task
 *   until they run out, then increments `finished`;
 * - the caller, out of tasks, sets the gate's CLOSED bit (fetch-or, which
 *   also tells it how many joined) and waits until `finished` equals that.
 * - Blocking: a worker about to block increments `sleepers` and re-checks the
 *   generation under the lock; the caller wakes (broadcast under the lock)
 *   only when it sees sleepers after publishing. Both sides use sequentially
 *   consistent operations, so either the worker sees the new generation or
 *   the caller sees the sleeper. The same for the caller waiting on
 *   `finished` with `caller_waiting`. */
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

/* The gate word: generation (low 32 bits of it) << 32 | CLOSED | joined count. */
#define GATE_CLOSED 0x80000000u
#define GATE_COUNT 0x7fffffffu

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
    uint64_t gate;       /* atomic: see GATE_* */
    uint32_t finished;   /* atomic: joined workers done with the job */
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

/* Spin until *word == value or spin_ns pass; returns 1 if it got there. */
static int spin_until_u32(const uint32_t *word, uint32_t value, uint64_t spin_ns) {
    uint64_t start = 0;
    for (unsigned i = 1;; i++) {
        if (__atomic_load_n(word, __ATOMIC_ACQUIRE) == value) return 1;
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

/* Join the job of generation `gen` if its gate is still open. */
static int join(bmi_pool *p, uint64_t gen) {
    uint64_t w = __atomic_load_n(&p->gate, __ATOMIC_ACQUIRE);
    for (;;) {
        if ((w >> 32) != (gen & 0xffffffffu) || (w & GATE_CLOSED)) return 0;
        if (__atomic_compare_exchange_n(&p->gate, &w, w + 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) return 1;
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
        if (!join(p, seen)) continue; /* too late for that job: wait for the next */
        run_tasks(p, p->fn, p->ctx, p->n_tasks);
        __atomic_add_fetch(&p->finished, 1, __ATOMIC_SEQ_CST);
        if (__atomic_load_n(&p->caller_waiting, __ATOMIC_SEQ_CST)) {
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
    p->gate = GATE_CLOSED; /* generation 0: no job */
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
    __atomic_store_n(&p->finished, 0, __ATOMIC_RELAXED);
    uint64_t gen = __atomic_load_n(&p->generation, __ATOMIC_RELAXED) + 1;
    __atomic_store_n(&p->gate, (gen & 0xffffffffu) << 32, __ATOMIC_RELEASE);
    __atomic_store_n(&p->generation, gen, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&p->sleepers, __ATOMIC_SEQ_CST) > 0) {
        pthread_mutex_lock(&p->lock);
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->lock);
    }
    run_tasks(p, fn, ctx, n_tasks);
    uint32_t joined = (uint32_t)(__atomic_fetch_or(&p->gate, GATE_CLOSED, __ATOMIC_ACQ_REL) & GATE_COUNT);
    if (!spin_until_u32(&p->finished, joined, p->spin_ns)) {
        pthread_mutex_lock(&p->lock);
        __atomic_store_n(&p->caller_waiting, 1, __ATOMIC_SEQ_CST);
        while (__atomic_load_n(&p->finished, __ATOMIC_SEQ_CST) != joined) pthread_cond_wait(&p->done, &p->lock);
        __atomic_store_n(&p->caller_waiting, 0, __ATOMIC_SEQ_CST);
        pthread_mutex_unlock(&p->lock);
    }
}
