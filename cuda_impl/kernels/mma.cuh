// mma.sync building blocks for attn_tc.cu: the m16n8k16 product, ldmatrix, 16-bit shared tiles.

// d += A B on tensor cores: one m16n8k16 tile, A (16 x 16, row) and B (16 x 8, col) of 16-bit
// floats packed two per register (lower column / row in the low half), f32 accumulators. Fragment
// layout of lane (g, t) = (lane / 4, lane % 4): a = {A[g][2t..], A[g+8][2t..], A[g][2t+8..],
// A[g+8][2t+8..]}, b = {B[2t..][g], B[2t+8..][g]}, d = {D[g][2t], D[g][2t+1], D[g+8][2t], D[g+8][2t+1]}.
template <int E>
__device__ __forceinline__ void mma16816(float d[4], const unsigned a[4], const unsigned b[2]) {
#ifdef GQLA_EMULATION
    gqla_emu::mma_m16n8k16(E, d, a, b, __FILE__, __LINE__);
#else
    if (E == 1) {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    } else {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    }
#endif
}

// Two 16-bit values as one register, `lo` in the low half.
__device__ __forceinline__ unsigned pack2(u16 lo, u16 hi) { return (unsigned)lo | ((unsigned)hi << 16); }

#ifndef GQLA_EMULATION
// The shared-state-space address of a generic pointer into shared memory.
__device__ __forceinline__ unsigned shared_addr(const void* p) {
    unsigned s;
    asm volatile("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(s) : "l"(p));
    return s;
}
#endif

// N (2 or 4) 8 x 8 matrices of 16-bit values from shared memory (ldmatrix): lane 8 i + j passes
// `row`, the 16-byte-aligned address of row j of matrix i (lanes 16-31 unused when N = 2).
// r[i] = this lane's two elements of matrix i in the mma fragment layout: row g, columns 2t and
// 2t + 1; with TRANS, rows 2t and 2t + 1 of column g (the fragment of the transpose).
template <int N, bool TRANS>
__device__ __forceinline__ void ldsm(unsigned (&r)[N], const u16* row) {
#ifdef GQLA_EMULATION
    gqla_emu::ldmatrix(N, TRANS, row, r, __FILE__, __LINE__);
#else
    const unsigned a = shared_addr(row);
    if constexpr (N == 4 && !TRANS) {
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
    } else if constexpr (N == 4) {
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
    } else if constexpr (!TRANS) {
        asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];" : "=r"(r[0]), "=r"(r[1]) : "r"(a));
    } else {
        asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];" : "=r"(r[0]), "=r"(r[1]) : "r"(a));
    }
#endif
}

template <int E> __device__ __forceinline__ u16 to_storage(float x);
template <> __device__ __forceinline__ u16 to_storage<1>(float x) { return f32_to_bf16(x); }
template <> __device__ __forceinline__ u16 to_storage<2>(float x) { return f32_to_f16(x); }

// Round x up to a multiple of 16.
__device__ __forceinline__ int up16(int x) { return (x + 15) & ~15; }

// Where element (r, c) of a 16-bit shared tile of `w` columns (w a multiple of 16, rows a multiple
// of 8) lives: rows padded by MMA_PAD, for ldmatrix (CORE false); or 8 x 8 core matrices,
// [r / 8][c / 8][r % 8][c % 8], the no-swizzle layout wgmma descriptors address (CORE true).
template <bool CORE>
struct TileLayout {
    int w;
    __device__ __forceinline__ int ld() const { return w + MMA_PAD; } // row stride when !CORE
    __device__ __forceinline__ int at(int r, int c) const {
        if constexpr (CORE) return (((r >> 3) * (w >> 3) + (c >> 3)) << 6) + ((r & 7) << 3) + (c & 7);
        else return r * ld() + c;
    }
    __device__ __forceinline__ int elems(int rows) const { return CORE ? rows * w : rows * ld(); }
};
