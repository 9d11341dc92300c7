// mma_probe_* and wgmma_probe_*: the fragment and descriptor layouts of attn_tc.cu, checked alone.

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
