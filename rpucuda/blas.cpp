#include "blas.h"

#include <cblas.h>

#include "threading.h"

namespace rpu {

void blas_set_single_threaded() {
  static bool done = false;
  if (!done) {
    scipy_openblas_set_num_threads(1);
    done = true;
  }
}

void sgemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float *A, int lda,
           const float *B, int ldb, float beta, float *C, int ldc) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {
    for (int i = 0; i < m; ++i)
      for (int j = 0; j < n; ++j) C[(long)i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[(long)i * ldc + j];
    return;
  }
  scipy_cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                    trans_b ? CblasTrans : CblasNoTrans, m, n, k, alpha, A, lda, B, ldb, beta, C,
                    ldc);
}

void sgemm_parallel(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float *A,
                    int lda, const float *B, int ldb, float beta, float *C, int ldc) {
  blas_set_single_threaded();
  int threads = get_num_threads();
  double flops = 2.0 * m * n * (double)k;
  if (threads <= 1 || flops < 2e5) {
    sgemm(trans_a, trans_b, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  if (m >= 4 * threads) {
    // Split the rows of C: rows of op(A).
    parallel_for(m, 4, [&](int64_t b, int64_t e) {
      const float *Ab = trans_a ? A + b : A + b * (long)lda;
      sgemm(trans_a, trans_b, (int)(e - b), n, k, alpha, Ab, lda, B, ldb, beta, C + b * (long)ldc, ldc);
    });
  } else {
    // Split the columns of C: columns of op(B).
    parallel_for(n, 16, [&](int64_t b, int64_t e) {
      const float *Bb = trans_b ? B + b * (long)ldb : B + b;
      sgemm(trans_a, trans_b, m, (int)(e - b), k, alpha, A, lda, Bb, ldb, beta, C + b, ldc);
    });
  }
}

}  // namespace rpu
