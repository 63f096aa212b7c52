#include "pool.h"

#include <pthread.h>

struct bmi_pool {
    int n_threads;
    pthread_t *workers;
    int n_workers;
    pthread_mutex_t lock;
    pthread_cond_t wake, done;
    uint64_t generation;       /* bumped for each job */
    int quit;
    /* the job in flight */
    bmi_task_fn fn;
    void *ctx;
    int n_tasks;
    int next_task;             /* atomic */
    int busy;                  /* workers still inside the job */
};

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
    pthread_mutex_lock(&p->lock);
    for (;;) {
        while (!p->quit && p->generation == seen) pthread_cond_wait(&p->wake, &p->lock);
        if (p->quit) break;
        seen = p->generation;
        bmi_task_fn fn = p->fn;
        void *ctx = p->ctx;
        int n = p->n_tasks;
        pthread_mutex_unlock(&p->lock);
        run_tasks(p, fn, ctx, n);
        pthread_mutex_lock(&p->lock);
        if (--p->busy == 0) pthread_cond_signal(&p->done);
    }
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

bm_status bmi_pool_new(int n_threads, bmi_pool **out) {
    bmi_pool *p = bmi_calloc(1, sizeof *p);
    if (!p) return bmi_fail(BM_ERR_OUT_OF_MEMORY, "out of memory for the thread pool");
    p->n_threads = n_threads < 1 ? 1 : n_threads;
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
    p->quit = 1;
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
    pthread_mutex_lock(&p->lock);
    p->fn = fn;
    p->ctx = ctx;
    p->n_tasks = n_tasks;
    p->next_task = 0;
    p->busy = p->n_workers;
    p->generation++;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->lock);
    run_tasks(p, fn, ctx, n_tasks);
    pthread_mutex_lock(&p->lock);
    while (p->busy > 0) pthread_cond_wait(&p->done, &p->lock);
    pthread_mutex_unlock(&p->lock);
}
