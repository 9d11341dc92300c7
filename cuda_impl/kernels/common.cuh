// GQLA decode kernels, compiled by NVRTC at run time (see src/compile.rs). build.rs assembles
// them from the files of this directory in the order of its PARTS list, this file first: the
// definitions every kernel shares (parameters, element types, addressing, softmax helpers).
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
