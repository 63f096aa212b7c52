/* A fixed pool of worker threads, made once per session. bmi_pool_run hands
 * out task indices 0..n_tasks-1; the calling thread works too. */
#ifndef BM_CPU_POOL_H
#define BM_CPU_POOL_H

#include "common.h"

typedef struct bmi_pool bmi_pool;
typedef void (*bmi_task_fn)(void *ctx, int task);

/* n_threads counts the caller: 1 makes no workers. */
bm_status bmi_pool_new(int n_threads, bmi_pool **out);
void bmi_pool_free(bmi_pool *p);
int bmi_pool_size(const bmi_pool *p);
/* Run fn(ctx, i) for every i in [0, n_tasks) and return when all are done.
 * p may be NULL (runs serially). */
void bmi_pool_run(bmi_pool *p, int n_tasks, bmi_task_fn fn, void *ctx);

#endif
