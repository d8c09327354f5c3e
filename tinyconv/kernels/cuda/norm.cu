// BatchNorm2D (training) for the GPU path (tinyconv/ops/norm_cuda.py), float32 data with
// float64 sums, optionally fused with the ReLU that follows it.
//
// x is (N, C, HW); channel c owns M = N*HW elements; element e = n*HW + r of channel c lives at
//   x[(n*C + c)*HW + r].
// Per-channel sums take three launches, without shared memory or atomics:
//   *_partial:  grid (S / blockDim.x, C); thread (c = blockIdx.y, slot s) sums elements
//               e = s, s+S, s+2S, ... of channel c into partial[c, 0 or 1, s]. Neighbouring threads
//               read neighbouring addresses (coalesced loads).
//   a CuPy sum over the slots: sums (C, 2);  *_finalize: one thread per channel.
// The elementwise kernels walk planes: blockIdx.y (striding by gridDim.y) picks plane n*C + c, the
// x threads stride along its HW elements; the channel c = plane % C costs one division per plane.

#define ROW_LOOP(row, rows)                                                       \
    for (long long row = blockIdx.y; row < (rows); row += gridDim.y)
#define ALONG_ROW(r, len)                                                         \
    for (int r = blockIdx.x * blockDim.x + threadIdx.x; r < (len); r += blockDim.x * gridDim.x)
#define CHANNEL_LOOP(c, C)                                                        \
    for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < (C); c += blockDim.x * gridDim.x)

// Shifted sums of x per channel: s1 = sum d, s2 = sum d^2, d = x - shift, shift = x[0, c, 0] (as the
// CPU kernel): E[d^2] - E[d]^2 keeps its digits when |mean| >> std.
extern "C" __global__ void bn_stats_partial(
    const float* __restrict__ x, int N, int C, int HW, double* __restrict__ partial)
{
    const int c = blockIdx.y;
    const int S = gridDim.x * blockDim.x;
    const int s = blockIdx.x * blockDim.x + threadIdx.x;
    const double shift = (double)x[(long long)c * HW];
    double s1 = 0.0, s2 = 0.0;
    // e = n*HW + r walks s, s+S, ...; with S = Sd*HW + Sm, the next e is n + Sd (+1 on carry), r + Sm
    const int Sd = S / HW, Sm = S - Sd * HW;
    int n = s / HW, r = s - n * HW;
    while (n < N) {
        const double d = (double)x[((long long)n * C + c) * HW + r] - shift;
        s1 += d;
        s2 += d * d;
        n += Sd;
        r += Sm;
        if (r >= HW) { r -= HW; ++n; }
    }
    partial[((long long)c * 2 + 0) * S + s] = s1;
    partial[((long long)c * 2 + 1) * S + s] = s2;
}

// Per channel, from sums (C, 2) = (sum d, sum d^2): mean, inv_std = 1/sqrt(var + eps) (biased var),
// and the running statistics
//   running_mean = running_mean*(1 - momentum) + momentum*mean
//   running_var  = running_var*(1 - momentum) + (momentum*M/(M-1))*var   (unbiased, PyTorch's rule)
// in the float32 operations, and order, of the plain path (the scalars come from the host).
extern "C" __global__ void bn_stats_finalize(
    const double* __restrict__ sums, int C, int HW, long long M, const float* __restrict__ x,
    float eps, float one_minus_momentum, float momentum, float var_factor,
    float* __restrict__ mean, float* __restrict__ inv_std,
    float* __restrict__ running_mean, float* __restrict__ running_var)
{
    CHANNEL_LOOP(c, C) {
        const double m1 = sums[2 * c] / (double)M;
        const double mean_d = (double)x[(long long)c * HW] + m1;     // shift + E[d]
        double var_d = sums[2 * c + 1] / (double)M - m1 * m1;
        if (var_d < 0.0) var_d = 0.0;
        const float mu = (float)mean_d, var = (float)var_d;
        mean[c] = mu;
        inv_std[c] = 1.0f / sqrtf(var + eps);
        running_mean[c] = running_mean[c] * one_minus_momentum + momentum * mu;
        running_var[c] = running_var[c] * one_minus_momentum + var_factor * var;
    }
}

// y = gamma*((x - mean)*inv_std) + beta, then max(y, 0) when relu is set (the fused ReLU).
extern "C" __global__ void bn_forward(
    const float* __restrict__ x, long long planes, int C, int HW,
    const float* __restrict__ mean, const float* __restrict__ inv_std,
    const float* __restrict__ gamma, const float* __restrict__ beta, int relu, float* __restrict__ y)
{
    ROW_LOOP(plane, planes) {
        const int c = (int)(plane % C);
        const float mu = mean[c], istd = inv_std[c], ga = gamma[c], be = beta[c];
        const float* src = x + plane * HW;
        float* dst = y + plane * HW;
        ALONG_ROW(r, HW) {
            float v = ga * ((src[r] - mu) * istd) + be;
            if (relu) v = v > 0.0f ? v : 0.0f;
            dst[r] = v;
        }
    }
}

// Per channel: s1 = sum g, s2 = sum g*xhat, xhat = (x - mean)*inv_std, with g = dy masked by the
// fused ReLU when relu is set: y > 0 exactly where the ReLU's input was > 0 (the subgradient at 0
// is 0, as ReLU's). y is not read when relu is 0.
extern "C" __global__ void bn_backward_partial(
    const float* __restrict__ x, const float* __restrict__ dy, const float* __restrict__ y, int relu,
    int N, int C, int HW, const float* __restrict__ mean, const float* __restrict__ inv_std,
    double* __restrict__ partial)
{
    const int c = blockIdx.y;
    const int S = gridDim.x * blockDim.x;
    const int s = blockIdx.x * blockDim.x + threadIdx.x;
    const float mu = mean[c], istd = inv_std[c];
    double s1 = 0.0, s2 = 0.0;
    const int Sd = S / HW, Sm = S - Sd * HW;          // the walk of bn_stats_partial
    int n = s / HW, r = s - n * HW;
    while (n < N) {
        const long long off = ((long long)n * C + c) * HW + r;
        const float g = (relu && !(y[off] > 0.0f)) ? 0.0f : dy[off];
        const float xhat = (x[off] - mu) * istd;
        s1 += (double)g;
        s2 += (double)g * (double)xhat;
        n += Sd;
        r += Sm;
        if (r >= HW) { r -= HW; ++n; }
    }
    partial[((long long)c * 2 + 0) * S + s] = s1;
    partial[((long long)c * 2 + 1) * S + s] = s2;
}

// dbeta[c] = sum g, dgamma[c] = sum g*xhat (rounded to float32), straight into the grads arrays.
extern "C" __global__ void bn_backward_finalize(
    const double* __restrict__ sums, int C, float* __restrict__ dbeta, float* __restrict__ dgamma)
{
    CHANNEL_LOOP(c, C) {
        dbeta[c] = (float)sums[2 * c];
        dgamma[c] = (float)sums[2 * c + 1];
    }
}

// dx = (gamma*inv_std / M) * (M*g - dbeta - xhat*dgamma): the direct path through xhat, the path
// through the mean and the path through the variance (see BatchNorm2D's docstring).
extern "C" __global__ void bn_backward_dx(
    const float* __restrict__ x, const float* __restrict__ dy, const float* __restrict__ y, int relu,
    long long planes, int C, int HW, const float* __restrict__ mean,
    const float* __restrict__ inv_std, const float* __restrict__ gamma,
    const float* __restrict__ dbeta, const float* __restrict__ dgamma, float m,
    float* __restrict__ dx)
{
    ROW_LOOP(plane, planes) {
        const int c = (int)(plane % C);
        const float mu = mean[c], istd = inv_std[c], db = dbeta[c], dg = dgamma[c];
        const float scale = gamma[c] * istd / m;
        const long long base = plane * HW;
        ALONG_ROW(r, HW) {
            const long long off = base + r;
            const float g = (relu && !(y[off] > 0.0f)) ? 0.0f : dy[off];
            const float xhat = (x[off] - mu) * istd;
            dx[off] = scale * (m * g - db - xhat * dg);
        }
    }
}
