// Kernels for the emulator's own tests (cuda_impl/tests/emu.rs): one that uses warp shuffles
// correctly, and some that break CUDA's rules on purpose, which the emulator must report.

struct SelftestParams {
    float* out;
    int n;
};

// out[w] = sum over warp w of (linear thread index), by an xor-shuffle butterfly.
extern "C" __global__ void selftest_warp_sum(SelftestParams p) {
    float x = (float)threadIdx.x;
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    if ((threadIdx.x & 31) == 0) st(p.out, threadIdx.x / 32, x);
}

// Half the block waits at one __syncthreads, half at another.
extern "C" __global__ void selftest_divergent_sync(SelftestParams p) {
    if (threadIdx.x < 64) {
        __syncthreads();
    } else {
        __syncthreads();
    }
    st(p.out, 0, 1.0f);
}

// Half the block returns without reaching the barrier the other half waits at.
extern "C" __global__ void selftest_skipped_sync(SelftestParams p) {
    if (threadIdx.x < 64) __syncthreads();
    st(p.out, 0, 1.0f);
}

// A shuffle over half a warp (the emulator only models whole-warp shuffles).
extern "C" __global__ void selftest_partial_shuffle(SelftestParams p) {
    const float x = __shfl_xor_sync(0x0000ffffu, 1.0f, 1);
    st(p.out, 0, x);
}

// Thread i stores element n + i: every thread but none is past the end of an n-element buffer.
extern "C" __global__ void selftest_store_past_end(SelftestParams p) { st(p.out, p.n + (int)threadIdx.x, 1.0f); }

// ldmatrix rows in shared memory the launch does not have (it has none).
extern "C" __global__ void selftest_ldmatrix_outside_shared(SelftestParams p) {
    GQLA_DYNAMIC_SHARED(u16, sm);
    unsigned r[4];
    ldsm<4, false>(r, sm + 8 * (threadIdx.x & 31));
    st(p.out, 0, (float)r[0]);
}

// One m64n8k16 wgmma over zeros in 2304 bytes of shared memory (A [64][16], B [8][16], K-major).
__device__ void selftest_wgmma_once(SelftestParams p, bool fence, bool wait) {
    GQLA_DYNAMIC_SHARED(u16, sm);
    for (int i = threadIdx.x; i < 64 * 16 + 8 * 16; i += blockDim.x) sm[i] = 0;
    __syncthreads();
    float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (fence) wgmma_fence();
    wgmma<1, 8, false>(d, desc_k_major(sm, 16, 0), desc_k_major(sm + 64 * 16, 16, 0));
    wgmma_commit();
    if (wait) wgmma_wait<0, 4>(d);
    st(p.out, 0, d[0]);
}

// A wgmma with no wgmma.fence before it.
extern "C" __global__ void selftest_wgmma_without_fence(SelftestParams p) { selftest_wgmma_once(p, false, true); }

// A wgmma still in flight when its threads return.
extern "C" __global__ void selftest_wgmma_unwaited(SelftestParams p) { selftest_wgmma_once(p, true, false); }
