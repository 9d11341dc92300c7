// fill_*: seeded random buffers for the benchmark.

// Deterministic pseudo-random values amp * [-1, 1) in n elements at p, for benchmarks (never
// time on zeros).
struct FillParams {
    void* p;
    long long n;
    unsigned seed;
    float amp;
};

template <int E>
__device__ void fill(const FillParams& f) {
    void* p = f.p;
    const long long n = f.n;
    const unsigned seed = f.seed;
    const float amp = f.amp;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        unsigned x = ((unsigned)i * 2654435761u) ^ (unsigned)(i >> 32) ^ seed;
        x ^= x >> 16;
        x *= 0x7feb352du;
        x ^= x >> 15;
        x *= 0x846ca68bu;
        x ^= x >> 16;
        Elem<E>::put(p, i, amp * ((float)(x >> 8) * (2.0f / 16777216.0f) - 1.0f));
    }
}
