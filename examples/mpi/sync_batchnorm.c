/* Synchronous (cross-process) batch norm with MPI: every rank holds a shard of the batch,
 * the ranks exchange per-channel partial statistics, and each normalizes and back-propagates its
 * shard exactly as one process holding the whole batch would.
 *
 *   forward:  nk_moments (local) -> MPI_Allgather -> nk_moments_merge in rank order
 *             -> nk_batchnorm_forward_from_moments with the global moments
 *   backward: nk_batchnorm_backward_reduce (local) -> MPI_Allgather -> sums in rank order
 *             -> nk_batchnorm_backward_apply with the global count and sums
 *
 * Merging in rank order (rather than with MPI_Allreduce, whose order of operations MPI leaves
 * open) gives every rank bitwise the same global statistics. Each rank then checks its outputs
 * and gradients against a single-process run on the whole batch (nk_batchnorm_forward_training
 * and nk_batchnorm_backward), for both layouts. Exit status 0 iff every check passes.
 *
 * Build and run (examples/mpi/run.sh does both):
 *   mpicc -std=c11 -O2 -Iinclude examples/mpi/sync_batchnorm.c target/release/libnormkit.a \
 *         $(cat packaging/static-libs.txt) -o sync_batchnorm
 *   mpirun -np 4 ./sync_batchnorm
 */
#include <math.h>
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "normkit.h"

enum { PER_RANK = 2, CHANNELS = 16, SPATIAL = 3001 };

static int failures = 0;

static void expect(int ok, int rank, const char *what, double got, double want) {
    if (!ok) {
        failures++;
        if (failures <= 10)
            fprintf(stderr, "rank %d: %s: got %.9g, single process %.9g\n", rank, what, got, want);
    }
}

static void check_status(nk_status s, const char *call) {
    if (s != NK_OK) {
        fprintf(stderr, "%s: %s (%s)\n", call, nk_status_string(s), nk_last_error_message());
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
}

/* Deterministic value of global element (n, c, s) of tensor `which`: every rank can make any
 * part of the whole batch. Channels get different offsets and spreads. */
static float value(int which, size_t n, size_t c, size_t s) {
    uint64_t h = ((uint64_t)which * 1000003u + n) * 1000033u + c * 7919u + s;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    double u = (double)(h >> 11) / 9007199254740992.0; /* [0, 1) */
    return (float)((u - 0.5) * (1.0 + (double)c) + (which == 0 ? 100.0 * (double)c : 0.0));
}

static size_t index_of(nk_layout layout, size_t n, size_t c, size_t s) {
    return layout == NK_LAYOUT_NCS ? (n * CHANNELS + c) * SPATIAL + s : (n * SPATIAL + s) * CHANNELS + c;
}

/* Fills `t` (batch rows first_n .. first_n + batch) of tensor `which` in `layout`. */
static void fill(float *t, int which, nk_layout layout, size_t first_n, size_t batch) {
    for (size_t n = 0; n < batch; n++)
        for (size_t c = 0; c < CHANNELS; c++)
            for (size_t s = 0; s < SPATIAL; s++)
                t[index_of(layout, n, c, s)] = value(which, first_n + n, c, s);
}

static int close_to(double got, double want, double tol) {
    return fabs(got - want) <= tol * (1.0 + fabs(want));
}

static void run(nk_layout layout, int rank, int ranks) {
    const size_t local_count = (size_t)PER_RANK * SPATIAL;
    const size_t local_elems = (size_t)PER_RANK * CHANNELS * SPATIAL;
    const size_t batch = (size_t)PER_RANK * (size_t)ranks;
    const size_t whole_elems = batch * CHANNELS * SPATIAL;
    nk_shape local = {PER_RANK, CHANNELS, SPATIAL, layout};
    nk_shape whole = {batch, CHANNELS, SPATIAL, layout};
    float gamma[CHANNELS], beta[CHANNELS];
    for (int c = 0; c < CHANNELS; c++) {
        gamma[c] = 1.0f + 0.125f * (float)c;
        beta[c] = 0.5f - 0.25f * (float)c;
    }

    float *x = malloc(local_elems * sizeof *x), *dy = malloc(local_elems * sizeof *dy);
    float *y = malloc(local_elems * sizeof *y), *dx = malloc(local_elems * sizeof *dx);
    fill(x, 0, layout, (size_t)rank * PER_RANK, PER_RANK);
    fill(dy, 1, layout, (size_t)rank * PER_RANK, PER_RANK);

    /* Forward: local moments, gathered, merged in rank order. */
    double part[2 * CHANNELS];
    check_status(nk_moments(NULL, local, x, part, part + CHANNELS), "nk_moments");
    double *parts = malloc((size_t)ranks * 2 * CHANNELS * sizeof *parts);
    MPI_Allgather(part, 2 * CHANNELS, MPI_DOUBLE, parts, 2 * CHANNELS, MPI_DOUBLE, MPI_COMM_WORLD);
    double mean[CHANNELS], m2[CHANNELS];
    memcpy(mean, parts, sizeof mean);
    memcpy(m2, parts + CHANNELS, sizeof m2);
    uint64_t count = local_count;
    for (int r = 1; r < ranks; r++) {
        const double *p = parts + (size_t)r * 2 * CHANNELS;
        check_status(nk_moments_merge(CHANNELS, count, mean, m2, local_count, p, p + CHANNELS),
                     "nk_moments_merge");
        count += local_count;
    }
    float running_mean[CHANNELS] = {0}, running_var[CHANNELS], save_mean[CHANNELS], save_invstd[CHANNELS];
    for (int c = 0; c < CHANNELS; c++) running_var[c] = 1.0f;
    check_status(nk_batchnorm_forward_from_moments(NULL, local, x, y, gamma, beta, count, mean, m2,
                                                   1e-5f, 0.1f, 0, running_mean, running_var,
                                                   save_mean, save_invstd),
                 "nk_batchnorm_forward_from_moments");

    /* Backward: local gradient sums, gathered, summed in rank order. */
    double sums[2 * CHANNELS];
    check_status(nk_batchnorm_backward_reduce(NULL, local, x, dy, save_mean, save_invstd, sums,
                                              sums + CHANNELS),
                 "nk_batchnorm_backward_reduce");
    MPI_Allgather(sums, 2 * CHANNELS, MPI_DOUBLE, parts, 2 * CHANNELS, MPI_DOUBLE, MPI_COMM_WORLD);
    double sum_dy[CHANNELS] = {0}, sum_dy_xhat[CHANNELS] = {0};
    for (int r = 0; r < ranks; r++)
        for (int c = 0; c < CHANNELS; c++) {
            sum_dy[c] += parts[(size_t)r * 2 * CHANNELS + c];
            sum_dy_xhat[c] += parts[(size_t)r * 2 * CHANNELS + CHANNELS + c];
        }
    check_status(nk_batchnorm_backward_apply(NULL, local, x, dy, dx, gamma, save_mean, save_invstd,
                                             count, sum_dy, sum_dy_xhat),
                 "nk_batchnorm_backward_apply");

    /* The same on one process holding the whole batch. */
    float *wx = malloc(whole_elems * sizeof *wx), *wdy = malloc(whole_elems * sizeof *wdy);
    float *wy = malloc(whole_elems * sizeof *wy), *wdx = malloc(whole_elems * sizeof *wdx);
    fill(wx, 0, layout, 0, batch);
    fill(wdy, 1, layout, 0, batch);
    float wrm[CHANNELS] = {0}, wrv[CHANNELS], wsm[CHANNELS], wsi[CHANNELS], dgamma[CHANNELS], dbeta[CHANNELS];
    for (int c = 0; c < CHANNELS; c++) wrv[c] = 1.0f;
    check_status(nk_batchnorm_forward_training(NULL, whole, wx, wy, gamma, beta, 1e-5f, 0.1f, 0, wrm,
                                               wrv, wsm, wsi),
                 "nk_batchnorm_forward_training");
    check_status(nk_batchnorm_backward(NULL, whole, wx, wdy, wdx, gamma, wsm, wsi, dgamma, dbeta),
                 "nk_batchnorm_backward");

    /* This rank's shard of the whole-batch results starts at batch row rank * PER_RANK, and
     * the shard is contiguous in both layouts (the batch is outermost). */
    const size_t first = (size_t)rank * local_elems;
    for (size_t i = 0; i < local_elems; i++) {
        expect(close_to(y[i], wy[first + i], 1e-5), rank, "y", y[i], wy[first + i]);
        expect(close_to(dx[i], wdx[first + i], 1e-4), rank, "dx", dx[i], wdx[first + i]);
    }
    for (int c = 0; c < CHANNELS; c++) {
        expect(close_to(save_mean[c], wsm[c], 1e-6), rank, "save_mean", save_mean[c], wsm[c]);
        expect(close_to(save_invstd[c], wsi[c], 1e-6), rank, "save_invstd", save_invstd[c], wsi[c]);
        expect(close_to(running_mean[c], wrm[c], 1e-6), rank, "running_mean", running_mean[c], wrm[c]);
        expect(close_to(running_var[c], wrv[c], 1e-6), rank, "running_var", running_var[c], wrv[c]);
        expect(close_to(sum_dy_xhat[c], dgamma[c], 1e-5), rank, "dgamma", sum_dy_xhat[c], dgamma[c]);
        expect(close_to(sum_dy[c], dbeta[c], 1e-5), rank, "dbeta", sum_dy[c], dbeta[c]);
    }
    /* Every rank must hold bitwise the same global statistics. */
    double first_rank[2 * CHANNELS];
    memcpy(first_rank, mean, sizeof mean);
    memcpy(first_rank + CHANNELS, m2, sizeof m2);
    MPI_Bcast(first_rank, 2 * CHANNELS, MPI_DOUBLE, 0, MPI_COMM_WORLD);
    if (memcmp(first_rank, mean, sizeof mean) != 0 || memcmp(first_rank + CHANNELS, m2, sizeof m2) != 0) {
        failures++;
        fprintf(stderr, "rank %d: merged moments differ from rank 0's\n", rank);
    }
    free(x), free(dy), free(y), free(dx), free(parts), free(wx), free(wdy), free(wy), free(wdx);
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, ranks;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &ranks);
    run(NK_LAYOUT_NCS, rank, ranks);
    run(NK_LAYOUT_NSC, rank, ranks);
    int total = 0;
    MPI_Allreduce(&failures, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (rank == 0)
        printf("synchronous batch norm on %d ranks, both layouts: %s (%d mismatches)\n", ranks,
               total == 0 ? "every rank matches one process on the whole batch" : "FAILED", total);
    MPI_Finalize();
    return total == 0 ? 0 : 1;
}
