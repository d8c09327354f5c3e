// Max pooling (floor mode) for the GPU path of MaxPool2D (tinyconv/ops/pool_cuda.py), float32.
//
// x is seen as NC planes of H x W; y and argmax as NC planes of out_h x out_w.
//   y[plane, p, q] = max over i < kh, j < kw of x[plane, p*sh + i, q*sw + j]
//   argmax[plane, p, q] = i*kw + j of the first maximum (row-major in the window), as the
//   plain path and PyTorch choose on ties: a later value replaces the best only if strictly larger.
// Floor mode: every window lies inside the plane, so no bounds checks on x.
// blockIdx.y (striding by gridDim.y) picks the plane; the x threads stride along it.

#define ROW_LOOP(row, rows)                                                       \
    for (long long row = blockIdx.y; row < (rows); row += gridDim.y)
#define ALONG_ROW(r, len)                                                         \
    for (int r = blockIdx.x * blockDim.x + threadIdx.x; r < (len); r += blockDim.x * gridDim.x)

extern "C" __global__ void maxpool_forward(
    const float* __restrict__ x, long long planes, int H, int W, int kh, int kw, int sh, int sw,
    int out_h, int out_w, float* __restrict__ y, unsigned char* __restrict__ argmax)
{
    ROW_LOOP(plane, planes) {
        const float* src = x + plane * H * W;
        const long long base = plane * out_h * out_w;
        ALONG_ROW(pq, out_h * out_w) {
            const int p = pq / out_w, q = pq - p * out_w;
            const float* window = src + (p * sh) * W + q * sw;
            float best = window[0];
            int arg = 0;
            for (int i = 0; i < kh; ++i) {
                for (int j = 0; j < kw; ++j) {
                    const float v = window[i * W + j];
                    if (v > best) { best = v; arg = i * kw + j; }
                }
            }
            y[base + pq] = best;
            argmax[base + pq] = (unsigned char)arg;
        }
    }
}

// Backward as a gather (no atomics, no zeroing pass): each thread owns one dx element
// (plane, h, w) and adds dy of every window that chose it. Input row h sits at offset i of
// output row p when h = p*sh + i. Windows that do not overlap (stride >= kernel, the 2x2 stride 2
// case) hold each input at most once: p = h / sh, i = h % sh, and i >= kh means no window (a
// gap); rows or columns that floor mode dropped (p >= out_h) get 0.
extern "C" __global__ void maxpool_backward(
    const float* __restrict__ dy, const unsigned char* __restrict__ argmax, long long planes,
    int H, int W, int kh, int kw, int sh, int sw, int out_h, int out_w, float* __restrict__ dx)
{
    const bool disjoint = sh >= kh && sw >= kw;
    ROW_LOOP(plane, planes) {
        const long long base = plane * out_h * out_w;   // first output of this plane
        float* out = dx + plane * H * W;
        ALONG_ROW(hw, H * W) {
            const int h = hw / W, w = hw - h * W;
            float sum = 0.0f;
            if (disjoint) {
                const int p = h / sh, i = h - p * sh, q = w / sw, j = w - q * sw;
                if (i < kh && j < kw && p < out_h && q < out_w) {
                    const long long o = base + p * out_w + q;
                    if (argmax[o] == i * kw + j) sum = dy[o];
                }
            } else {
                for (int i = 0; i < kh; ++i) {
                    const int hp = h - i;          // = p*sh if output row p reads row h at offset i
                    if (hp < 0 || hp % sh != 0 || hp / sh >= out_h) continue;
                    for (int j = 0; j < kw; ++j) {
                        const int wq = w - j;
                        if (wq < 0 || wq % sw != 0 || wq / sw >= out_w) continue;
                        const long long o = base + (hp / sh) * out_w + wq / sw;
                        if (argmax[o] == i * kw + j) sum += dy[o];
                    }
                }
            }
            out[hw] = sum;
        }
    }
}
