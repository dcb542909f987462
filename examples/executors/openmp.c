/*
 * normkit on an OpenMP engine's threads. An engine that parallelizes with OpenMP already keeps
 * one OpenMP thread per core; a context with threads of its own (nk_context_create) would add a
 * second pool competing for the same cores. An executor context instead hands each parallel part
 * of a normkit call to parallel_for below, which runs its tasks on the OpenMP team.
 *
 * Rules parallel_for follows (see nk_executor in include/normkit.h):
 * - run task(task_arg, i) exactly once for every i in [0, count), on any threads, in any order;
 * - return only when every task has finished (the implicit barrier at the end of the `omp
 *   parallel for` region does that);
 * - normkit calls it from the thread that made the normkit call, never from inside a task, so
 *   no nested parallelism arises; tasks never unwind or longjmp.
 * Results are bitwise those of any other context: normkit splits the work by shape only, so
 * OMP_NUM_THREADS, the schedule and `concurrency` change the speed, never the values.
 *
 * Build from the repository root after `cargo build --release` (tests/executor_examples.rs
 * builds and runs it the same way):
 *   gcc -std=c11 -O2 -fopenmp -Iinclude examples/executors/openmp.c target/release/libnormkit.a \
 *       $(cat packaging/static-libs.txt) -o openmp && ./openmp
 */
#ifndef _OPENMP
#error "build with OpenMP (gcc -fopenmp)"
#endif

#include "common.h"

#include <omp.h>

static void omp_parallel_for(void *user, size_t count, nk_task_fn task, void *task_arg) {
    /* Counted on the calling thread, before the parallel region. With several host threads
     * calling normkit at once on this context, these counters would need to be atomic. */
    example_stats *stats = (example_stats *)user;
    stats->batches++;
    stats->tasks += count;
    if (count == 1) {
        task(task_arg, 0); /* not worth waking the team */
        return;
    }
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < count; i++) {
        task(task_arg, i);
    }
}

int main(void) {
    example_stats stats = {0, 0};
    nk_executor executor;
    executor.parallel_for = omp_parallel_for;
    executor.user = &stats;
    /* How many threads run the tasks: the size of the team `omp parallel` starts here. */
    executor.concurrency = (size_t)omp_get_max_threads();

    nk_context *ctx = NULL;
    nk_status s = nk_context_create_with_executor(&executor, &ctx); /* copies `executor` */
    if (s != NK_OK) {
        fprintf(stderr, "nk_context_create_with_executor: %s\n", nk_status_string(s));
        return 1;
    }
    char name[64];
    snprintf(name, sizeof name, "OpenMP executor (%d threads)", omp_get_max_threads());
    int status = example_check(name, ctx, &stats);
    nk_context_destroy(ctx);
    return status;
}
