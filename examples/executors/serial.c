/*
 * The smallest executor: parallel_for runs every task on the calling thread, in order. normkit
 * asks nothing more of an executor than to run each task(task_arg, i), i in [0, count), exactly
 * once and to return when all have finished; on which threads, in which order and in which
 * groups is the executor's choice, and results do not depend on it (nor on `concurrency`).
 * This program proves it: with this serial executor, every output is bitwise that of a context
 * with two threads of its own.
 *
 * Such an executor is also what to hand normkit from a thread that must not fan out at all
 * (e.g. a thread of an engine's own pool that already runs one operator per core).
 *
 * Build from the repository root after `cargo build --release` (tests/executor_examples.rs
 * builds and runs it the same way):
 *   cc -std=c11 -O2 -Iinclude examples/executors/serial.c target/release/libnormkit.a \
 *      $(cat packaging/static-libs.txt) -o serial && ./serial
 */
#include "common.h"

/* nk_executor.parallel_for: `user` is what nk_executor.user held, here the call counter. */
static void serial_parallel_for(void *user, size_t count, nk_task_fn task, void *task_arg) {
    example_stats *stats = (example_stats *)user;
    stats->batches++;
    stats->tasks += count;
    for (size_t i = 0; i < count; i++) {
        task(task_arg, i);
    }
}

int main(void) {
    example_stats stats = {0, 0};
    nk_executor executor;
    executor.parallel_for = serial_parallel_for;
    executor.user = &stats;
    executor.concurrency = 1; /* one thread runs the tasks */

    nk_context *ctx = NULL;
    nk_status s = nk_context_create_with_executor(&executor, &ctx); /* copies `executor` */
    if (s != NK_OK) {
        fprintf(stderr, "nk_context_create_with_executor: %s\n", nk_status_string(s));
        return 1;
    }
    int status = example_check("serial executor", ctx, &stats);
    nk_context_destroy(ctx);
    return status;
}
