// wgmma building blocks for attn_tc.cu (sm_90a), and cp.async.

// ---- wgmma (sm_90a): warpgroup MMA with operands in shared memory -------------------------------
// A matrix descriptor (PTX "matrix descriptor format"): start address, leading and stride byte
// offsets, each >> 4; base offset 0 and no swizzle. Canonical no-swizzle layouts, T = 8 elements:
//   K-major  ((8,m),(T,2k)):((1T,SBO),(1,LBO)): row r, column k at (r%8)*16 + (r/8)*SBO + (k%8)*2 + (k/8)*LBO bytes;
//   MN-major ((T,1,m),(8,k)):((1,T,SBO),(1T,LBO)): k, n at (n%8)*2 + (n/8)*SBO + (k%8)*16 + (k/8)*LBO bytes.
// CUTLASS's make_gmma_desc reads the no-swizzle ("interleave") layouts the same way: K-major, SBO
// steps 8 rows and LBO the next 8 columns of k; MN-major, SBO steps 8 columns of n and LBO 8 rows of k.
#ifdef GQLA_EMULATION
inline unsigned shared_addr(const void* p) { return gqla_emu::shared_offset(p); }
#endif
__device__ __forceinline__ unsigned long long wg_desc(const u16* start, int lbo_bytes, int sbo_bytes) {
    return (unsigned long long)((shared_addr(start) & 0x3FFFF) >> 4) | ((unsigned long long)(lbo_bytes >> 4) << 16) |
           ((unsigned long long)(sbo_bytes >> 4) << 32);
}
// K-major operand: rows 0.. of a core tile of width w, columns [k0, k0 + 16) (k0 a multiple of 8).
__device__ __forceinline__ unsigned long long desc_k_major(const u16* tile, int w, int k0) {
    return wg_desc(tile + (k0 >> 3) * 64, 128, w * 16);
}
// MN-major operand B[k][n] = tile(k0 + k, n0 + n) of a core tile of width w whose rows are k.
__device__ __forceinline__ unsigned long long desc_mn_major(const u16* tile, int w, int k0, int n0) {
    return wg_desc(tile + ((k0 >> 3) * (w >> 3) + (n0 >> 3)) * 64, w * 16, 128);
}

#define WG_REGS4(a, b, c, d) "%" #a ", %" #b ", %" #c ", %" #d
#define WG_D8 "{" WG_REGS4(0, 1, 2, 3) "}"
#define WG_D32 "{" WG_REGS4(0, 1, 2, 3) ", " WG_REGS4(4, 5, 6, 7) ", " WG_REGS4(8, 9, 10, 11) ", " WG_REGS4(12, 13, 14, 15) "}"
#define WG_D64                                                                                                              \
    "{" WG_REGS4(0, 1, 2, 3) ", " WG_REGS4(4, 5, 6, 7) ", " WG_REGS4(8, 9, 10, 11) ", " WG_REGS4(12, 13, 14, 15) ", " WG_REGS4( \
        16, 17, 18, 19) ", " WG_REGS4(20, 21, 22, 23) ", " WG_REGS4(24, 25, 26, 27) ", " WG_REGS4(28, 29, 30, 31) "}"
// One wgmma.mma_async, D (f32, scale-d 1: accumulate) += A B with both operands by descriptor.
// Operands IA, IB: descriptors; IONE: a register holding 1 (scale-d); ITB: imm-trans-b.
#define WG_MMA(SHAPE, TY, DREGS, IA, IB, IONE, ITB)                                                                 \
    "{ .reg .pred p; setp.ne.b32 p, %" #IONE ", 0; wgmma.mma_async.sync.aligned." SHAPE ".f32." TY "." TY " " DREGS \
    ", %" #IA ", %" #IB ", p, 1, 1, 0, %" #ITB "; }"

// d += A B for one m64nNk16 step of the warpgroup (all 128 threads, uniformly): A (64 x 16) K-major
// at descriptor da, B (16 x N) at db, K-major (TRANS_B false: stored n-rows of k) or MN-major.
// d holds this thread's N / 2 accumulators in PTX's layout: d[4 j + e] is row 16 (warp % 4) +
// lane / 4 + 8 (e / 2), column 8 j + 2 (lane % 4) + e % 2 (the mma.sync m16n8 layout per 8 columns).
// Asynchronous: d is only defined after wgmma_commit and wgmma_wait.
template <int E, int N, bool TRANS_B>
__device__ __forceinline__ void wgmma(float* d, unsigned long long da, unsigned long long db) {
#ifdef GQLA_EMULATION
    gqla_emu::wgmma(E, N, TRANS_B, d, da, db, __FILE__, __LINE__);
#elif defined(__CUDA_ARCH_FEAT_SM90_ALL)
    static_assert(N == 8 || N == 32 || N == 64, "wgmma shapes used here");
    const int one = 1;
#define WG_IN8 "l"(da), "l"(db), "r"(one), "n"(TRANS_B ? 1 : 0)
#define WG_OUT8(o) "+f"(d[o]), "+f"(d[o + 1]), "+f"(d[o + 2]), "+f"(d[o + 3])
#define WG_OUT32(o) WG_OUT8(o), WG_OUT8(o + 4), WG_OUT8(o + 8), WG_OUT8(o + 12)
    if constexpr (N == 8 && E == 1) {
        asm volatile(WG_MMA("m64n8k16", "bf16", WG_D8, 4, 5, 6, 7) : WG_OUT8(0) : WG_IN8 : "memory");
    } else if constexpr (N == 8) {
        asm volatile(WG_MMA("m64n8k16", "f16", WG_D8, 4, 5, 6, 7) : WG_OUT8(0) : WG_IN8 : "memory");
    } else if constexpr (N == 32 && E == 1) {
        asm volatile(WG_MMA("m64n32k16", "bf16", WG_D32, 16, 17, 18, 19) : WG_OUT32(0) : WG_IN8 : "memory");
    } else if constexpr (N == 32) {
        asm volatile(WG_MMA("m64n32k16", "f16", WG_D32, 16, 17, 18, 19) : WG_OUT32(0) : WG_IN8 : "memory");
    } else if constexpr (E == 1) {
        asm volatile(WG_MMA("m64n64k16", "bf16", WG_D64, 32, 33, 34, 35) : WG_OUT32(0), WG_OUT32(16) : WG_IN8 : "memory");
    } else {
        asm volatile(WG_MMA("m64n64k16", "f16", WG_D64, 32, 33, 34, 35) : WG_OUT32(0), WG_OUT32(16) : WG_IN8 : "memory");
    }
#undef WG_IN8
#undef WG_OUT8
#undef WG_OUT32
#endif
}

// Before the first wgmma that reads accumulators other instructions wrote.
__device__ __forceinline__ void wgmma_fence() {
#ifdef GQLA_EMULATION
    gqla_emu::wgmma_fence();
#elif defined(__CUDA_ARCH_FEAT_SM90_ALL)
    asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
#endif
}
// The wgmma issued since the previous commit form one group.
__device__ __forceinline__ void wgmma_commit() {
#ifdef GQLA_EMULATION
    gqla_emu::wgmma_commit();
#elif defined(__CUDA_ARCH_FEAT_SM90_ALL)
    asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
#endif
}
// Tie accumulators d[0..REGS) to this point of the program: no instruction that defines or reads
// one moves across it (before a wgmma_fence, so that no ordinary instruction writes them inside a
// wgmma pipeline stage; after a wgmma_wait, so that none reads them early).
template <int REGS>
__device__ __forceinline__ void wgmma_pin(float* d) {
#if !defined(GQLA_EMULATION) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#pragma unroll
    for (int i = 0; i < REGS; ++i) asm volatile("" : "+f"(d[i])::"memory");
#else
    (void)d;
#endif
}
// Wait until at most N groups are in flight; then the accumulators of the others are defined.
template <int N, int REGS>
__device__ __forceinline__ void wgmma_wait(float* d) {
#ifdef GQLA_EMULATION
    gqla_emu::wgmma_wait(N);
#elif defined(__CUDA_ARCH_FEAT_SM90_ALL)
    asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
#endif
    wgmma_pin<REGS>(d);
}
// Shared memory written by ordinary stores or cp.async, made visible to wgmma (the async proxy).
__device__ __forceinline__ void fence_proxy_async() {
#ifdef GQLA_EMULATION
    gqla_emu::fence_proxy_async(__FILE__, __LINE__);
#elif defined(__CUDA_ARCH_FEAT_SM90_ALL)
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
#endif
}

// Asynchronous 16-byte copy global -> shared (sm_80 cp.async); `valid` false writes zeros and reads
// nothing. Copies land at cp_async_wait; a group is what was issued since the previous commit.
__device__ __forceinline__ void cp_async16(u16* dst, const u16* src, bool valid) {
#ifdef GQLA_EMULATION
    gqla_emu::cp_async16(dst, src, valid, __FILE__, __LINE__);
#else
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(shared_addr(dst)), "l"(src), "r"(valid ? 16 : 0) : "memory");
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#ifdef GQLA_EMULATION
    gqla_emu::cp_async_commit();
#else
    asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}
// Wait until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#ifdef GQLA_EMULATION
    gqla_emu::cp_async_wait(N);
#else
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
#endif
}
