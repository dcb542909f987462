/*
 * normkit on an engine's own C++ thread pool: a minimal pool of persistent std::thread workers
 * and the nk_executor that hands normkit's tasks to it. The executor context never starts a
 * thread; every parallel part of a normkit call becomes one ThreadPool::parallel_for batch.
 *
 * parallel_for(count, task, arg) publishes a batch, wakes the workers, runs tasks itself too
 * (the calling thread would otherwise sit idle), and returns when all `count` tasks have finished.
 * Task indices are handed out one at a time under the pool's mutex: normkit's tasks are coarse
 * (thousands of elements each), so one lock per task is cheap next to the task itself.
 *
 * Concurrent callers: a second mutex (batch_) lets one batch run at a time, so several host
 * threads may call normkit on the same executor context at once; their batches take turns. (A
 * pool without it would be safe for one host thread at a time only.) Holding batch_ while the
 * tasks run cannot deadlock: normkit never calls parallel_for from inside a task. main() below
 * checks concurrent use with two host threads sharing the context.
 *
 * Build from the repository root after `cargo build --release` (tests/executor_examples.rs
 * builds and runs it the same way):
 *   c++ -std=c++17 -O2 -pthread -Iinclude examples/executors/thread_pool.cpp \
 *       target/release/libnormkit.a $(cat packaging/static-libs.txt) -o thread_pool
 */
#include "common.h"

#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

class ThreadPool {
  public:
    explicit ThreadPool(size_t workers) {
        for (size_t w = 0; w < workers; w++) {
            threads_.emplace_back([this] { worker(); });
        }
    }
    ~ThreadPool() {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            stop_ = true;
        }
        wake_.notify_all();
        for (std::thread &t : threads_) t.join();
    }
    size_t workers() const { return threads_.size(); }
    example_stats stats = {0, 0}; // written under batch_; read once no batch runs

    // Runs task(arg, i) for every i in [0, count) on the workers and the calling thread.
    void parallel_for(size_t count, nk_task_fn task, void *arg) {
        std::lock_guard<std::mutex> one_batch_at_a_time(batch_);
        stats.batches++;
        stats.tasks += count;
        std::unique_lock<std::mutex> lock(mutex_);
        task_ = task;
        arg_ = arg;
        count_ = count;
        next_ = 0;
        finished_ = 0;
        wake_.notify_all();
        run_tasks(lock); // the caller helps, then waits for tasks still running on workers
        done_.wait(lock, [this] { return finished_ == count_; });
    }

  private:
    void worker() {
        std::unique_lock<std::mutex> lock(mutex_);
        for (;;) {
            wake_.wait(lock, [this] { return stop_ || next_ < count_; });
            if (stop_) return;
            run_tasks(lock);
        }
    }

    // Claims and runs tasks of the current batch until none is left to claim; `lock` holds
    // mutex_ except while a task runs.
    void run_tasks(std::unique_lock<std::mutex> &lock) {
        while (next_ < count_) {
            size_t i = next_++;
            nk_task_fn task = task_;
            void *arg = arg_;
            lock.unlock();
            task(arg, i);
            lock.lock();
            if (++finished_ == count_) done_.notify_all();
        }
    }

    std::mutex batch_;                   // held for a whole parallel_for
    std::mutex mutex_;                   // guards everything below
    std::condition_variable wake_, done_;
    nk_task_fn task_ = nullptr;
    void *arg_ = nullptr;
    size_t count_ = 0, next_ = 0, finished_ = 0;
    bool stop_ = false;
    std::vector<std::thread> threads_;
};

// The nk_executor entry point: `user` is the pool.
static void pool_parallel_for(void *user, size_t count, nk_task_fn task, void *task_arg) {
    static_cast<ThreadPool *>(user)->parallel_for(count, task, task_arg);
}

int main() {
    ThreadPool pool(3); // 3 workers + the calling thread: unlike the 2-thread reference
    nk_executor executor;
    executor.parallel_for = pool_parallel_for;
    executor.user = &pool;
    executor.concurrency = pool.workers() + 1;

    nk_context *ctx = nullptr;
    nk_status s = nk_context_create_with_executor(&executor, &ctx); // copies `executor`
    if (s != NK_OK) {
        fprintf(stderr, "nk_context_create_with_executor: %s\n", nk_status_string(s));
        return 1;
    }
    int status = example_check("std::thread pool executor (3 workers + caller)", ctx, &pool.stats);

    // Two host threads share the context; each run must equal a run alone, byte for byte.
    example_run alone = example_workload(ctx), both[2];
    int concurrent_failures = alone.failures;
    std::thread other([&] { both[1] = example_workload(ctx); });
    both[0] = example_workload(ctx);
    other.join();
    for (const example_run &r : both) {
        if (r.failures != 0 || memcmp(r.base, alone.base, EXAMPLE_ARENA_BYTES) != 0) {
            fprintf(stderr, "a run from two host threads at once differs from a run alone\n");
            concurrent_failures++;
        }
        free(r.base);
    }
    printf("std::thread pool executor: two host threads sharing the context: %s\n",
           concurrent_failures == 0 ? "runs bitwise equal to a run alone" : "FAILED");
    free(alone.base);
    nk_context_destroy(ctx);
    return status != 0 || concurrent_failures != 0 ? 1 : 0;
}
