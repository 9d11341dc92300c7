// attn_*: the grouped attention on CUDA cores (any storage dtype), 16 query rows x 16 keys per tile.
// Part of the GQLA kernels, assembled after common.cuh by build.rs.

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
