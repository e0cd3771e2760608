// Dense products through a maintained BLAS (OpenBLAS from the scipy-openblas32 wheel).
// Row-major; C[m, n] = alpha * op(A)[m, k] * op(B)[k, n] + beta * C.
#pragma once

namespace rpu {

void blas_set_single_threaded();

// One single-threaded sgemm call.
void sgemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float *A, int lda,
           const float *B, int ldb, float beta, float *C, int ldc);

// The same product split over rpucuda's thread pool (rows of C, or columns when m is small).
void sgemm_parallel(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float *A,
                    int lda, const float *B, int ldb, float beta, float *C, int ldc);

}  // namespace rpu
