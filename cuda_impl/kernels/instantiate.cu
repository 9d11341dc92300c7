// The kernels' entry points, per storage dtype (extern "C": the names the host launches).

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
