// Convolution helpers for the GPU path of Conv2D (tinyconv/ops/conv_cuda.py), float32, NCHW.
//
// The batch is processed in chunks of g images (n0 .. n0+g-1), exactly as on the CPU path:
//   cols    (K, g*P)      K = C*kh*kw rows, one column per (image, output pixel), P = out_h*out_w
//   ychunk  (C_out, g*P)  = w2 @ cols, one cuBLAS GEMM (cupy.matmul), then chunk_to_nchw
// In backward, cols are the K rows under a row of ones that conv_cuda.py fills (db comes out of the
// dw GEMM); these kernels never see that row. Offsets that grow with the chunk (k*g*P,
// (n0 + nn)*C*H*W, ...) are 64-bit; only per-image sizes (P, H*W) and the indexes within them are
// int, so no chunk size overflows them.
// Row index    k   = (c*kh + i)*kw + j          (input channel c, kernel offset i, j)
// Column index col = nn*P + p*out_w + q         (image n = n0 + nn, output pixel p, q)
//   cols[k, col] = x[n, c, p*sh - ph + i, q*sw - pw + j]     (0 outside the image: the padding)
//
// Each kernel walks "rows": contiguous runs of the output (a row of cols for one image, a plane
// of y or dx). blockIdx.y (striding by gridDim.y) picks the row, and the x threads stride along it,
// so any grid covers the work (the CPU tests run this very source with one or a few "threads"),
// consecutive threads write consecutive addresses, and the per-row index algebra (divisions
// included) is done once per row, not per element.

#define ROW_LOOP(row, rows)                                                       \
    for (long long row = blockIdx.y; row < (rows); row += gridDim.y)
#define ALONG_ROW(r, len)                                                         \
    for (int r = blockIdx.x * blockDim.x + threadIdx.x; r < (len); r += blockDim.x * gridDim.x)

// x (N, C, H, W) -> cols (K, g*P) for images n0 .. n0+g-1. Row (k, nn) of length P is
// cols[k, nn*P : (nn+1)*P].
extern "C" __global__ void im2col_chunk(
    const float* __restrict__ x, int C, int H, int W, int n0, int g,
    int kh, int kw, int sh, int sw, int ph, int pw, int out_h, int out_w,
    float* __restrict__ cols)
{
    const int P = out_h * out_w;
    ROW_LOOP(row, (long long)C * kh * kw * g) {
        const int nn = (int)(row % g);             // row = k*g + nn
        const int k = (int)(row / g);
        const int j = k % kw, i = (k / kw) % kh, c = k / (kw * kh);
        const float* plane = x + ((long long)(n0 + nn) * C + c) * H * W;
        float* out = cols + (long long)k * g * P + (long long)nn * P;
        ALONG_ROW(pq, P) {
            const int p = pq / out_w, q = pq - p * out_w;
            const int h = p * sh - ph + i, w = q * sw - pw + j;
            out[pq] = (h >= 0 && h < H && w >= 0 && w < W) ? plane[h * W + w] : 0.0f;
        }
    }
}

// The adjoint of im2col as a gather (no atomics): each thread owns one dx element (n, c, h, w)
// and sums the column-matrix entries that im2col copied it to. Input row h was read by output
// row p at kernel offset i when h = p*sh - ph + i, that is p = (h + ph - i) / sh, which must be
// a whole number in [0, out_h); the same for the columns. Terms are added in the order (i, j),
// as the plain col2im adds its slices, so the two agree to the last bit.
// dcols (K, g*P) -> dx[n0 .. n0+g-1] (every element written once). Row (nn, c) is one plane of dx.
extern "C" __global__ void col2im_chunk(
    const float* __restrict__ dcols, int C, int H, int W, int n0, int g,
    int kh, int kw, int sh, int sw, int ph, int pw, int out_h, int out_w,
    float* __restrict__ dx)
{
    const int P = out_h * out_w;
    const long long GP = (long long)g * P;
    ROW_LOOP(row, (long long)g * C) {
        const int c = (int)(row % C);              // row = nn*C + c
        const int nn = (int)(row / C);
        const float* col0 = dcols + (long long)nn * P;   // column nn*P of row k = 0
        float* out = dx + ((long long)n0 * C + row) * H * W;
        ALONG_ROW(hw, H * W) {
            const int h = hw / W, w = hw - h * W;
            float sum = 0.0f;
            for (int i = 0; i < kh; ++i) {
                int p = h + ph - i;                // = p*sh when output row p used this row
                if (p < 0) continue;
                if (sh != 1) { if (p % sh != 0) continue; p /= sh; }
                if (p >= out_h) continue;
                for (int j = 0; j < kw; ++j) {
                    int q = w + pw - j;            // = q*sw when output column q used it
                    if (q < 0) continue;
                    if (sw != 1) { if (q % sw != 0) continue; q /= sw; }
                    if (q >= out_w) continue;
                    const int k = (c * kh + i) * kw + j;
                    sum += col0[k * GP + p * out_w + q];
                }
            }
            out[hw] = sum;
        }
    }
}

// ychunk (C_out, g*P) -> y[n0 + nn, o, :] = ychunk[o, nn*P : (nn+1)*P] + b[o] (no b if !has_bias).
// Row (nn, o) is one plane of y.
extern "C" __global__ void chunk_to_nchw(
    const float* __restrict__ ychunk, const float* __restrict__ b, int has_bias,
    int C_out, int P, int n0, int g, float* __restrict__ y)
{
    ROW_LOOP(row, (long long)g * C_out) {
        const int o = (int)(row % C_out);          // row = nn*C_out + o
        const int nn = (int)(row / C_out);
        const float* src = ychunk + ((long long)o * g + nn) * P;
        float* dst = y + ((long long)n0 * C_out + row) * P;
        const float bias = has_bias ? b[o] : 0.0f;
        ALONG_ROW(pq, P) dst[pq] = src[pq] + bias;
    }
}

// dy[n0 .. n0+g-1] (N, C_out, P) -> dychunk (C_out, g*P): the inverse reshuffle of chunk_to_nchw.
// Row (o, nn) is dychunk[o, nn*P : (nn+1)*P].
extern "C" __global__ void nchw_to_chunk(
    const float* __restrict__ dy, int C_out, int P, int n0, int g, float* __restrict__ dychunk)
{
    ROW_LOOP(row, (long long)C_out * g) {
        const int nn = (int)(row % g);             // row = o*g + nn
        const int o = (int)(row / g);
        const float* src = dy + ((long long)(n0 + nn) * C_out + o) * P;
        float* dst = dychunk + row * P;
        ALONG_ROW(pq, P) dst[pq] = src[pq];
    }
}
