// The analog product of the IO pipeline (SPEC §1.6, y = A x for each row x of a tile) with a
// fixed, documented summation order, so that every output element has the same value whatever
// the batch size, the rows or columns computed together, the thread count, the instruction set
// (AVX-512, AVX2+FMA, portable) or the BLAS library:
//
//  * forward (A = W, a row of W is contiguous): y[o] = dot16(x, W[o, :]): 16 partial sums
//    s[l] = fma chain over i = l, l + 16, l + 32, ... (ascending, from +0), then
//    s[l] += s[l + 8] (l < 8), s[l] += s[l + 4] (l < 4), s[l] += s[l + 2] (l < 2), y = s[0] + s[1].
//  * backward (A = W^T, a column of A is contiguous): y[o] = fma chain over i ascending of
//    x[i] * W[i, o], from +0.
//
// analog_dot16_ref / analog_chain_ref are the scalar definitions (tests compare against them).
#pragma once
#include <cstdint>

namespace rpu {

// C[m, n] (row stride ldc) = X[m, k] (row stride ldx) times A^T, where A[n, k] is
//   transposed = false:  A[o][i] = W[o * ldw + i]   (forward: W rows are the outputs)
//   transposed = true:   A[o][i] = W[i * ldw + o]   (backward: W columns are the outputs)
// Single-threaded; C is overwritten.
void analog_gemm(bool transposed, int m, int n, int k, const float *X, int ldx, const float *W, int ldw, float *C,
                 int ldc);

// The forward product in the columns layout of the convolution pipeline (io_conv.h): X holds
// one input vector per column, X[i * ldx + r] (i < k, r < m), and C[o * ldc + r] = y[o] of
// column r, o < n, with the weights transposed: A[o][i] = WT[i * ldwt + o] (the weights of one
// input side by side).  Every element has the value of the forward order above
// (analog_dot16_ref); the columns are computed 16 at a time.  Single-threaded.
void analog_gemm_columns(int m, int n, int k, const float *X, int ldx, const float *WT, int ldwt, float *C,
                         int ldc);

// The scalar definitions of the two orders (one output element).
float analog_dot16_ref(const float *x, const float *w, int k);
float analog_chain_ref(const float *x, const float *w, int ldw, int k);  // w[i * ldw], i < k

}  // namespace rpu
