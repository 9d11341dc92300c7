// attn_mma_* and attn_wgmma_*: the grouped attention on tensor cores, one kernel body in two forms.

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
