// Adam over every parameter at once (tinyconv/ops/optim_cuda.py): p, g, m, v are the optimizer's flat
// float32 buffers that hold all the model's parameters back to back (the layers' arrays are views
// into them), so one launch updates them all. Same operations, in the same order, as the reference
// (tinyconv/ops/optim.py):
//   m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g^2;  p -= (lr/bc1) * m / (sqrt(v/bc2) + eps)
// with bc1 = 1 - b1^t, bc2 = 1 - b2^t computed on the host and passed by value (no copy, no sync).

#define GRID_STRIDE_LOOP(idx, total)                                             \
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;       \
         idx < (total); idx += (long long)blockDim.x * gridDim.x)

extern "C" __global__ void adam_update(
    float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m, float* __restrict__ v,
    long long n, float b1, float one_minus_b1, float b2, float one_minus_b2, float bc2, float eps,
    float step)
{
    GRID_STRIDE_LOOP(i, n) {
        const float gi = g[i];
        const float mi = m[i] * b1 + one_minus_b1 * gi;
        const float vi = v[i] * b2 + one_minus_b2 * (gi * gi);
        m[i] = mi;
        v[i] = vi;
        p[i] -= step * mi / (sqrtf(vi / bc2) + eps);
    }
}
