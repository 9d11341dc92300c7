// The host emulator's runtime (see emu.h) and the C entry point the Rust side calls. The runtime is
// split by concern into the .inc files below, included into this one translation unit.
//
// Fibers: each CUDA thread gets a stack; makecontext starts it once, after which switches are
// _setjmp/_longjmp pairs (no signal-mask system call), between a fiber and its OS thread's
// scheduler. A fiber runs until it waits at a barrier or finishes; the scheduler resumes any
// fiber whose barrier has opened, and a full pass with no fiber able to run is a deadlock.

#include "emu.h"

#include <algorithm>
#include <atomic>
#include <csetjmp>
#include <cstdio>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <sys/mman.h>
#include <ucontext.h>

namespace gqla_emu {

#include "state.inc"
#include "shared_check.inc"
#include "sync.inc"
#include "tensor_core.inc"
#include "scheduler.inc"

}  // namespace gqla_emu

// The kernel source itself, compiled for the host, and the emulator's test kernels.
#include "gqla_kernels.cu"  // kernels/*, assembled by build.rs
#include "selftest.cu"

namespace {

struct Entry {
    const char* name;
    void (*run)(const void*);
};

#define ENTRIES(SUFFIX)                                                                                     \
    {"attn_" #SUFFIX, [](const void* p) { attn_##SUFFIX(*(const AttnParams*)p); }},                           \
        {"attn_combine_" #SUFFIX, [](const void* p) { attn_combine_##SUFFIX(*(const AttnParams*)p); }},       \
        {"expand_" #SUFFIX, [](const void* p) { expand_##SUFFIX(*(const ExpandParams*)p); }},                 \
        {"fill_" #SUFFIX, [](const void* p) { fill_##SUFFIX(*(const FillParams*)p); }},

#define SELFTEST(NAME) {#NAME, [](const void* p) { NAME(*(const SelftestParams*)p); }},

#define WGMMA_ENTRIES(SUFFIX)                                                                                 \
    {"attn_wgmma_" #SUFFIX, [](const void* p) { attn_wgmma_##SUFFIX(*(const AttnParams*)p); }},                  \
        {"attn_wgmma_narrow_" #SUFFIX, [](const void* p) { attn_wgmma_narrow_##SUFFIX(*(const AttnParams*)p); }}, \
        {"wgmma_probe_" #SUFFIX, [](const void* p) { wgmma_probe_##SUFFIX(*(const ProbeParams*)p); }},

#define MMA_ENTRIES(SUFFIX)                                                                        \
    {"attn_mma_" #SUFFIX, [](const void* p) { attn_mma_##SUFFIX(*(const AttnParams*)p); }},        \
        {"attn_mma_narrow_" #SUFFIX, [](const void* p) { attn_mma_narrow_##SUFFIX(*(const AttnParams*)p); }}, \
        {"mma_probe_" #SUFFIX, [](const void* p) { mma_probe_##SUFFIX(*(const ProbeParams*)p); }},

const Entry ENTRY_TABLE[] = {ENTRIES(f32) ENTRIES(bf16) ENTRIES(f16) MMA_ENTRIES(bf16) MMA_ENTRIES(f16) WGMMA_ENTRIES(bf16) WGMMA_ENTRIES(f16) SELFTEST(selftest_warp_sum) SELFTEST(selftest_divergent_sync)
                                 SELFTEST(selftest_skipped_sync) SELFTEST(selftest_partial_shuffle) SELFTEST(selftest_store_past_end)
                                     SELFTEST(selftest_ldmatrix_outside_shared)
                                         SELFTEST(selftest_wgmma_without_fence) SELFTEST(selftest_wgmma_unwaited)
                                             SELFTEST(selftest_wgmma_ok) SELFTEST(selftest_wgmma_without_proxy_fence)
                                                 SELFTEST(selftest_wgmma_operand_overwritten) SELFTEST(selftest_shared_store_race)
                                                     SELFTEST(selftest_ldmatrix_race) SELFTEST(selftest_cp_async_overwrite)
                                                         SELFTEST(selftest_missing_barrier) SELFTEST(selftest_cp_async_outside_shared)
                                                             SELFTEST(selftest_wgmma_outside_shared)};

void write_error(char* out, size_t cap, const std::string& msg) {
    if (cap == 0) return;
    const size_t n = std::min(cap - 1, msg.size());
    std::memcpy(out, msg.data(), n);
    out[n] = 0;
}

}  // namespace

extern "C" {

// Run kernel `name` over grid x block with `shared_bytes` of dynamic shared memory and the
// kernel's parameter struct at `params`. `ranges` holds `n_ranges` (begin, end) address pairs:
// the buffers the kernel may touch. `schedule` (Launch::schedule, with `seed`) and `check_shared`
// are the checking options. Returns 0, or 1 with a message in `error`.
int gqla_emu_launch(const char* name, const unsigned grid[3], const unsigned block[3], size_t shared_bytes,
                    const void* params, const uint64_t* ranges, size_t n_ranges, unsigned threads, int schedule,
                    uint64_t seed, int check_shared, char* error, size_t error_cap) {
    const Entry* e = nullptr;
    for (const Entry& x : ENTRY_TABLE)
        if (std::strcmp(x.name, name) == 0) e = &x;
    if (!e) {
        write_error(error, error_cap, std::string("no kernel named ") + name);
        return 1;
    }
    gqla_emu::Launch l;
    l.kernel = e->run;
    l.kernel_name = e->name;
    l.params = params;
    l.grid = dim3{grid[0], grid[1], grid[2]};
    l.block = dim3{block[0], block[1], block[2]};
    l.shared_bytes = shared_bytes;
    l.schedule = schedule;
    l.seed = seed;
    l.check_shared = check_shared != 0;
    for (size_t i = 0; i < n_ranges; ++i) l.ranges.push_back({(uintptr_t)ranges[2 * i], (uintptr_t)ranges[2 * i + 1]});
    std::sort(l.ranges.begin(), l.ranges.end(), [](auto& a, auto& b) { return a.begin < b.begin; });
    const long long blocks = (long long)grid[0] * grid[1] * grid[2];
    const unsigned per_block = block[0] * block[1] * block[2];
    if (blocks == 0) return 0;
    if (per_block == 0 || per_block > 1024) {
        write_error(error, error_cap, std::string(name) + ": " + std::to_string(per_block) + " threads per block");
        return 1;
    }
    const unsigned n = (unsigned)std::max(1LL, std::min<long long>(threads == 0 ? 1 : threads, blocks));
    std::vector<std::thread> pool;
    for (unsigned i = 1; i < n; ++i) pool.emplace_back(gqla_emu::work, &l);
    gqla_emu::work(&l);
    for (auto& t : pool) t.join();
    if (l.failed) {
        write_error(error, error_cap, l.error);
        return 1;
    }
    return 0;
}

}  // extern "C"
