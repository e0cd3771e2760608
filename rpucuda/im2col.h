// Convolution geometry and the im2col / col2im rearrangements: a convolution is the analog
// product of the unfolded input (one row per output position, one column per input channel and
// kernel offset) with the weight matrix [out_channels, channels * kernel volume].
//
// Row r = (n, l0, l1, l2) and column k = (c, k0, k1, k2), both row-major, with 1-d and 2-d
// convolutions padded to 3 spatial dimensions by leading dimensions of size 1 (the layout of
// torch.nn.functional.unfold and of aihw_deploy.nn.modules.conv).  Positions outside the input
// (padding) read as 0; with `ones_column` every row gets a trailing 1 (the analog bias column).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace rpu {

struct ConvShape {
  int64_t batch = 0;           // N
  int64_t channels = 0;        // C: input channels of one group (column count = C * kernel volume)
  int64_t image_stride = 0;    // elements between two images of the input (C_total * input volume)
  int64_t in[3] = {1, 1, 1};   // input spatial size
  int64_t kernel[3] = {1, 1, 1};
  int64_t stride[3] = {1, 1, 1};
  int64_t padding[3] = {0, 0, 0};
  int64_t dilation[3] = {1, 1, 1};
  int64_t out[3] = {1, 1, 1};  // output spatial size (set by conv_shape)

  int64_t in_volume() const { return in[0] * in[1] * in[2]; }
  int64_t kernel_volume() const { return kernel[0] * kernel[1] * kernel[2]; }
  int64_t out_volume() const { return out[0] * out[1] * out[2]; }
  int64_t rows() const { return batch * out_volume(); }
  int64_t cols() const { return channels * kernel_volume(); }
};

// Fills s for `dims` (1, 2 or 3) spatial dimensions (arrays of `dims` entries, innermost last)
// and computes the output size; image_stride defaults to channels * input volume (a group of a
// grouped convolution sets it to the full image afterwards).  Returns "" or what is wrong.
std::string conv_shape(int dims, int64_t batch, int64_t channels, const int64_t *in, const int64_t *kernel,
                       const int64_t *stride, const int64_t *padding, const int64_t *dilation, ConvShape *s);

// cols[r * ld + k] for all rows and columns (ld >= cols() + ones_column), X [N, C, *in]
// (images image_stride apart).  Parallel over the rows.
void im2col(const float *X, const ConvShape &s, bool ones_column, float *cols, int64_t ld);

// A block of rows r0 .. r0+n_rows-1 of the unfolded input, transposed (the columns layout of
// io_conv): T[k * ldt + (r - r0)].  prepare() describes where each element comes from; fill()
// writes columns k_begin .. k_end-1 (k = cols() is the ones column: all 1 with ones_column).
// The block is cut into runs, one per output line (n, o0, o1) it touches; column
// k = (c * K01 + k01) * K2 + k2 (K01 = kernel[0] * kernel[1], K2 = kernel[2]) of run u is
//   0 where line_off[u * K01 + k01] < 0 (the kernel row lies in the padding), else
//   rows j + i, i in [lo[u * K2 + k2], hi[u * K2 + k2]): X[img + c * in_volume() + line_off +
//   (o2 + i) * stride[2] + k2 * dilation[2] - padding[2]], and 0 for the other i < len.
// Single-threaded.
struct ColumnsBlock {
  struct Run {
    int64_t img, o2, len, j;  // image offset in X; first output position o2; length; first row
  };
  ConvShape s;
  int n_rows = 0;
  std::vector<Run> runs;
  std::vector<int64_t> line_off, lo, hi;

  void prepare(const ConvShape &shape, int64_t r0, int n_rows);
  void fill(const float *X, bool ones_column, int64_t k_begin, int64_t k_end, float *T, int64_t ldt) const;
};

// The layout change between the columns layout and rows: dst[j * ld + k] = T[k * ldt + j] for
// j < nr, k < K.
void transpose_block(const float *T, int64_t ldt, int nr, int64_t K, float *dst, int64_t ld);

// One row: x[k] for k < cols() (+ the trailing 1).
void im2col_row(const float *X, const ConvShape &s, bool ones_column, int64_t r, float *x);

// The adjoint of im2col (the gradient of the input): DX [N, C, *in] (images image_stride
// apart; only the C channels of the shape are written) = the sum of the columns
// cols[r * ld + k] over the rows and columns that read each input element.  The trailing ones
// column, if any, is ignored.  Parallel over the (image, channel) planes; the order of the
// additions (so the float result) is fixed:
//   Col2imOrder::Columns: in ascending column order, starting from 0 (torch's col2im: the
//     values of F.fold, the gradient of F.unfold);
//   Col2imOrder::NestedWindows: per spatial dimension, innermost first, the sum over the
//     windows containing the element in ascending window order, each partial sum starting from
//     0 (the gradient of F.pad followed by Tensor.unfold along each dimension).
enum class Col2imOrder { Columns, NestedWindows };
void col2im(const float *cols, int64_t ld, const ConvShape &s, Col2imOrder order, float *DX);

}  // namespace rpu
