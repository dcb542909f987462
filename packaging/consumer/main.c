/* A program that uses normkit (installed, or built from the source tree by CMake): the header's
 * version macros agree with the library, and a small batch-norm inference gives the expected
 * values. Exits 0 on success. */
#include <math.h>
#include <stdio.h>

#include <normkit.h>

int main(void) {
    uint32_t expected = ((uint32_t)NK_VERSION_MAJOR << 16) | ((uint32_t)NK_VERSION_MINOR << 8) |
                        (uint32_t)NK_VERSION_PATCH;
    if (nk_version() != expected) {
        fprintf(stderr, "header says %#x, library says %#x\n", (unsigned)expected,
                (unsigned)nk_version());
        return 1;
    }
    /* (N, C, S) = (1, 2, 3), channels-first; channel c has mean c and variance 4. */
    nk_shape shape = {1, 2, 3, NK_LAYOUT_NCS};
    const float x[6] = {0.0f, 2.0f, -2.0f, 1.0f, 3.0f, -1.0f};
    const float mean[2] = {0.0f, 1.0f}, var[2] = {4.0f, 4.0f};
    float y[6];
    nk_status s = nk_batchnorm_forward_inference(NULL, shape, x, y, NULL, NULL, mean, var, 0.0f, 0);
    if (s != NK_OK) {
        fprintf(stderr, "status %s: %s\n", nk_status_string(s), nk_last_error_message());
        return 1;
    }
    for (int i = 0; i < 6; i++) {
        float want = (x[i] - mean[i / 3]) / 2.0f;
        if (fabsf(y[i] - want) > 1e-6f) {
            fprintf(stderr, "y[%d] = %g, want %g\n", i, y[i], want);
            return 1;
        }
    }
    printf("normkit %u.%u.%u works\n", (unsigned)NK_VERSION_MAJOR, (unsigned)NK_VERSION_MINOR,
           (unsigned)NK_VERSION_PATCH);
    return 0;
}
