// GQLA decode kernels, compiled by NVRTC at run time (see src/compile.rs).
//
// No CUDA headers: bf16/f16 conversions are PTX cvt instructions (sm_80 and later), so the source
// compiles with a bare NVRTC. Every kernel exists for f32, bf16 and f16 storage (suffixes _f32,
// _bf16, _f16) and accumulates in f32.
//
// attn_*: grouped attention, the shared core of both GQLA paths. Query rows that share one key/value
// stream are packed into the rows of a tile, so each K/V tile is read once per stream:
//   absorb path: one stream, keys [c; k^R] (width d_c + d_r), values c (the key's first d_c columns);
//   GQA path:    G streams, keys [k_g; k^R] (rope once) or k_g with k^R folded in (rope per group).
// Grid (num_splits, streams x row_tiles, batch); flash-decoding: each split writes a normalised
// partial (o, lse) and attn_combine_* merges them; with one split the kernel writes the outputs.
// attn_mma_* is the same computation on tensor cores (mma.sync fed by ldmatrix, cp.async; bf16/f16,
// sm_80+), with 64 rows x 32 keys per block instead of 16 x 16.
// The same source also compiles for the CPU under cuda_impl/emu (GQLA_EMULATION), which checks
// every global access and barrier.
// Keys are read through the block table only for t < seq_len, so poisoned slots are never touched.

typedef unsigned short u16;

#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

// Global memory goes through ld/st, and dynamic shared memory through GQLA_DYNAMIC_SHARED, so that
// the host emulation (cuda_impl/emu) can bounds-check every access; on the GPU they are plain.
#ifndef GQLA_EMULATION
#define GQLA_DYNAMIC_SHARED(T, name) extern __shared__ T name[]
template <typename T> __device__ __forceinline__ T ld(const T* p, long long i) { return p[i]; }
template <typename T> __device__ __forceinline__ void st(T* p, long long i, T x) { p[i] = x; }
#endif

#define NT 128        // threads per block
#define ROWS 16       // query rows per block
#define TK 16         // keys per tile
#define DV_MAX 512    // widest value
#define EXPAND_TOKENS 8 // cached tokens per block of the expand kernel
#define COMBINE_CHUNK 256 // splits whose weights a combine block holds at once
#define ACC (ROWS * DV_MAX / NT)
// attn_mma_*: tensor-core variant (bf16/f16 storage, sm_80+).
#define MMA_WARPS 8                  // warps per block
#define MMA_NT (MMA_WARPS * 32)      // threads per block
#define MMA_ROWS 64                  // query rows per block: 4 m16 tiles
#define MMA_KEYS 32                  // keys per tile: 2 k16 steps of P V
#define MMA_PAD 8                    // 16-bit elements of padding per shared row (bank spread)
#define MMA_DVH_MAX (DV_MAX / 2)     // value columns per warp: each m16 tile is split in two halves
#define MMA_NARROW_DVH 64            // attn_mma_narrow_*: value widths up to 128, half the accumulators
#define MMA_STAGES_MAX 3             // key/value tiles in flight at most (the host picks 2 or 3)
#define MMA_ROW_LANES (MMA_NT / MMA_ROWS) // softmax: lanes per query row

struct AttnParams {
    const void* q;          // [B, s_q, H, dk]
    const void* ka;         // key segment A: per stream, width da
    const void* kb;         // key segment B: shared by all streams, width db (db = 0: none)
    const void* v;          // values: per stream, width dv
    const int* seq_lens;    // [B]
    const int* block_table; // [B, max_pages]
    void* out;              // [B, s_q, H, dv] (one split)
    float* lse;             // [B, s_q, H] (one split)
    float* part_o;          // [B, S, s_q, H, dv] (several splits)
    float* part_lse;        // [B, S, s_q, H]
    long long ka_stride;    // elements between cache slots
    long long kb_stride;
    long long v_stride;
    int ka_head_stride;     // elements between streams inside a slot
    int v_head_stride;
    int da, db, dv;
    int max_pages, page;
    int batch, sq, h, streams, num_splits;
    int v_is_key_prefix;    // values are the first dv columns of the key (absorb path)
    int stages;             // attn_mma_*: key/value tiles in flight (2 .. MMA_STAGES_MAX)
    float scale;
};

struct ExpandParams {
    const void* latent;     // [slots, dc]
    const void* w;          // [G (dn + dv), dc], group-major, keys first
    const int* tok_b;       // [tokens] sequence of each output token
    const int* tok_t;       // [tokens] position of each output token
    const int* block_table; // [B, max_pages]
    void* k_out;            // [tokens, G dn]
    void* v_out;            // [tokens, G dv]
    int max_pages, page, tokens, g, dc, dn, dv;
};

__device__ __forceinline__ float bf16_to_f32(u16 x) { return __uint_as_float(((unsigned)x) << 16); }
#ifdef GQLA_EMULATION
inline float f16_to_f32(u16 x) { return gqla_emu::f16_bits_to_f32(x); }
inline u16 f32_to_bf16(float x) { return gqla_emu::f32_to_bf16_bits(x); }
inline u16 f32_to_f16(float x) { return gqla_emu::f32_to_f16_bits(x); }
#else
__device__ __forceinline__ float f16_to_f32(u16 x) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x));
    return f;
}
__device__ __forceinline__ u16 f32_to_bf16(float x) {
    u16 r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(x));
    return r;
}
__device__ __forceinline__ u16 f32_to_f16(float x) {
    u16 r;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r) : "f"(x));
    return r;
}
#endif

// Storage element kinds: 0 f32, 1 bf16, 2 f16.
template <int E> struct Elem;
template <> struct Elem<0> {
    static __device__ __forceinline__ float get(const void* p, long long i) { return ld((const float*)p, i); }
    static __device__ __forceinline__ void put(void* p, long long i, float x) { st((float*)p, i, x); }
};
template <> struct Elem<1> {
    static __device__ __forceinline__ float get(const void* p, long long i) { return bf16_to_f32(ld((const u16*)p, i)); }
    static __device__ __forceinline__ void put(void* p, long long i, float x) { st((u16*)p, i, f32_to_bf16(x)); }
};
template <> struct Elem<2> {
    static __device__ __forceinline__ float get(const void* p, long long i) { return f16_to_f32(ld((const u16*)p, i)); }
    static __device__ __forceinline__ void put(void* p, long long i, float x) { st((u16*)p, i, f32_to_f16(x)); }
};

__device__ __forceinline__ long long slot_of(const int* block_table, int max_pages, int page, int b, int t) {
    return (long long)ld(block_table, (long long)b * max_pages + t / page) * page + t % page;
}

// Global output row of query row gr (of `per` heads x s_q) of stream g in sequence b.
__device__ __forceinline__ long long out_row(const AttnParams& p, int b, int g, int per, int gr) {
    const int j = gr / per, head = g * per + gr % per;
    return ((long long)b * p.sq + j) * p.h + head;
}

// Store output column d of a normalised row: the output itself with one split, else the split's
// partial.
template <int E>
__device__ __forceinline__ void put_out(const AttnParams& p, int b, int split, long long row, int d, float o) {
    if (p.num_splits == 1) {
        Elem<E>::put(p.out, row * p.dv + d, o);
    } else {
        const long long prow = row + ((long long)b * (p.num_splits - 1) + split) * p.sq * p.h;
        st(p.part_o, prow * p.dv + d, o);
    }
}

template <int E>
__device__ __forceinline__ void put_lse(const AttnParams& p, int b, int split, long long row, float lse) {
    if (p.num_splits == 1) {
        st(p.lse, row, lse);
    } else {
        st(p.part_lse, row + ((long long)b * (p.num_splits - 1) + split) * p.sq * p.h, lse);
    }
}

// What one attention block works on: rows [row0, row0 + nrows) of the `per` heads x s_q query rows
// of stream g in sequence b (length L), and keys [start, end) of its split. R rows per block.
struct Tile {
    int split, per, g, row0, nrows, b, L, start, end;
};

template <int R>
__device__ __forceinline__ Tile tile_of(const AttnParams& p) {
    Tile w;
    w.split = blockIdx.x;
    w.per = p.h / p.streams;
    const int rows_total = p.sq * w.per;
    const int row_tiles = (rows_total + R - 1) / R;
    w.g = blockIdx.y / row_tiles;
    w.row0 = (blockIdx.y % row_tiles) * R;
    w.nrows = min(R, rows_total - w.row0);
    w.b = blockIdx.z;
    w.L = ld(p.seq_lens, w.b);
    w.start = (int)((long long)w.split * w.L / p.num_splits);
    w.end = (int)((long long)(w.split + 1) * w.L / p.num_splits);
    return w;
}

// Keys row r of a block may see. Bottom-right causal: token j of s_q sees keys t < L - s_q + j + 1
// (none for padding rows).
__device__ __forceinline__ int visible_keys(const AttnParams& p, const Tile& w, int r) {
    const int j = (w.row0 + r) / w.per;
    return r < w.nrows ? max(0, min(w.L, w.L - p.sq + j + 1)) : 0;
}

// Row statistics before the first key, for the R rows of a block (threads tid < R).
template <int R>
__device__ __forceinline__ void init_rows(const AttnParams& p, const Tile& w, int tid, float* m_s, float* l_s, int* vis_s) {
    if (tid < R) {
        m_s[tid] = -INFINITY;
        l_s[tid] = 0.0f;
        vis_s[tid] = visible_keys(p, w, tid);
    }
}

// Sum (or max) of x over the LANES adjacent lanes that share a row; every one of them gets the same
// value (the butterfly adds the same pairs on each lane). All 32 lanes of the warp must call it.
template <int LANES>
__device__ __forceinline__ float lanes_sum(float x) {
#pragma unroll
    for (int o = 1; o < LANES; o *= 2) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}
template <int LANES>
__device__ __forceinline__ float lanes_max(float x) {
#pragma unroll
    for (int o = 1; o < LANES; o *= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
    return x;
}

// Online softmax of one row over a tile of masked, scaled scores (-inf: masked), spread over LANES
// adjacent lanes: each holds n of the scores in s, and mt, their maximum. Updates the running max m
// and sum l (the same on every lane of the row), sets c to the factor the row's accumulators are
// rescaled by, and hands each probability e^{s - m} to put(k, e). No early exit: with LANES > 1 every
// lane of the warp must reach the shuffles, whatever its row.
template <int LANES, typename Put>
__device__ __forceinline__ void online_softmax(const float* s, int n, float mt, float& m, float& l, float& c, Put put) {
    const float m_new = fmaxf(m, lanes_max<LANES>(mt));
    const bool none = m_new == -INFINITY; // nothing visible yet
    c = none ? 1.0f : m == -INFINITY ? 0.0f : expf(m - m_new);
    float sum = 0.0f;
    for (int k = 0; k < n; ++k) {
        const float e = none || s[k] == -INFINITY ? 0.0f : expf(s[k] - m_new);
        put(k, e);
        sum += e;
    }
    l = l * c + lanes_sum<LANES>(sum);
    m = m_new;
}

template <int E>
__device__ void attn(const AttnParams& p) {
    const int tid = threadIdx.x;
    const Tile w = tile_of<ROWS>(p);
    const int split = w.split, per = w.per, g = w.g, row0 = w.row0, nrows = w.nrows, b = w.b;
    const int start = w.start, end = w.end;
    const int dk = p.da + p.db, dv = p.dv;

    GQLA_DYNAMIC_SHARED(float, smem);
    const int kld = dk + 1;                           // padded row stride of k_s
    float* q_s = smem;                                // [ROWS][dk]
    float* k_s = q_s + ROWS * dk;                     // [TK][kld]
    float* v_s = p.v_is_key_prefix ? k_s : k_s + TK * kld;
    const int v_ld = p.v_is_key_prefix ? kld : dv;    // row stride of v_s
    float* p_s = v_s + (p.v_is_key_prefix ? TK * kld : TK * dv); // [ROWS][TK]
    float* m_s = p_s + ROWS * TK;
    float* l_s = m_s + ROWS;
    float* c_s = l_s + ROWS;
    int* vis_s = (int*)(c_s + ROWS);

    for (int idx = tid; idx < nrows * dk; idx += NT) {
        const int r = idx / dk, d = idx % dk;
        q_s[r * dk + d] = Elem<E>::get(p.q, out_row(p, b, g, per, row0 + r) * dk + d);
    }
    init_rows<ROWS>(p, w, tid, m_s, l_s, vis_s);
    float acc[ACC];
#pragma unroll
    for (int a = 0; a < ACC; ++a) acc[a] = 0.0f;

    for (int t0 = start; t0 < end; t0 += TK) {
        __syncthreads();
        for (int idx = tid; idx < TK * dk; idx += NT) {
            const int kk = idx / dk, d = idx % dk, t = t0 + kk;
            float x = 0.0f;
            if (t < end) {
                const long long s = slot_of(p.block_table, p.max_pages, p.page, b, t);
                x = d < p.da ? Elem<E>::get(p.ka, s * p.ka_stride + (long long)g * p.ka_head_stride + d)
                             : Elem<E>::get(p.kb, s * p.kb_stride + (d - p.da));
            }
            k_s[kk * kld + d] = x;
        }
        if (!p.v_is_key_prefix) {
            for (int idx = tid; idx < TK * dv; idx += NT) {
                const int kk = idx / dv, d = idx % dv, t = t0 + kk;
                float x = 0.0f;
                if (t < end) {
                    const long long s = slot_of(p.block_table, p.max_pages, p.page, b, t);
                    x = Elem<E>::get(p.v, s * p.v_stride + (long long)g * p.v_head_stride + d);
                }
                v_s[kk * dv + d] = x;
            }
        }
        __syncthreads();
        // Scores: one thread per (row, key) pair. Key rows are padded to kld = dk + 1 floats, so the
        // 16 keys a half-warp reads sit in 16 different banks.
        for (int pair = tid; pair < nrows * TK; pair += NT) {
            const int r = pair / TK, kk = pair % TK, t = t0 + kk;
            const float* qr = q_s + r * dk;
            const float* kr = k_s + kk * kld;
            float s = 0.0f;
            for (int d = 0; d < dk; ++d) s += qr[d] * kr[d];
            p_s[r * TK + kk] = (t < end && t < vis_s[r]) ? s * p.scale : -INFINITY;
        }
        __syncthreads();
        // Online softmax, one thread per row; probabilities replace the scores.
        if (tid < nrows) {
            float* pr = p_s + tid * TK;
            float mt = -INFINITY;
            for (int kk = 0; kk < TK; ++kk) mt = fmaxf(mt, pr[kk]);
            online_softmax<1>(pr, TK, mt, m_s[tid], l_s[tid], c_s[tid], [&](int k, float e) { pr[k] = e; });
        }
        __syncthreads();
#pragma unroll
        for (int a = 0; a < ACC; ++a) {
            const int idx = tid + a * NT, r = idx / dv, d = idx % dv;
            if (r < nrows) {
                float x = acc[a] * c_s[r];
                for (int kk = 0; kk < TK; ++kk) x += p_s[r * TK + kk] * v_s[kk * v_ld + d];
                acc[a] = x;
            }
        }
    }
    __syncthreads();

#pragma unroll
    for (int a = 0; a < ACC; ++a) {
        const int idx = tid + a * NT, r = idx / dv, d = idx % dv;
        if (r < nrows) {
            const float l = l_s[r];
            put_out<E>(p, b, split, out_row(p, b, g, per, row0 + r), d, l > 0.0f ? acc[a] / l : 0.0f);
        }
    }
    if (tid < nrows) {
        const float l = l_s[tid];
        put_lse<E>(p, b, split, out_row(p, b, g, per, row0 + tid), l > 0.0f ? m_s[tid] + logf(l) : -INFINITY);
    }
}

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

// The grouped attention of attn<E> on tensor cores, for 16-bit storage. A block holds MMA_ROWS
// query rows of one stream (4 m16 tiles) and walks its keys MMA_KEYS at a time, in one of two forms:
// mma.sync (WG false, sm_80+), fed by ldmatrix from rows padded by MMA_PAD:
//   S = Q K^T: warp w computes m-tile w % 4 against keys [16 (w / 4), 16 (w / 4) + 16);
//   O += P V:  warp w owns m-tile w % 4 and value columns [dvh (w / 4), dvh (w / 4 + 1));
// wgmma (WG true, sm_90a), two warpgroups reading tiles of 8 x 8 core matrices by descriptor:
//   S = Q K^T: warpgroup h computes all 64 rows x 32 keys over half of the key width (padded to a
//              multiple of 32); the two partial scores are added by the softmax;
//   O += P V:  warpgroup h owns value columns [dvh h, dvh (h + 1)), in m64n64k16 steps (dvh a
//              multiple of 64, zero columns past d_v), V read as the MN-major B operand.
// In both, the softmax runs on all threads, MMA_ROW_LANES per row, online (running max and sum in
// f32, in registers), P rounded to storage; and the accumulator layout of a thread is the same
// (warp w holds rows 16 (w % 4) .. of columns [dvh (w / 4), ...)), so one epilogue serves both.
// Shared tiles keep the 16-bit storage values (zero beyond the widths and for keys past the split).
// p.stages tiles are in flight (cp.async groups; tile i + stages - 1 is issued while tile i is
// computed). DVH_MAX bounds dv / 2 (the accumulators a thread holds): MMA_DVH_MAX for d_v up to 512,
// MMA_NARROW_DVH for up to 128.
template <int E, int DVH_MAX, bool WG>
__device__ void attn_tc(const AttnParams& p) {
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int fg = lane >> 2, ft = lane & 3; // fragment row group and column pair
    const int li = lane >> 3, lj = lane & 7; // ldmatrix: this lane gives row lj of matrix li
    const Tile w = tile_of<MMA_ROWS>(p);
    const int split = w.split, per = w.per, g = w.g, row0 = w.row0, nrows = w.nrows, b = w.b;
    const int start = w.start, end = w.end;
    const int dk = p.da + p.db, dv = p.dv;
    // Keys padded with zeros to whole k16 steps and values to whole n8 tiles (both warps' halves).
    // For wgmma, values to whole m64n64 steps per warpgroup and keys to an even number of k16
    // steps (at least as wide as the values they may be a prefix of), so that neither warpgroup
    // runs a step count or shape of its own: ptxas serialises wgmma on such paths.
    const int dvh = WG ? ((dv + 127) & ~127) / 2 : up16(dv) / 2;
    const int dkp = WG ? max((dk + 31) & ~31, p.v_is_key_prefix ? 2 * dvh : 0) : up16(dk);
    // Tile layouts: queries and keys dkp wide, values dkp (a key prefix) or 2 dvh, P MMA_KEYS.
    const TileLayout<WG> ql{dkp}, kl{dkp}, vl{p.v_is_key_prefix ? dkp : 2 * dvh}, pl{MMA_KEYS};
    const int sld = MMA_KEYS + 1;
    constexpr int PLANES = WG ? 2 : 1; // partial score planes

    GQLA_DYNAMIC_SHARED(float, smem);
    float* s_s = smem;                                  // [PLANES][MMA_ROWS][sld] scores
    float* c_s = s_s + PLANES * MMA_ROWS * sld;         // this tile's rescale factor per row
    int* vis_s = (int*)(c_s + MMA_ROWS);                // keys each row may see
    const int stages = p.stages;
    long long* slot_s = (long long*)(vis_s + MMA_ROWS); // [stages][MMA_KEYS] cache slot of each key (-1: none)
    u16* q_s = (u16*)(slot_s + stages * MMA_KEYS);      // query tile
    u16* k_s = q_s + ql.elems(MMA_ROWS);                // stages x (key tile, value tile unless a key prefix)
    const int kv_elems = kl.elems(MMA_KEYS) + (p.v_is_key_prefix ? 0 : vl.elems(MMA_KEYS));
    u16* p_s = k_s + stages * kv_elems;                 // P tile

    // The query tile: 16-byte cp.async copies (their own group, ahead of the first key tile's,
    // so all of them are in flight at once) when rows are 16-byte aligned; element loads otherwise.
    const u16* q16 = (const u16*)p.q;
    if ((((unsigned long long)p.q & 15) == 0) && (dk & 7) == 0) {
        const int qchunks = dkp / 8;
        for (int idx = tid; idx < MMA_ROWS * qchunks; idx += MMA_NT) {
            const int r = idx / qchunks, d = (idx % qchunks) * 8;
            const bool valid = r < nrows && d < dk;
            cp_async16(q_s + ql.at(r, d), valid ? q16 + out_row(p, b, g, per, row0 + r) * dk + d : q16, valid);
        }
        cp_async_commit();
    } else {
        for (int idx = tid; idx < MMA_ROWS * dkp; idx += MMA_NT) {
            const int r = idx / dkp, d = idx % dkp;
            u16 x = 0;
            if (r < nrows && d < dk) x = ld(q16, out_row(p, b, g, per, row0 + r) * dk + d);
            q_s[ql.at(r, d)] = x;
        }
    }
    if (tid < MMA_ROWS) vis_s[tid] = visible_keys(p, w, tid);
    // The running max and sum of row srow, held by its MMA_ROW_LANES threads.
    const int srow = tid / MMA_ROW_LANES, slane = tid % MMA_ROW_LANES;
    float m_run = -INFINITY, l_run = 0.0f;

    const int mt = warp & 3, half = warp >> 2;
    // mma.sync: warp-uniform, this m-tile has real rows. wgmma: every warp of a warpgroup takes
    // part in its instructions (padding rows are zero queries whose outputs are not stored).
    const bool active = WG || mt * 16 < nrows;
    float o[DVH_MAX / 8][4];
#pragma unroll
    for (int n = 0; n < DVH_MAX / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;

    const u16* ka = (const u16*)p.ka;
    const u16* kb = (const u16*)p.kb;
    const u16* v16 = (const u16*)p.v;
    // 16-byte loads when every row segment starts 16-byte aligned (uniform over the launch).
    const bool vec = (((unsigned long long)p.ka | (unsigned long long)p.kb | (unsigned long long)p.v) & 15) == 0 &&
                     ((p.da | p.db | p.dv | p.ka_head_stride | p.v_head_stride) & 7) == 0 &&
                     ((p.ka_stride | p.kb_stride | p.v_stride) & 7) == 0;
    // Tiles i + 1 .. i + stages - 1 stream into the other K/V buffers (cp.async) while tile i is computed.
    // Cache slot of key t0 + tid of the tile starting at t0 (threads tid < MMA_KEYS), -1 past the split.
    auto slot_for = [&](int t0) -> long long {
        return t0 + tid < end ? slot_of(p.block_table, p.max_pages, p.page, b, t0 + tid) : -1;
    };
    auto issue = [&](int buf) {
        u16* kd = k_s + buf * kv_elems;
        u16* vd = p.v_is_key_prefix ? kd : kd + kl.elems(MMA_KEYS);
        const long long* sl = slot_s + buf * MMA_KEYS;
        if (vec) {
            // 16-byte chunks: 8 elements, never straddling the two key segments (both multiples of 8).
            const int kchunks = dkp / 8, vchunks = dvh / 4;
            for (int idx = tid; idx < MMA_KEYS * kchunks; idx += MMA_NT) {
                const int kk = idx / kchunks, d = (idx % kchunks) * 8;
                const long long s = sl[kk];
                const bool valid = s >= 0 && d < dk;
                const u16* src = !valid ? ka : d < p.da ? ka + s * p.ka_stride + (long long)g * p.ka_head_stride + d : kb + s * p.kb_stride + (d - p.da);
                cp_async16(kd + kl.at(kk, d), src, valid);
            }
            if (!p.v_is_key_prefix) {
                for (int idx = tid; idx < MMA_KEYS * vchunks; idx += MMA_NT) {
                    const int kk = idx / vchunks, d = (idx % vchunks) * 8;
                    const long long s = sl[kk];
                    const bool valid = s >= 0 && d < dv;
                    cp_async16(vd + vl.at(kk, d), valid ? v16 + s * p.v_stride + (long long)g * p.v_head_stride + d : v16, valid);
                }
            }
        } else {
            for (int idx = tid; idx < MMA_KEYS * dkp; idx += MMA_NT) {
                const int kk = idx / dkp, d = idx % dkp;
                const long long s = sl[kk];
                u16 x = 0;
                if (s >= 0 && d < dk) {
                    x = d < p.da ? ld(ka, s * p.ka_stride + (long long)g * p.ka_head_stride + d) : ld(kb, s * p.kb_stride + (d - p.da));
                }
                kd[kl.at(kk, d)] = x;
            }
            if (!p.v_is_key_prefix) {
                for (int idx = tid; idx < MMA_KEYS * 2 * dvh; idx += MMA_NT) {
                    const int kk = idx / (2 * dvh), d = idx % (2 * dvh);
                    const long long s = sl[kk];
                    u16 x = 0;
                    if (s >= 0 && d < dv) x = ld(v16, s * p.v_stride + (long long)g * p.v_head_stride + d);
                    vd[vl.at(kk, d)] = x;
                }
            }
        }
        cp_async_commit();
    };
    for (int i = 0; i < stages - 1; ++i) {
        if (start + i * MMA_KEYS < end && tid < MMA_KEYS) slot_s[i * MMA_KEYS + tid] = slot_for(start + i * MMA_KEYS);
    }
    // The block-table lookups of the next tile to issue, one iteration ahead, so that their latency
    // is not paid at the barrier before each issue.
    long long slot_ahead = tid < MMA_KEYS ? slot_for(start + (stages - 1) * MMA_KEYS) : -1;
    __syncthreads();
    for (int i = 0; i < stages - 1; ++i) {
        if (start + i * MMA_KEYS < end) issue(i);
        else cp_async_commit(); // an empty group keeps the count of groups per tile
    }
    for (int t0 = start, it = 0; t0 < end; t0 += MMA_KEYS, ++it) {
        const int buf = it % stages, next = (it + stages - 1) % stages;
        const int t_next = t0 + (stages - 1) * MMA_KEYS;
        const u16* k_t = k_s + buf * kv_elems;                                        // this tile's keys
        const u16* v_t = p.v_is_key_prefix ? k_t : k_t + kl.elems(MMA_KEYS);          // and values
        // Slots of buffer `next` were last read when its previous tile was issued, stages - 1
        // iterations ago.
        if (t_next < end && tid < MMA_KEYS) slot_s[next * MMA_KEYS + tid] = slot_ahead;
        // Every thread is done with buffer `next` (the previous tile) and its slots are written.
        __syncthreads();
        if (t_next < end) issue(next);
        else cp_async_commit();
        if (tid < MMA_KEYS) slot_ahead = slot_for(t_next + MMA_KEYS);
        // This thread's copies of this tile have landed: at most stages - 1 later groups pending.
        if (stages == 3) cp_async_wait<2>();
        else cp_async_wait<1>();
        if constexpr (WG) fence_proxy_async();
        __syncthreads();
        if constexpr (WG) {
            const int steps = dkp / 32, k0 = half * (dkp / 2);
            float sc[MMA_KEYS / 2];
#pragma unroll
            for (int i = 0; i < MMA_KEYS / 2; ++i) sc[i] = 0.0f;
            wgmma_pin<MMA_KEYS / 2>(sc);
            wgmma_fence();
            for (int i = 0; i < steps; ++i) {
                wgmma<E, MMA_KEYS, false>(sc, desc_k_major(q_s, dkp, k0 + 16 * i), desc_k_major(k_t, dkp, k0 + 16 * i));
            }
            wgmma_commit();
            wgmma_wait<0, MMA_KEYS / 2>(sc);
#pragma unroll
            for (int n = 0; n < MMA_KEYS / 8; ++n) {
                float* sr = s_s + (half * MMA_ROWS + mt * 16 + fg) * sld + n * 8 + 2 * ft;
                sr[0] = sc[4 * n];
                sr[1] = sc[4 * n + 1];
                sr[8 * sld] = sc[4 * n + 2];
                sr[8 * sld + 1] = sc[4 * n + 3];
            }
        } else if (active) {
            // Two accumulator chains (even and odd k16 steps) so that consecutive mma.sync are
            // independent; summed after the last step.
            float sc[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
            float sd[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
            // ldmatrix rows: A = Q, matrices (rows 0-7 | 8-15) x (columns 0-7 | 8-15) in the order
            // of a[]; B = K (rows are keys), matrices (dims 0-7 | 8-15) of keys 0-7, then of 8-15.
            const u16* qa = q_s + (mt * 16 + (li & 1) * 8 + lj) * ql.ld() + (li >> 1) * 8;
            const u16* kr = k_t + (half * 16 + (li >> 1) * 8 + lj) * kl.ld() + (li & 1) * 8;
            auto step = [&](int kc, float (&acc)[2][4]) {
                unsigned a[4], bk[4];
                ldsm<4, false>(a, qa + kc);
                ldsm<4, false>(bk, kr + kc);
                mma16816<E>(acc[0], a, bk);
                mma16816<E>(acc[1], a, bk + 2);
            };
            for (int kc = 0; kc < dkp; kc += 32) {
                step(kc, sc);
                if (kc + 16 < dkp) step(kc + 16, sd);
            }
#pragma unroll
            for (int n = 0; n < 2; ++n) {
                float* sr = s_s + (mt * 16 + fg) * sld + half * 16 + n * 8 + 2 * ft;
                sr[0] = sc[n][0] + sd[n][0];
                sr[1] = sc[n][1] + sd[n][1];
                sr[8 * sld] = sc[n][2] + sd[n][2];
                sr[8 * sld + 1] = sc[n][3] + sd[n][3];
            }
        }
        __syncthreads();
        {
            // Keys [slane KPL, (slane + 1) KPL) of row srow: consecutive rows and chunks fall in
            // different banks (sld = MMA_KEYS + 1).
            constexpr int KPL = MMA_KEYS / MMA_ROW_LANES;
            const int r = srow, k0 = slane * KPL;
            float* sr = s_s + r * sld + k0;
            float smax = -INFINITY;
#pragma unroll
            for (int kk = 0; kk < KPL; ++kk) {
                const int t = t0 + k0 + kk;
                const float x = PLANES == 2 ? sr[kk] + sr[MMA_ROWS * sld + kk] : sr[kk];
                sr[kk] = (r < nrows && t < end && t < vis_s[r]) ? x * p.scale : -INFINITY;
                smax = fmaxf(smax, sr[kk]);
            }
            float c;
            online_softmax<MMA_ROW_LANES>(sr, KPL, smax, m_run, l_run, c, [&](int k, float e) { p_s[pl.at(r, k0 + k)] = to_storage<E>(e); });
            if (slane == 0) c_s[r] = c;
            if constexpr (WG) fence_proxy_async();
        }
        __syncthreads();
        if (active) {
            const float c_lo = c_s[mt * 16 + fg], c_hi = c_s[mt * 16 + fg + 8];
#pragma unroll
            for (int n = 0; n < DVH_MAX / 8; ++n) {
                o[n][0] *= c_lo;
                o[n][1] *= c_lo;
                o[n][2] *= c_hi;
                o[n][3] *= c_hi;
            }
            if constexpr (WG) {
                wgmma_pin<DVH_MAX / 2>(&o[0][0]);
                wgmma_fence();
#pragma unroll
                for (int kc = 0; kc < MMA_KEYS; kc += 16) {
                    const unsigned long long dp = desc_k_major(p_s, MMA_KEYS, kc);
#pragma unroll
                    for (int c = 0; c < DVH_MAX / 64; ++c) {
                        if (64 * c < dvh) wgmma<E, 64, true>(&o[8 * c][0], dp, desc_mn_major(v_t, vl.w, kc, half * dvh + 64 * c));
                    }
                }
                wgmma_commit();
                wgmma_wait<0, DVH_MAX / 2>(&o[0][0]);
            } else {
                // ldmatrix rows: A = P as Q above; B = V (rows are keys) transposed, matrices (keys 0-7 |
                // 8-15) of columns n0..n0+7, then of n0+8..n0+15: the fragments of n-tiles n and n + 1.
                const u16* pa = p_s + (mt * 16 + (li & 1) * 8 + lj) * pl.ld() + (li >> 1) * 8;
                const u16* vr = v_t + ((li & 1) * 8 + lj) * vl.ld() + half * dvh + (li >> 1) * 8;
#pragma unroll
                for (int kc = 0; kc < MMA_KEYS; kc += 16) {
                    unsigned a[4];
                    ldsm<4, false>(a, pa + kc);
#pragma unroll
                    for (int n = 0; n < DVH_MAX / 8; n += 2) {
                        if ((n + 1) * 8 < dvh) {
                            unsigned bv[4];
                            ldsm<4, true>(bv, vr + kc * vl.ld() + n * 8);
                            mma16816<E>(o[n], a, bv);
                            mma16816<E>(o[n + 1], a, bv + 2);
                        } else if (n * 8 < dvh) {
                            unsigned bv[2];
                            ldsm<2, true>(bv, vr + kc * vl.ld() + n * 8);
                            mma16816<E>(o[n], a, bv);
                        }
                    }
                }
            }
        }
    }
    cp_async_wait<0>(); // nothing in flight at exit (an empty split never waited for its queries)
    // Final row statistics, through the score tile (no longer read after the last softmax).
    float* m_s = s_s;
    float* l_s = s_s + MMA_ROWS;
    if (slane == 0) {
        m_s[srow] = m_run;
        l_s[srow] = l_run;
    }
    __syncthreads();

    if (active) {
#pragma unroll
        for (int hr = 0; hr < 2; ++hr) {
            const int r = mt * 16 + fg + 8 * hr;
            if (r < nrows) {
                const float l = l_s[r];
                const long long row = out_row(p, b, g, per, row0 + r);
#pragma unroll
                for (int n = 0; n < DVH_MAX / 8; ++n) {
                    const int d = half * dvh + n * 8 + 2 * ft;
                    if (n * 8 < dvh && d < dv) put_out<E>(p, b, split, row, d, l > 0.0f ? o[n][2 * hr] / l : 0.0f);
                    if (n * 8 < dvh && d + 1 < dv) put_out<E>(p, b, split, row, d + 1, l > 0.0f ? o[n][2 * hr + 1] / l : 0.0f);
                }
            }
        }
    }
    if (tid < nrows) {
        const float l = l_s[tid];
        put_lse<E>(p, b, split, out_row(p, b, g, per, row0 + tid), l > 0.0f ? m_s[tid] + logf(l) : -INFINITY);
    }
}

// The fragment layouts the tensor-core kernel assumes, on their own: D = A B with A [16][16] and
// B [16][16] (k x n) of 16-bit floats in plain row-major memory, D [16][16] f32, computed four
// ways into d[0..256), d[256..512), d[512..768), d[768..1024):
//   0: fragments built element by element from global memory (the mma layout alone);
//   1: A by ldmatrix.x4, B by ldmatrix.x4.trans of B in shared memory (as P and V);
//   2: A by ldmatrix.x4, B by ldmatrix.x2.trans, one n-tile at a time;
//   3: A by ldmatrix.x4, B by ldmatrix.x4 of B transposed (rows are n, as K in Q K^T).
// One warp; 1.5 KB of dynamic shared memory.
struct ProbeParams {
    const u16* a;
    const u16* b;
    float* d;
};

template <int E>
__device__ void mma_probe(const ProbeParams& p) {
    const int lane = threadIdx.x & 31, fg = lane >> 2, ft = lane & 3;
    const int li = lane >> 3, lj = lane & 7;
    GQLA_DYNAMIC_SHARED(u16, sm);
    u16* a_s = sm;         // [16][16]
    u16* b_s = sm + 256;   // [16 k][16 n]
    u16* bt_s = sm + 512;  // [16 n][16 k]
    for (int i = lane; i < 256; i += 32) {
        a_s[i] = ld(p.a, i);
        b_s[i] = ld(p.b, i);
        bt_s[(i % 16) * 16 + i / 16] = ld(p.b, i);
    }
    __syncwarp();
    auto store = [&](int way, int n, const float d[4]) {
        float* out = p.d + way * 256;
        st(out, fg * 16 + n * 8 + 2 * ft, d[0]);
        st(out, fg * 16 + n * 8 + 2 * ft + 1, d[1]);
        st(out, (fg + 8) * 16 + n * 8 + 2 * ft, d[2]);
        st(out, (fg + 8) * 16 + n * 8 + 2 * ft + 1, d[3]);
    };
    const unsigned a[4] = {
        pack2(ld(p.a, fg * 16 + 2 * ft), ld(p.a, fg * 16 + 2 * ft + 1)),
        pack2(ld(p.a, (fg + 8) * 16 + 2 * ft), ld(p.a, (fg + 8) * 16 + 2 * ft + 1)),
        pack2(ld(p.a, fg * 16 + 2 * ft + 8), ld(p.a, fg * 16 + 2 * ft + 9)),
        pack2(ld(p.a, (fg + 8) * 16 + 2 * ft + 8), ld(p.a, (fg + 8) * 16 + 2 * ft + 9)),
    };
    for (int n = 0; n < 2; ++n) {
        const int c = n * 8 + fg;
        const unsigned bb[2] = {
            pack2(ld(p.b, (2 * ft) * 16 + c), ld(p.b, (2 * ft + 1) * 16 + c)),
            pack2(ld(p.b, (2 * ft + 8) * 16 + c), ld(p.b, (2 * ft + 9) * 16 + c)),
        };
        float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        mma16816<E>(d, a, bb);
        store(0, n, d);
    }
    // The row addresses the attention kernel uses, with row strides of 16 elements.
    unsigned al[4];
    ldsm<4, false>(al, a_s + ((li & 1) * 8 + lj) * 16 + (li >> 1) * 8);
    {
        unsigned bv[4];
        ldsm<4, true>(bv, b_s + ((li & 1) * 8 + lj) * 16 + (li >> 1) * 8);
        for (int n = 0; n < 2; ++n) {
            float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            mma16816<E>(d, al, bv + 2 * n);
            store(1, n, d);
        }
    }
    for (int n = 0; n < 2; ++n) {
        unsigned bv[2];
        ldsm<2, true>(bv, b_s + ((li & 1) * 8 + lj) * 16 + n * 8);
        float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        mma16816<E>(d, al, bv);
        store(2, n, d);
    }
    {
        unsigned bk[4];
        ldsm<4, false>(bk, bt_s + ((li >> 1) * 8 + lj) * 16 + (li & 1) * 8);
        for (int n = 0; n < 2; ++n) {
            float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            mma16816<E>(d, al, bk + 2 * n);
            store(3, n, d);
        }
    }
}

// The wgmma operand layouts and descriptors the tensor-core kernel uses, on their own, for one
// warpgroup (128 threads, 10 KB of dynamic shared memory): A [64][32] and B [32][64] (k x n) of
// 16-bit floats in plain row-major memory; D = A B (f32, row-major) computed three ways over two
// k16 steps, into d[0..2048), d[2048..6144), d[6144..10240):
//   0: D[:, 0:32] with B K-major (B transposed into core matrices, as K in Q K^T), m64n32k16;
//   1: D with B MN-major (as V in P V), m64n64k16;
//   2: the same as 1 in eight m64n8k16 column strips.
template <int E>
__device__ void wgmma_probe(const ProbeParams& p) {
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, fg = lane >> 2, ft = lane & 3;
    GQLA_DYNAMIC_SHARED(u16, sm);
    const TileLayout<true> al{32}, btl{32}, bl{64};
    u16* a_s = sm;                        // [64 m][32 k]
    u16* bt_s = a_s + al.elems(64);       // [32 n][32 k]
    u16* b_s = bt_s + btl.elems(32);      // [32 k][64 n]
    for (int i = tid; i < 64 * 32; i += 128) a_s[al.at(i / 32, i % 32)] = ld(p.a, i);
    for (int i = tid; i < 32 * 64; i += 128) {
        const int k = i / 64, n = i % 64;
        const u16 x = ld(p.b, i);
        b_s[bl.at(k, n)] = x;
        if (n < 32) bt_s[btl.at(n, k)] = x;
    }
    fence_proxy_async();
    __syncthreads();
    // Element 4 j + e of a thread's accumulators: row 16 warp + fg + 8 (e / 2), column 8 j + 2 ft + e % 2.
    auto store = [&](int offset, int n_cols, int j, const float* d4) {
        for (int e = 0; e < 4; ++e) {
            st(p.d, offset + (16 * warp + fg + 8 * (e >> 1)) * n_cols + 8 * j + 2 * ft + (e & 1), d4[e]);
        }
    };
    float d0[16], d1[32], d2[8][4];
    for (int i = 0; i < 16; ++i) d0[i] = 0.0f;
    for (int i = 0; i < 32; ++i) d1[i] = d2[i / 4][i % 4] = 0.0f;
    wgmma_fence();
    for (int ks = 0; ks < 2; ++ks) wgmma<E, 32, false>(d0, desc_k_major(a_s, 32, 16 * ks), desc_k_major(bt_s, 32, 16 * ks));
    wgmma_commit();
    wgmma_wait<0, 16>(d0);
    wgmma_fence();
    for (int ks = 0; ks < 2; ++ks) wgmma<E, 64, true>(d1, desc_k_major(a_s, 32, 16 * ks), desc_mn_major(b_s, 64, 16 * ks, 0));
    wgmma_commit();
    wgmma_wait<0, 32>(d1);
    wgmma_fence();
    for (int ks = 0; ks < 2; ++ks) {
#pragma unroll
        for (int j = 0; j < 8; ++j) wgmma<E, 8, true>(d2[j], desc_k_major(a_s, 32, 16 * ks), desc_mn_major(b_s, 64, 16 * ks, 8 * j));
    }
    wgmma_commit();
    wgmma_wait<0, 32>(&d2[0][0]);
    for (int j = 0; j < 4; ++j) store(0, 32, j, d0 + 4 * j);
    for (int j = 0; j < 8; ++j) store(2048, 64, j, d1 + 4 * j);
    for (int j = 0; j < 8; ++j) store(6144, 64, j, d2[j]);
}

// x reduced (max, or sum) over the NT threads of the block; every thread gets the result. `red`
// holds NT / 32 floats of shared memory.
template <bool MAX>
__device__ __forceinline__ float block_reduce(float x, float* red) {
    x = MAX ? lanes_max<32>(x) : lanes_sum<32>(x);
    __syncthreads(); // an earlier reduction is done reading red
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = x;
    __syncthreads();
    x = red[0];
    for (int w = 1; w < NT / 32; ++w) x = MAX ? fmaxf(x, red[w]) : x + red[w];
    return x;
}

// Merge the splits of one (sequence, token, head) row: o = sum_s e^{lse_s - M} o_s / sum_s e^{lse_s - M}.
// Empty splits (lse_s = -inf, o_s = 0) get weight 0; a row with no key at all gets out = 0, lse = -inf.
// One block of NT threads per row, with 4 (COMBINE_CHUNK + NT / 32) bytes of dynamic shared memory:
// the split statistics are reduced over the block, the weights of up to COMBINE_CHUNK splits at a
// time sit in shared memory, and each thread accumulates its
// DV_MAX / NT value columns over the splits with the loads of several splits in flight.
template <int E>
__device__ void combine(const AttnParams& p) {
    GQLA_DYNAMIC_SHARED(float, smem);
    float* w_s = smem;                  // [COMBINE_CHUNK] split weights
    float* red_s = w_s + COMBINE_CHUNK; // [NT / 32] block_reduce
    const int tid = threadIdx.x;
    const long long row = blockIdx.x; // (b, j, head) flattened
    const int per_b = p.sq * p.h;
    const long long b = row / per_b, rest = row % per_b;
    const int S = p.num_splits, dv = p.dv;
    auto lse_of = [&](int s) { return ld(p.part_lse, (b * S + s) * per_b + rest); };
    float m = -INFINITY;
    for (int s = tid; s < S; s += NT) m = fmaxf(m, lse_of(s));
    m = block_reduce<true>(m, red_s);
    float wsum = 0.0f;
    for (int s = tid; s < S; s += NT) {
        const float l = lse_of(s);
        wsum += l == -INFINITY ? 0.0f : expf(l - m);
    }
    wsum = block_reduce<false>(wsum, red_s);
    float o[DV_MAX / NT];
#pragma unroll
    for (int a = 0; a < DV_MAX / NT; ++a) o[a] = 0.0f;
    for (int s0 = 0; s0 < S; s0 += COMBINE_CHUNK) {
        const int n = min(COMBINE_CHUNK, S - s0);
        __syncthreads(); // the previous chunk's weights are used up
        for (int i = tid; i < n; i += NT) {
            const float l = lse_of(s0 + i);
            w_s[i] = l == -INFINITY ? 0.0f : expf(l - m);
        }
        __syncthreads();
#pragma unroll 4
        for (int i = 0; i < n; ++i) {
            const float w = w_s[i];
            const long long base = ((b * S + s0 + i) * per_b + rest) * dv;
#pragma unroll
            for (int a = 0; a < DV_MAX / NT; ++a) {
                const int d = tid + a * NT;
                if (d < dv) o[a] += w * ld(p.part_o, base + d);
            }
        }
    }
#pragma unroll
    for (int a = 0; a < DV_MAX / NT; ++a) {
        const int d = tid + a * NT;
        if (d < dv) Elem<E>::put(p.out, row * dv + d, wsum > 0.0f ? o[a] / wsum : 0.0f);
    }
    if (tid == 0) st(p.lse, row, m == -INFINITY ? -INFINITY : m + logf(wsum));
}

// k_g = W_UK_g c, v_g = W_UV_g c for EXPAND_TOKENS cached tokens per block: their latents sit in
// shared memory, and each thread computes whole output columns, so every weight element read
// serves all the block's tokens.
template <int E>
__device__ void expand(const ExpandParams& p) {
    GQLA_DYNAMIC_SHARED(float, lat); // [EXPAND_TOKENS][dc]
    const int tok0 = blockIdx.x * EXPAND_TOKENS;
    const int ntok = min(EXPAND_TOKENS, p.tokens - tok0);
    for (int idx = threadIdx.x; idx < EXPAND_TOKENS * p.dc; idx += blockDim.x) {
        const int i = idx / p.dc, d = idx % p.dc;
        float x = 0.0f;
        if (i < ntok) {
            const int tok = tok0 + i;
            const long long s = slot_of(p.block_table, p.max_pages, p.page, ld(p.tok_b, tok), ld(p.tok_t, tok));
            x = Elem<E>::get(p.latent, s * p.dc + d);
        }
        lat[idx] = x;
    }
    __syncthreads();
    const int width = p.dn + p.dv, cols = p.g * width;
    for (int col = threadIdx.x; col < cols; col += blockDim.x) {
        float y[EXPAND_TOKENS];
#pragma unroll
        for (int i = 0; i < EXPAND_TOKENS; ++i) y[i] = 0.0f;
        for (int d = 0; d < p.dc; ++d) {
            const float w = Elem<E>::get(p.w, (long long)col * p.dc + d);
#pragma unroll
            for (int i = 0; i < EXPAND_TOKENS; ++i) y[i] += w * lat[i * p.dc + d];
        }
        const int g = col / width, r = col % width;
        for (int i = 0; i < ntok; ++i) {
            const long long tok = tok0 + i;
            if (r < p.dn) Elem<E>::put(p.k_out, tok * p.g * p.dn + g * p.dn + r, y[i]);
            else Elem<E>::put(p.v_out, tok * p.g * p.dv + g * p.dv + (r - p.dn), y[i]);
        }
    }
}

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

#define INSTANTIATE(SUFFIX, E)                                                                  \
    extern "C" __global__ void __launch_bounds__(NT) attn_##SUFFIX(AttnParams p) { attn<E>(p); } \
    extern "C" __global__ void attn_combine_##SUFFIX(AttnParams p) { combine<E>(p); }           \
    extern "C" __global__ void expand_##SUFFIX(ExpandParams p) { expand<E>(p); }                \
    extern "C" __global__ void fill_##SUFFIX(FillParams p) { fill<E>(p); }

// The tensor-core attention kernels of one form (FORM mma or wgmma; WG: the wgmma form), wide and
// narrow.
#define INSTANTIATE_TC(FORM, SUFFIX, E, WG)                                                                         \
    extern "C" __global__ void __launch_bounds__(MMA_NT) attn_##FORM##_##SUFFIX(AttnParams p) {                    \
        attn_tc<E, MMA_DVH_MAX, WG>(p);                                                                             \
    }                                                                                                               \
    extern "C" __global__ void __launch_bounds__(MMA_NT) attn_##FORM##_narrow_##SUFFIX(AttnParams p) {             \
        attn_tc<E, MMA_NARROW_DVH, WG>(p);                                                                          \
    }

#define INSTANTIATE_MMA(SUFFIX, E) \
    INSTANTIATE_TC(mma, SUFFIX, E, false) \
    extern "C" __global__ void mma_probe_##SUFFIX(ProbeParams p) { mma_probe<E>(p); }

// wgmma exists on sm_90a only (NVRTC --gpu-architecture=compute_90a), and on the emulator.
#define INSTANTIATE_WGMMA(SUFFIX, E) \
    INSTANTIATE_TC(wgmma, SUFFIX, E, true) \
    extern "C" __global__ void __launch_bounds__(128) wgmma_probe_##SUFFIX(ProbeParams p) { wgmma_probe<E>(p); }

INSTANTIATE(f32, 0)
INSTANTIATE(bf16, 1)
INSTANTIATE(f16, 2)
INSTANTIATE_MMA(bf16, 1)
INSTANTIATE_MMA(f16, 2)
#if defined(GQLA_EMULATION) || defined(__CUDA_ARCH_FEAT_SM90_ALL)
INSTANTIATE_WGMMA(bf16, 1)
INSTANTIATE_WGMMA(f16, 2)
#endif
