// Host emulation of the CUDA subset the kernels (kernels/) use, so the very same kernel source runs on a CPU
// (crate gqla-cuda, module `emu`). Every CUDA thread is a fiber; the fibers of one block run
// interleaved on one OS thread, switching only at __syncthreads and warp collectives, which is
// where CUDA's own ordering guarantees are. Blocks are spread over OS threads.
//
// What it checks, beyond running the code:
// - every global load and store through ld()/st() must stay inside the buffer its base pointer
//   points into (the buffers of the launch); a stray access is reported, never performed;
// - every thread of a block reaches the same __syncthreads, and every lane of a warp the same
//   shuffle (a divergent barrier is a deadlock on hardware and an error here);
// - mma.sync and ldmatrix follow PTX's fragment layouts as warp collectives, and ldmatrix rows are
//   16 aligned bytes of the block's shared memory;
// - wgmma reads its operands through PTX's matrix descriptors (canonical no-swizzle layouts) as a
//   warpgroup collective, and its accumulators change only at wgmma_wait (reading them earlier
//   gives the old values, as on hardware); a wgmma without a fence, or in flight at exit, is an error.
// With the launch's shared-memory checks on (they compare the block's shared memory at every
// collective, so they are for small launches), it also attributes every changed shared byte to the
// thread that wrote it and reports:
// - two threads writing one byte with no __syncthreads (or, within a warp, no warp collective)
//   between them, and a write to a byte another thread read that way (ldmatrix, wgmma);
// - ldmatrix or wgmma reading a byte another thread wrote that way, or one a cp.async is still
//   writing; any store to bytes a cp.async in flight or an unwaited wgmma may still touch;
// - wgmma reading a byte written since the last __syncthreads, or whose writer has not executed
//   fence.proxy.async since writing it (the async proxy would not see it);
// Plain shared loads are not seen. The launch can also run a block's threads in reverse or
// shuffled order, so that a read that misses a barrier reads the NaN the block's shared memory
// starts as, or a stale value, and the output shows it.
// It does not model timing or memory ordering between blocks.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#define GQLA_EMULATION 1

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__
// Static shared arrays would be per-OS-thread statics here: never NaN-filled per block, never
// checked. Kernels use dynamic shared memory (GQLA_DYNAMIC_SHARED) only.
#define __shared__ _Pragma("GCC error \"static __shared__ arrays escape the emulator's checks: use GQLA_DYNAMIC_SHARED\"")
// Dynamic shared memory: the running block's buffer.
#define GQLA_DYNAMIC_SHARED(T, name) T* name = (T*)gqla_emu::dynamic_shared()

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
struct alignas(16) uint4 {
    unsigned x, y, z, w;
};

namespace gqla_emu {

struct ThreadPos {
    dim3 thread, block, block_dim, grid_dim;
};
const ThreadPos& pos();
void* dynamic_shared();
void sync_block(const char* file, int line);
void sync_warp(const char* file, int line);
uint64_t shuffle_xor(uint64_t bits, int lane_mask, unsigned member_mask, const char* file, int line);
bool check_access(const void* base, long long index, unsigned size, bool store, const char* file, int line);
// cp.async: a 16-byte copy queued by this thread (zeros when !valid), landing at cp_async_wait.
void cp_async16(void* dst_shared, const void* src, bool valid, const char* file, int line);
void cp_async_commit();
// Perform this thread's oldest committed groups until at most `pending` remain.
void cp_async_wait(int pending);
// d += A B for one m16n8k16 tile, A and B of 16-bit floats (kind 1 bf16, 2 f16) in the fragment
// layout of PTX's mma.sync.aligned.m16n8k16.row.col.f32, accumulated in f32. A warp collective.
void mma_m16n8k16(int kind, float d[4], const unsigned a[4], const unsigned b[2], const char* file, int line);
// ldmatrix.sync.aligned.m8n8.x{n}{.trans}.shared.b16: lane 8 i + j gives the shared address of row j
// of matrix i (16 bytes); r[i] gets this lane's two elements of matrix i (transposed with trans).
// A warp collective; every used row must lie in the block's shared memory, 16-byte aligned.
void ldmatrix(int n, bool trans, const void* row, unsigned r[4], const char* file, int line);
// The shared-state-space address of a pointer into the block's dynamic shared memory (its offset).
unsigned shared_offset(const void* p);
// wgmma.mma_async.sync.aligned.m64n{n}k16.f32 with A and B by matrix descriptor (no swizzle;
// B MN-major when trans_b): a warpgroup collective whose result lands in d at wgmma_wait. Every
// operand element must lie in the block's shared memory; the 128 threads must pass the same
// descriptors; a wgmma needs a wgmma_fence since the thread's last wgmma_wait.
void wgmma(int kind, int n, bool trans_b, float* d, uint64_t desc_a, uint64_t desc_b, const char* file, int line);
void wgmma_fence();
// fence.proxy.async.shared::cta: this thread's shared-memory writes so far become visible to wgmma.
void fence_proxy_async(const char* file, int line);
void wgmma_commit();
// Land this thread's oldest committed wgmma groups until at most `pending` remain.
void wgmma_wait(int pending);

template <typename T>
inline T shfl_xor(unsigned mask, T x, int lane_mask, const char* file, int line) {
    static_assert(sizeof(T) <= 8, "shuffles move at most 8 bytes");
    uint64_t bits = 0;
    std::memcpy(&bits, &x, sizeof(T));
    bits = shuffle_xor(bits, lane_mask, mask, file, line);
    T r;
    std::memcpy(&r, &bits, sizeof(T));
    return r;
}

// Round to nearest even; NaN stays NaN (quiet).
inline uint16_t f32_to_bf16_bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

inline float f16_bits_to_f32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    uint32_t u;
    if (exp == 0x1f) {
        u = sign | 0x7f800000u | (man << 13);
    } else if (exp != 0) {
        u = sign | ((exp + 112) << 23) | (man << 13);
    } else if (man == 0) {
        u = sign;
    } else {
        // Subnormal: value = man * 2^-24, exact in f32.
        float f = (float)man * 5.9604644775390625e-8f;
        std::memcpy(&u, &f, 4);
        u |= sign;
    }
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

// Round to nearest even, with overflow to infinity and gradual underflow.
inline uint16_t f32_to_f16_bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    const uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    const uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return sign | 0x7e00u;
    if (a >= 0x477ff000u) return sign | 0x7c00u;  // >= 65520 rounds to infinity
    if (a < 0x38800000u) {
        // Below the smallest normal (2^-14): multiples of 2^-24, nearbyint rounds to even.
        const float m = std::nearbyint(std::fabs(f) * 16777216.0f);
        return sign | (uint16_t)m;
    }
    uint32_t r = a - 0x38000000u;  // rebias the exponent by 112 (scaled by 2^23)
    r += 0xfffu + ((r >> 13) & 1u);
    return sign | (uint16_t)(r >> 13);
}

}  // namespace gqla_emu

#define threadIdx (gqla_emu::pos().thread)
#define blockIdx (gqla_emu::pos().block)
#define blockDim (gqla_emu::pos().block_dim)
#define gridDim (gqla_emu::pos().grid_dim)
#define __syncthreads() gqla_emu::sync_block(__FILE__, __LINE__)
#define __syncwarp(...) gqla_emu::sync_warp(__FILE__, __LINE__)
#define __shfl_xor_sync(mask, x, lane_mask) gqla_emu::shfl_xor(mask, x, lane_mask, __FILE__, __LINE__)

inline float __int_as_float(int x) {
    float f;
    std::memcpy(&f, &x, 4);
    return f;
}
inline float __uint_as_float(unsigned x) {
    float f;
    std::memcpy(&f, &x, 4);
    return f;
}
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }

// Checked global memory access (the kernels' ld/st), reported at the caller's file and line.
template <typename T>
inline T ld(const T* p, long long i, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    return gqla_emu::check_access(p, i, sizeof(T), false, file, line) ? p[i] : T();
}
template <typename T>
inline void st(T* p, long long i, T x, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    if (gqla_emu::check_access(p, i, sizeof(T), true, file, line)) p[i] = x;
}
