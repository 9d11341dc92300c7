// attn_combine_*: the flash-decoding merge of split partials; expand_*: latent to group cache.

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
