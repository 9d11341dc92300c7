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

// One m64n8k16 wgmma over zeros in 2304 bytes of shared memory (A [64][16], B [8][16], K-major):
// with or without wgmma.fence before it, fence.proxy.async after the stores, the wait after it,
// and with thread 0 storing to an operand while the wgmma may still read it (`overwrite`).
__device__ void selftest_wgmma_once(SelftestParams p, bool fence, bool proxy, bool wait, bool overwrite = false) {
    GQLA_DYNAMIC_SHARED(u16, sm);
    for (int i = threadIdx.x; i < 64 * 16 + 8 * 16; i += blockDim.x) sm[i] = 0;
    if (proxy) fence_proxy_async();
    __syncthreads();
    float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (fence) wgmma_fence();
    wgmma<1, 8, false>(d, desc_k_major(sm, 16, 0), desc_k_major(sm + 64 * 16, 16, 0));
    wgmma_commit();
    if (overwrite && threadIdx.x == 0) sm[64 * 16] = 0x3f80;
    if (wait) wgmma_wait<0, 4>(d);
    if (threadIdx.x == 0) st(p.out, 0, d[0]);
}

// A correct one.
extern "C" __global__ void selftest_wgmma_ok(SelftestParams p) { selftest_wgmma_once(p, true, true, true); }

// A wgmma with no wgmma.fence before it.
extern "C" __global__ void selftest_wgmma_without_fence(SelftestParams p) { selftest_wgmma_once(p, false, true, true); }

// A wgmma still in flight when its threads return.
extern "C" __global__ void selftest_wgmma_unwaited(SelftestParams p) { selftest_wgmma_once(p, true, true, false); }

// Operands stored with no fence.proxy.async before the wgmma that reads them.
extern "C" __global__ void selftest_wgmma_without_proxy_fence(SelftestParams p) { selftest_wgmma_once(p, true, false, true); }

// An operand stored to while the wgmma that reads it is not yet waited for.
extern "C" __global__ void selftest_wgmma_operand_overwritten(SelftestParams p) { selftest_wgmma_once(p, true, true, true, true); }

// A wgmma whose B operand (8 x 16 at byte 2048) lies past the block's shared memory when the
// launch gives it only A's 2048 bytes.
extern "C" __global__ void selftest_wgmma_outside_shared(SelftestParams p) {
    GQLA_DYNAMIC_SHARED(u16, sm);
    for (int i = threadIdx.x; i < 64 * 16; i += blockDim.x) sm[i] = 0;
    fence_proxy_async();
    __syncthreads();
    float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    wgmma_fence();
    wgmma<1, 8, false>(d, desc_k_major(sm, 16, 0), desc_k_major(sm + 64 * 16, 16, 0));
    wgmma_commit();
    wgmma_wait<0, 4>(d);
    if (threadIdx.x == 0) st(p.out, 0, d[0]);
}

// Threads 0 and 32 (two warps) store to one shared word, with a __syncthreads between the two
// stores when p.n > 1.
extern "C" __global__ void selftest_shared_store_race(SelftestParams p) {
    GQLA_DYNAMIC_SHARED(float, sm);
    if (threadIdx.x == 0) sm[0] = 1.0f;
    if (p.n > 1) __syncthreads();
    if (threadIdx.x == 32) sm[0] = 2.0f;
    __syncthreads();
    if (threadIdx.x == 0) st(p.out, 0, sm[0]);
}

// Warp 1 stores the rows warp 0 reads by ldmatrix, with a __syncthreads between when p.n > 1.
extern "C" __global__ void selftest_ldmatrix_race(SelftestParams p) {
    GQLA_DYNAMIC_SHARED(u16, sm);
    if (threadIdx.x >= 32) {
        for (int i = threadIdx.x - 32; i < 4 * 64; i += 32) sm[i] = 0x3f80;
    }
    if (p.n > 1) __syncthreads();
    if (threadIdx.x < 32) {
        unsigned r[4];
        ldsm<4, false>(r, sm + 8 * (threadIdx.x & 31));
        if (threadIdx.x == 0) st(p.out, 0, (float)r[0]);
    }
}

// Thread 0 copies 16 bytes (of out, p.n >= 4) into shared memory by cp.async; thread 1 (p.n > 4:
// thread 0 itself) stores to them before the copy is waited for.
extern "C" __global__ void selftest_cp_async_overwrite(SelftestParams p) {
    GQLA_DYNAMIC_SHARED(u16, sm);
    if (threadIdx.x == 0) {
        cp_async16(sm, (const u16*)p.out, true);
        cp_async_commit();
    }
    __syncthreads();
    if (threadIdx.x == (p.n > 4 ? 0 : 1)) sm[3] = 1;
    __syncthreads();
    if (threadIdx.x == 0) cp_async_wait<0>();
    __syncthreads();
}

// A cp.async to the 16 bytes just past the launch's p.n bytes of shared memory.
extern "C" __global__ void selftest_cp_async_outside_shared(SelftestParams p) {
    GQLA_DYNAMIC_SHARED(u16, sm);
    cp_async16(sm + p.n / 2, (const u16*)p.out, true);
    cp_async_commit();
    cp_async_wait<0>();
}

// Thread i stores i to shared word i, and (no barrier) thread i > 0 reads word i - 1: right when
// threads run in index order, NaN (shared memory's initial pattern) when the reader runs first.
extern "C" __global__ void selftest_missing_barrier(SelftestParams p) {
    GQLA_DYNAMIC_SHARED(float, sm);
    const int i = threadIdx.x;
    sm[i] = (float)i;
    st(p.out, i, sm[i > 0 ? i - 1 : 0]);
}
