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
#define ACC (ROWS * DV_MAX / NT)

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

template <int E>
__device__ void attn(const AttnParams& p) {
    const int tid = threadIdx.x;
    const int split = blockIdx.x;
    const int per = p.h / p.streams;
    const int rows_total = p.sq * per;
    const int row_tiles = (rows_total + ROWS - 1) / ROWS;
    const int g = blockIdx.y / row_tiles;
    const int row0 = (blockIdx.y % row_tiles) * ROWS;
    const int nrows = min(ROWS, rows_total - row0);
    const int b = blockIdx.z;
    const int L = ld(p.seq_lens, b);
    const int dk = p.da + p.db, dv = p.dv;
    const int start = (int)((long long)split * L / p.num_splits);
    const int end = (int)((long long)(split + 1) * L / p.num_splits);

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

    // Query rows: local row r is global row row0 + r = (token j, head g*per + i).
    for (int idx = tid; idx < nrows * dk; idx += NT) {
        const int r = idx / dk, d = idx % dk, gr = row0 + r;
        const int j = gr / per, head = g * per + gr % per;
        q_s[r * dk + d] = Elem<E>::get(p.q, (((long long)b * p.sq + j) * p.h + head) * dk + d);
    }
    if (tid < ROWS) {
        m_s[tid] = -INFINITY;
        l_s[tid] = 0.0f;
        const int j = (row0 + tid) / per;
        // Bottom-right causal: token j of s_q sees keys t < L - s_q + j + 1 (none for padding rows).
        vis_s[tid] = tid < nrows ? max(0, min(L, L - p.sq + j + 1)) : 0;
    }
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
        // Online softmax, one thread per row.
        if (tid < nrows) {
            float mt = -INFINITY;
            for (int kk = 0; kk < TK; ++kk) mt = fmaxf(mt, p_s[tid * TK + kk]);
            const float m_old = m_s[tid], m_new = fmaxf(m_old, mt);
            if (m_new == -INFINITY) {
                c_s[tid] = 1.0f;
                for (int kk = 0; kk < TK; ++kk) p_s[tid * TK + kk] = 0.0f;
            } else {
                const float c = m_old == -INFINITY ? 0.0f : expf(m_old - m_new);
                float sum = 0.0f;
                for (int kk = 0; kk < TK; ++kk) {
                    const float s = p_s[tid * TK + kk];
                    const float e = s == -INFINITY ? 0.0f : expf(s - m_new);
                    p_s[tid * TK + kk] = e;
                    sum += e;
                }
                l_s[tid] = l_s[tid] * c + sum;
                m_s[tid] = m_new;
                c_s[tid] = c;
            }
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

    const bool single = p.num_splits == 1;
#pragma unroll
    for (int a = 0; a < ACC; ++a) {
        const int idx = tid + a * NT, r = idx / dv, d = idx % dv;
        if (r < nrows) {
            const int gr = row0 + r, j = gr / per, head = g * per + gr % per;
            const float l = l_s[r];
            const float o = l > 0.0f ? acc[a] / l : 0.0f;
            const long long row = ((long long)b * p.sq + j) * p.h + head;
            if (single) {
                Elem<E>::put(p.out, row * dv + d, o);
            } else {
                const long long prow = (((long long)b * p.num_splits + split) * p.sq + j) * p.h + head;
                st(p.part_o, prow * dv + d, o);
            }
        }
    }
    if (tid < nrows) {
        const int gr = row0 + tid, j = gr / per, head = g * per + gr % per;
        const float l = l_s[tid];
        const float lse = l > 0.0f ? m_s[tid] + logf(l) : -INFINITY;
        if (single) {
            st(p.lse, ((long long)b * p.sq + j) * p.h + head, lse);
        } else {
            st(p.part_lse, (((long long)b * p.num_splits + split) * p.sq + j) * p.h + head, lse);
        }
    }
}

// Merge the splits of one (sequence, token, head) row: o = sum_s e^{lse_s - M} o_s / sum_s e^{lse_s - M}.
// Empty splits (lse_s = -inf, o_s = 0) get weight 0; a row with no key at all gets out = 0, lse = -inf.
template <int E>
__device__ void combine(const AttnParams& p) {
    const long long row = blockIdx.x; // (b, j, head) flattened
    const int per_b = p.sq * p.h;
    const long long b = row / per_b, rest = row % per_b;
    const int S = p.num_splits, dv = p.dv;
    float m = -INFINITY;
    for (int s = 0; s < S; ++s) m = fmaxf(m, ld(p.part_lse, (b * S + s) * per_b + rest));
    float wsum = 0.0f;
    for (int s = 0; s < S; ++s) {
        const float l = ld(p.part_lse, (b * S + s) * per_b + rest);
        wsum += l == -INFINITY ? 0.0f : expf(l - m);
    }
    for (int d = threadIdx.x; d < dv; d += blockDim.x) {
        float o = 0.0f;
        if (m != -INFINITY) {
            for (int s = 0; s < S; ++s) {
                const float l = ld(p.part_lse, (b * S + s) * per_b + rest);
                if (l != -INFINITY) o += expf(l - m) * ld(p.part_o, ((b * S + s) * per_b + rest) * dv + d);
            }
            o /= wsum;
        }
        Elem<E>::put(p.out, row * dv + d, o);
    }
    if (threadIdx.x == 0) st(p.lse, row, m == -INFINITY ? -INFINITY : m + logf(wsum));
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

// Deterministic pseudo-random values amp * [-1, 1) for benchmarks (never time on zeros).
template <int E>
__device__ void fill(void* p, long long n, unsigned seed, float amp) {
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
    extern "C" __global__ void fill_##SUFFIX(void* p, long long n, unsigned seed, float amp) { fill<E>(p, n, seed, amp); }

INSTANTIATE(f32, 0)
INSTANTIATE(bf16, 1)
INSTANTIATE(f16, 2)
