// The host emulator's runtime (see emu.h) and the C entry point the Rust side calls.
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

// The launch's buffers: a global access must stay inside the buffer its base pointer is in.
struct Range {
    uintptr_t begin, end;
};

enum class Wait { None, Block, Warp, Warpgroup };

// One wgmma's result for one thread, landing in d at wgmma_wait.
struct WgResult {
    float* d;
    int n;  // accumulators
    float v[128];
    int op = -1;  // its operation in SharedCheck::ops (shared-memory checks only)
};

// One queued cp.async: 16 bytes to `dst`, from `src` or zeros.
struct AsyncCopy {
    void* dst;
    const void* src;
    bool zero;
};

// One thread's asynchronous operations of one kind in PTX's group discipline: an issued operation
// joins the open group, a commit closes it, and a wait lands the oldest closed groups until at
// most `pending` remain (cp.async.*_group, wgmma.*_group).
template <typename Op>
struct AsyncGroups {
    std::vector<Op> open;                    // issued since the last commit
    std::vector<std::vector<Op>> committed;  // oldest first
    void commit() {
        committed.push_back(std::move(open));
        open.clear();
    }
    template <typename Land>
    void wait(int pending, Land land) {
        while ((int)committed.size() > pending) {
            for (const Op& op : committed.front()) land(op);
            committed.erase(committed.begin());
        }
    }
    bool empty() const { return open.empty() && committed.empty(); }
    void clear() {
        open.clear();
        committed.clear();
    }
    // Every operation in flight, oldest first.
    template <typename Visit>
    bool all_of(Visit visit) const {
        for (const auto& g : committed)
            for (const Op& op : g)
                if (!visit(op)) return false;
        for (const Op& op : open)
            if (!visit(op)) return false;
        return true;
    }
};

struct Fiber {
    jmp_buf ctx;
    ucontext_t boot;
    ThreadPos pos;
    int linear = 0;
    bool started = false, done = false;
    Wait wait = Wait::None;
    unsigned wait_gen = 0;
    AsyncGroups<AsyncCopy> copies;
    bool wg_fenced = false;
    AsyncGroups<WgResult> wgmmas;
};

// What one thread passes to a wgmma, compared over the warpgroup.
struct WgOperands {
    uint64_t a, b;
    int n, kind;
    bool trans;
};

// A place in the kernel source.
struct Site {
    const char* file = "?";
    int line = -1;
    bool operator!=(const Site& o) const { return line != o.line || std::strcmp(file, o.file) != 0; }
    std::string str() const {
        const char* slash = std::strrchr(file, '/');
        return std::string(slash ? slash + 1 : file) + ":" + std::to_string(line);
    }
};

struct Barrier {
    unsigned count = 0, gen = 0, expected = 0;
    Site site;  // where the open generation's first arrival waits
};

// The shared-memory checks' state for one block (see emu.h). A write is seen when the byte's value
// changes: at every collective and fence, the block's shared memory is compared with `seen`, and
// what changed was written by the thread that ran since (threads switch only at collectives).
struct SharedCheck {
    // One wgmma's operand bytes (a warpgroup collective), read until its first thread waits for it.
    struct WgOp {
        std::vector<uint32_t> bytes;
        bool open = true;
    };
    bool on = false;
    std::vector<unsigned char> seen;
    std::vector<int16_t> writer;            // thread of the last write seen; -1: none
    std::vector<uint32_t> w_epoch, w_wgen;  // block barrier and writer's warp barrier generations then
    std::vector<uint8_t> unfenced;          // last write not yet followed by its writer's fence.proxy.async
    std::vector<int32_t> reader;            // last ldmatrix (its warp's lane 0) or wgmma (-2 - warpgroup); -1: none
    std::vector<uint32_t> r_epoch, r_wgen;
    std::vector<int16_t> copying;           // 1 + thread whose cp.async to the byte is in flight; 0: none
    std::vector<uint16_t> wg_reading;       // open wgmma ops reading the byte
    std::vector<std::vector<uint32_t>> to_fence;  // per thread: bytes written since its last fence.proxy.async
    std::vector<WgOp> ops;
    std::vector<unsigned> op_gen;  // per warpgroup: the warpgroup barrier generation of its newest op
    std::vector<int> op_index;     // per warpgroup: its newest op
    void reset(const std::vector<unsigned char>& shared, unsigned threads) {
        const size_t n = shared.size();
        seen = shared;
        writer.assign(n, -1);
        w_epoch.assign(n, 0);
        w_wgen.assign(n, 0);
        unfenced.assign(n, 0);
        reader.assign(n, -1);
        r_epoch.assign(n, 0);
        r_wgen.assign(n, 0);
        copying.assign(n, 0);
        wg_reading.assign(n, 0);
        to_fence.assign(threads, {});
        ops.clear();
        op_gen.assign((threads + 127) / 128, ~0u);
        op_index.assign((threads + 127) / 128, -1);
    }
};

struct Launch;

// One OS thread's state: its scheduler context, fibers and the block it runs.
struct Worker {
    Launch* launch = nullptr;
    jmp_buf sched;
    std::vector<Fiber> fibers;
    std::vector<char*> stacks;
    size_t stack_bytes = 0;
    Fiber* current = nullptr;
    Barrier block_barrier;
    std::vector<Barrier> warp_barriers;
    std::vector<Barrier> wg_barriers;  // 128-thread warpgroups
    std::vector<WgOperands> wg_exchange;
    std::vector<uint64_t> exchange;  // one word per thread, for shuffles
    std::vector<uint32_t> fragments; // MMA_WORDS per thread, for mma
    std::vector<unsigned char> shared;
    SharedCheck check;
    std::string error;
    bool failed = false;
    ~Worker() {
        for (char* s : stacks) munmap(s, stack_bytes);
    }
};

struct Launch {
    void (*kernel)(const void*);
    const void* params;
    dim3 grid, block;
    size_t shared_bytes;
    std::vector<Range> ranges;  // sorted by begin
    std::atomic<long long> next_block{0};
    std::atomic<bool> failed{false};
    std::mutex error_mutex;
    std::string error;
    const char* kernel_name;
    int schedule = 0;  // order a block's threads run in: 0 by index, 1 reverse, 2 shuffled per pass
    uint64_t seed = 0;
    bool check_shared = false;
};

static thread_local Worker* tl_worker = nullptr;

// Words of one lane's mma operands: a (4), b (2), c (4 floats).
static const int MMA_WORDS = 10;

static const size_t STACK_BYTES = 256 * 1024;

static std::string describe(const Fiber& f) {
    char buf[160];
    std::snprintf(buf, sizeof buf, "block (%u,%u,%u) thread (%u,%u,%u)", f.pos.block.x, f.pos.block.y, f.pos.block.z,
                  f.pos.thread.x, f.pos.thread.y, f.pos.thread.z);
    return buf;
}

// Record the first error of this worker's block; the block is abandoned at the next switch.
static void fail(const std::string& what) {
    Worker* w = tl_worker;
    if (!w->failed) {
        w->failed = true;
        w->error = what;
    }
}

const ThreadPos& pos() { return tl_worker->current->pos; }

void* dynamic_shared() { return tl_worker->shared.data(); }

// Switch from the running fiber to the scheduler; returns when the scheduler resumes it.
__attribute__((noinline)) static void yield() {
    Worker* w = tl_worker;
    if (_setjmp(w->current->ctx) == 0) _longjmp(w->sched, 1);
}

// ---- Shared-memory checks (Launch::check_shared; see emu.h) ----------------------------------

static void report(const Site& site, const std::string& what) { fail(describe(*tl_worker->current) + ": " + site.str() + ": " + what); }

static std::string thread_str(int t) { return "thread " + std::to_string(t); }
static std::string byte_str(size_t b) { return "shared byte " + std::to_string(b); }
static std::string reader_str(int32_t r) { return r >= 0 ? "warp " + std::to_string(r / 32) + "'s ldmatrix" : "warpgroup " + std::to_string(-2 - r) + "'s wgmma"; }

// Whether an access by thread u (block barrier generation `epoch` and u's warp barrier generation
// `wgen` at the time) happens before an access by thread t now: program order, a __syncthreads
// since, or, within one warp, a warp collective since.
static bool ordered(const Worker& w, int u, uint32_t epoch, uint32_t wgen, int t) {
    return u == t || epoch != w.block_barrier.gen || (u / 32 == t / 32 && w.warp_barriers[t / 32].gen != wgen);
}
// The same for a read by `reader` (SharedCheck::reader); a wgmma's own warpgroup waited for it.
static bool read_ordered(const Worker& w, int32_t reader, uint32_t epoch, uint32_t wgen, int t) {
    return reader >= 0 ? ordered(w, reader, epoch, wgen, t) : epoch != w.block_barrier.gen || -2 - reader == t / 128;
}

// Whether a wgmma thread t issued and has not waited for reads byte b. (A wgmma is one operation
// of its warpgroup: once any of its threads waits for it, it no longer reads, but only that
// thread knows it.)
static bool own_wgmma_reads(const Worker& w, int t, size_t b) {
    return !w.fibers[t].wgmmas.all_of([&](const WgResult& r) {
        if (r.op < 0) return true;
        const auto& bytes = w.check.ops[r.op].bytes;
        return !std::binary_search(bytes.begin(), bytes.end(), (uint32_t)b);
    });
}

// Thread t stores to byte b (`verb`: "writes" for a plain store seen afterwards, "cp.async to" for
// a copy as it is issued): an error while a cp.async still writes the byte or an unwaited wgmma
// still reads it, or when another thread wrote or read it with no barrier between.
static void check_store(const Worker& w, size_t b, int t, const Site& site, const char* verb) {
    const SharedCheck& c = w.check;
    if (w.failed) return;
    auto error = [&](const std::string& why) { report(site, verb + (" " + byte_str(b)) + why); };
    if (c.copying[b] != 0) {
        error(" while the cp.async of " + thread_str(c.copying[b] - 1) + " to it is in flight");
    } else if (c.wg_reading[b] != 0 || own_wgmma_reads(w, t, b)) {
        error(", which a wgmma not yet waited for reads");
    } else if (c.writer[b] >= 0 && !ordered(w, c.writer[b], c.w_epoch[b], c.w_wgen[b], t)) {
        error(", which " + thread_str(c.writer[b]) + " also wrote with no barrier between (a race)");
    } else if (c.reader[b] != -1 && !read_ordered(w, c.reader[b], c.r_epoch[b], c.r_wgen[b], t)) {
        error(", which " + reader_str(c.reader[b]) + " read with no barrier between (a race)");
    }
}

// Thread t changed byte b since its last collective.
static void note_write(Worker& w, size_t b, int t, const Site& site) {
    SharedCheck& c = w.check;
    check_store(w, b, t, site, "writes");
    if (!c.unfenced[b] || c.writer[b] != t) c.to_fence[t].push_back((uint32_t)b);
    c.writer[b] = (int16_t)t;
    c.w_epoch[b] = w.block_barrier.gen;
    c.w_wgen[b] = w.warp_barriers[t / 32].gen;
    c.unfenced[b] = 1;
}

// Attribute every shared byte that changed since the last look to the running thread (which is the
// only one that ran since). Called at each collective and fence, before it takes effect.
static void attribute_writes(const Site& site) {
    Worker* w = tl_worker;
    SharedCheck& c = w->check;
    if (!c.on) return;
    const int t = w->current->linear;
    const unsigned char* now = w->shared.data();
    unsigned char* seen = c.seen.data();
    const size_t n = w->shared.size();
    for (size_t off = 0; off < n; off += 256) {
        const size_t len = std::min<size_t>(256, n - off);
        if (std::memcmp(now + off, seen + off, len) == 0) continue;
        for (size_t b = off; b < off + len; ++b)
            if (now[b] != seen[b]) note_write(*w, b, t, site);
        std::memcpy(seen + off, now + off, len);
    }
}

// ldmatrix (wgmma false; reader: lane 0 of the warp, r_wgen: the warp's generation before the
// collective) or a wgmma (reader -2 - warpgroup) reads byte b for thread t.
static void note_read(Worker& w, size_t b, int t, bool wgmma, int32_t reader, uint32_t r_wgen, const Site& site) {
    SharedCheck& c = w.check;
    if (!w.failed) {
        auto error = [&](const std::string& why) { report(site, (wgmma ? "wgmma reads " : "ldmatrix reads ") + byte_str(b) + why); };
        if (c.copying[b] != 0) {
            error(" while the cp.async of " + thread_str(c.copying[b] - 1) + " to it is in flight");
        } else if (c.writer[b] >= 0 && wgmma) {
            if (c.w_epoch[b] == w.block_barrier.gen) {
                error(", which " + thread_str(c.writer[b]) + " wrote since the last __syncthreads");
            } else if (c.unfenced[b]) {
                error(", which " + thread_str(c.writer[b]) + " wrote without a fence.proxy.async after it (the async proxy may not see the write)");
            }
        } else if (c.writer[b] >= 0 && !ordered(w, c.writer[b], c.w_epoch[b], c.w_wgen[b], t)) {
            error(", which " + thread_str(c.writer[b]) + " wrote with no barrier between (a race)");
        }
    }
    c.reader[b] = reader;
    c.r_epoch[b] = w.block_barrier.gen;
    c.r_wgen[b] = r_wgen;
}

void fence_proxy_async(const char* file, int line) {
    Worker* w = tl_worker;
    SharedCheck& c = w->check;
    if (!c.on) return;
    const int t = w->current->linear;
    attribute_writes(Site{file, line});
    for (uint32_t b : c.to_fence[t])
        if (c.writer[b] == t) c.unfenced[b] = 0;
    c.to_fence[t].clear();
}

static void arrive(Barrier& b, Wait kind, Site site, const char* what) {
    Worker* w = tl_worker;
    Fiber* f = w->current;
    attribute_writes(site);
    if (b.count == 0) {
        b.site = site;
    } else if (b.site != site) {
        fail(describe(*f) + ": divergent " + what + ": " + b.site.str() + " and " + site.str() + " in the same phase");
    }
    if (++b.count == b.expected) {
        b.count = 0;
        ++b.gen;
        return;
    }
    f->wait = kind;
    f->wait_gen = b.gen;
    yield();
    f->wait = Wait::None;
}

void sync_block(const char* file, int line) { arrive(tl_worker->block_barrier, Wait::Block, Site{file, line}, "__syncthreads"); }

void sync_warp(const char* file, int line) {
    Worker* w = tl_worker;
    arrive(w->warp_barriers[w->current->linear / 32], Wait::Warp, Site{file, line}, "warp collective");
}

uint64_t shuffle_xor(uint64_t bits, int lane_mask, unsigned member_mask, const char* file, int line) {
    const std::string at = Site{file, line}.str();
    Worker* w = tl_worker;
    const int me = w->current->linear, base = me & ~31, lane = me & 31;
    const int warp_size = (int)w->warp_barriers[me / 32].expected;
    const unsigned present = 0xffffffffu >> (32 - warp_size);
    if ((member_mask & present) != present) {
        char buf[200];
        std::snprintf(buf, sizeof buf, "%s: %s: shuffle with member mask %#x (the emulator needs every lane of the warp)",
                      describe(*w->current).c_str(), at.c_str(), member_mask);
        fail(buf);
    }
    const int src = lane ^ lane_mask;
    if (src >= warp_size) {
        char buf[200];
        std::snprintf(buf, sizeof buf, "%s: %s: shuffle reads lane %d of a %d-thread warp (undefined on a GPU)",
                      describe(*w->current).c_str(), at.c_str(), src, warp_size);
        fail(buf);
    }
    w->exchange[me] = bits;
    sync_warp(file, line);
    const uint64_t r = src < warp_size ? w->exchange[base + src] : bits;
    sync_warp(file, line);
    return r;
}

void cp_async16(void* dst, const void* src, bool valid, const char* file, int line) {
    Worker* w = tl_worker;
    Fiber* f = w->current;
    const Site site{file, line};
    const uintptr_t lo = (uintptr_t)w->shared.data(), a = (uintptr_t)dst;
    if (a % 16 != 0 || a < lo || a + 16 > lo + w->launch->shared_bytes) {
        char buf[160];
        std::snprintf(buf, sizeof buf, "cp.async destination %#lx is not 16 aligned bytes of the block's shared memory", (unsigned long)a);
        report(site, buf);
        return;
    }
    SharedCheck& c = w->check;
    if (c.on) {
        const int t = f->linear;
        for (size_t b = a - lo; b < a - lo + 16; ++b) {
            check_store(*w, b, t, site, "cp.async to");
            c.copying[b] = (int16_t)(t + 1);
        }
    }
    const bool ok = valid && check_access(src, 0, 16, false, file, line);
    f->copies.open.push_back(AsyncCopy{dst, src, !ok});
}

void cp_async_commit() { tl_worker->current->copies.commit(); }

void cp_async_wait(int pending) {
    Worker* w = tl_worker;
    attribute_writes(Site{"cp.async.wait_group", 0});  // stores made while the copies were in flight
    w->current->copies.wait(pending, [w](const AsyncCopy& c) {
        if (c.zero) std::memset(c.dst, 0, 16);
        else std::memcpy(c.dst, c.src, 16);
        if (w->check.on) {
            const size_t off = (size_t)((unsigned char*)c.dst - w->shared.data());
            std::fill(w->check.copying.begin() + off, w->check.copying.begin() + off + 16, 0);
        }
    });
}

static float half_to_float(int kind, uint32_t bits) {
    const uint16_t h = (uint16_t)bits;
    if (kind == 1) {
        const uint32_t u = (uint32_t)h << 16;
        float f;
        std::memcpy(&f, &u, 4);
        return f;
    }
    return f16_bits_to_f32(h);
}

void mma_m16n8k16(int kind, float d[4], const unsigned a[4], const unsigned b[2], const char* file, int line) {
    Worker* w = tl_worker;
    const int me = w->current->linear, base = me & ~31, lane = me & 31;
    if (w->warp_barriers[me / 32].expected != 32) {
        fail(describe(*w->current) + ": " + Site{file, line}.str() + ": mma in a warp of fewer than 32 threads");
    }
    uint32_t* mine = &w->fragments[(size_t)me * MMA_WORDS];
    std::memcpy(mine, a, 16);
    std::memcpy(mine + 4, b, 8);
    std::memcpy(mine + 6, d, 16);
    sync_warp(file, line);
    const uint32_t* frag = &w->fragments[(size_t)base * MMA_WORDS];
    // A (16x16, row): register (row >= 8) + 2 (col >= 8) of lane 4 (row % 8) + (col % 8) / 2,
    // half col % 2. B (16x8, col): register (k >= 8) of lane 4 n + (k % 8) / 2, half k % 2.
    auto A = [&](int row, int col) {
        const uint32_t word = frag[(4 * (row % 8) + (col % 8) / 2) * MMA_WORDS + (row >= 8) + 2 * (col >= 8)];
        return half_to_float(kind, word >> (16 * (col % 2)));
    };
    auto B = [&](int k, int n) {
        const uint32_t word = frag[(4 * n + (k % 8) / 2) * MMA_WORDS + 4 + (k >= 8)];
        return half_to_float(kind, word >> (16 * (k % 2)));
    };
    // C and D: element i of lane (g, t) is row g + 8 (i >= 2), column 2 t + i % 2.
    const int g = lane >> 2, t = lane & 3;
    float out[4];
    for (int i = 0; i < 4; ++i) {
        const int row = g + 8 * (i >= 2), col = 2 * t + i % 2;
        float acc = d[i];
        for (int k = 0; k < 16; ++k) acc += A(row, k) * B(k, col);
        out[i] = acc;
    }
    sync_warp(file, line);
    std::memcpy(d, out, 16);
}

void ldmatrix(int n, bool trans, const void* row, unsigned r[4], const char* file, int line) {
    Worker* w = tl_worker;
    const int me = w->current->linear, base = me & ~31, lane = me & 31;
    if (w->warp_barriers[me / 32].expected != 32) {
        fail(describe(*w->current) + ": " + Site{file, line}.str() + ": ldmatrix in a warp of fewer than 32 threads");
    }
    w->exchange[me] = (uint64_t)(uintptr_t)row;
    sync_warp(file, line);
    const uintptr_t lo = (uintptr_t)w->shared.data(), hi = lo + w->launch->shared_bytes;
    auto row_of = [&](int src_lane) -> const uint16_t* {
        const uintptr_t a = (uintptr_t)w->exchange[base + src_lane];
        if (a % 16 != 0 || a < lo || a + 16 > hi) {
            char buf[240];
            std::snprintf(buf, sizeof buf, "%s: %s: ldmatrix row %d of lane %d at %#lx is not 16 aligned bytes of shared memory",
                          describe(*w->current).c_str(), Site{file, line}.str().c_str(), src_lane % 8, src_lane,
                          (unsigned long)a);
            fail(buf);
            return nullptr;
        }
        if (w->check.on) {
            // The read happens at the collective: ordered after the warp's earlier accesses.
            const uint32_t wgen = w->warp_barriers[me / 32].gen - 1;
            for (size_t b = a - lo; b < a - lo + 16; ++b) note_read(*w, b, me, false, base, wgen, Site{file, line});
        }
        return (const uint16_t*)a;
    };
    unsigned out[4] = {0, 0, 0, 0};
    const int g = lane >> 2, t = lane & 3;
    for (int i = 0; i < n; ++i) {
        // Without trans: row g, columns 2t and 2t + 1. With trans: rows 2t and 2t + 1, column g.
        const uint16_t* r0 = row_of(8 * i + (trans ? 2 * t : g));
        const uint16_t* r1 = row_of(8 * i + (trans ? 2 * t + 1 : g));
        if (!r0 || !r1) break;
        const uint16_t x0 = trans ? r0[g] : r0[2 * t], x1 = trans ? r1[g] : r1[2 * t + 1];
        out[i] = (unsigned)x0 | ((unsigned)x1 << 16);
    }
    sync_warp(file, line);
    std::memcpy(r, out, 4 * (size_t)n);
}

unsigned shared_offset(const void* p) {
    Worker* w = tl_worker;
    const uintptr_t a = (uintptr_t)p, lo = (uintptr_t)w->shared.data();
    if (a < lo || a > lo + w->launch->shared_bytes) {
        fail(describe(*w->current) + ": a shared-memory address of a pointer outside the block's shared memory");
        return 0;
    }
    return (unsigned)(a - lo);
}

void wgmma_fence() { tl_worker->current->wg_fenced = true; }

void wgmma_commit() { tl_worker->current->wgmmas.commit(); }

void wgmma_wait(int pending) {
    Worker* w = tl_worker;
    Fiber* f = w->current;
    attribute_writes(Site{"wgmma.wait_group", 0});  // stores made while the wgmma were in flight
    f->wgmmas.wait(pending, [w](const WgResult& r) {
        std::memcpy(r.d, r.v, sizeof(float) * (size_t)r.n);
        // The warpgroup's first thread to wait for the operation ends its reads.
        if (r.op >= 0 && w->check.ops[r.op].open) {
            SharedCheck& c = w->check;
            c.ops[r.op].open = false;
            for (uint32_t b : c.ops[r.op].bytes) {
                --c.wg_reading[b];
                c.r_epoch[b] = w->block_barrier.gen;
            }
        }
    });
    // The thread may now touch accumulators: the next wgmma needs a fence again.
    f->wg_fenced = false;
}

// The accumulators a new wgmma on d[0..n) starts from: the latest result in flight for d, else d.
static bool wg_current(Fiber& f, float* d, int n, float* out) {
    std::memcpy(out, d, sizeof(float) * (size_t)n);
    return f.wgmmas.all_of([&](const WgResult& r) {
        if (r.d == d && r.n == n) {
            std::memcpy(out, r.v, sizeof(float) * (size_t)n);
            return true;
        }
        return r.d + r.n <= d || d + n <= r.d;  // a partial overlap is refused
    });
}

void wgmma(int kind, int n, bool trans_b, float* d, uint64_t desc_a, uint64_t desc_b, const char* file, int line) {
    Worker* w = tl_worker;
    Fiber& f = *w->current;
    const int me = f.linear, group = me / 128, lane = me & 31, warp = (me / 32) % 4;
    const std::string at = Site{file, line}.str();
    if (w->fibers.size() % 128 != 0) {
        fail(describe(f) + ": " + at + ": wgmma in a block that is not whole warpgroups");
        return;
    }
    if (!f.wg_fenced) fail(describe(f) + ": " + at + ": wgmma without wgmma.fence since the thread's last wgmma.wait_group");
    w->wg_exchange[me] = WgOperands{desc_a, desc_b, n, kind, trans_b};
    arrive(w->wg_barriers[group], Wait::Warpgroup, Site{file, line}, "wgmma");
    const WgOperands& first = w->wg_exchange[(size_t)group * 128];
    if (first.a != desc_a || first.b != desc_b || first.n != n || first.kind != kind || first.trans != trans_b) {
        fail(describe(f) + ": " + at + ": the threads of a warpgroup pass different wgmma operands");
    }
    struct Desc {
        uint64_t start, lbo, sbo;
    };
    auto decode = [&](uint64_t x, const char* which) {
        if ((x >> 62) != 0 || ((x >> 49) & 7) != 0) {
            fail(describe(f) + ": " + at + ": wgmma descriptor of " + which + " with swizzling or a base offset (not modelled)");
        }
        return Desc{(x & 0x3fff) << 4, ((x >> 16) & 0x3fff) << 4, ((x >> 32) & 0x3fff) << 4};
    };
    const Desc a = decode(desc_a, "A"), b = decode(desc_b, "B");
    // Shared addresses of A's element (row, k), K-major, and B's element (k, col).
    auto a_at = [&](int row, int k) -> uint64_t { return a.start + (row % 8) * 16 + (row / 8) * a.sbo + (k % 8) * 2 + (k / 8) * a.lbo; };
    auto b_at = [&](int k, int col) -> uint64_t {
        return trans_b ? b.start + (col % 8) * 2 + (col / 8) * b.sbo + (k % 8) * 16 + (k / 8) * b.lbo
                       : b.start + (col % 8) * 16 + (col / 8) * b.sbo + (k % 8) * 2 + (k / 8) * b.lbo;
    };
    const size_t size = w->launch->shared_bytes;
    const unsigned char* sh = w->shared.data();
    bool bad = false;
    auto element = [&](uint64_t addr) {
        if (addr % 2 != 0 || addr + 2 > size) {
            if (!bad) {
                char buf[200];
                std::snprintf(buf, sizeof buf, "%s: %s: wgmma operand element at shared address %#lx, outside the block's %zu bytes",
                              describe(f).c_str(), at.c_str(), (unsigned long)addr, size);
                fail(buf);
            }
            bad = true;
            return 0.0f;
        }
        uint16_t h;
        std::memcpy(&h, sh + addr, 2);
        return half_to_float(kind, h);
    };
    // A (64 x 16) K-major; B (16 x n) K-major (rows are n) or MN-major.
    float av[16][16], bv[16][128];
    const int row_lo = 16 * warp + lane / 4;
    for (int h = 0; h < 2; ++h) {
        const int row = row_lo + 8 * h;
        for (int k = 0; k < 16; ++k) av[h][k] = element(a_at(row, k));
    }
    // Only the columns this thread's accumulators use (8j + 2 (lane % 4) and the next): each of B's
    // elements is still read, and bounds-checked, by the threads that use it.
    for (int k = 0; k < 16; ++k)
        for (int c = 2 * (lane % 4); c + 1 < n; c += 8) {
            bv[k][c] = element(b_at(k, c));
            bv[k][c + 1] = element(b_at(k, c + 1));
        }
    WgResult r;
    r.d = d;
    r.n = n / 2;
    SharedCheck& c = w->check;
    if (c.on) {
        // The first thread past the warpgroup's first arrival records the operation's operand
        // bytes (the same for all: the descriptors were compared) and checks how they were written.
        const unsigned gen = w->wg_barriers[group].gen;
        if (c.op_gen[group] != gen) {
            c.op_gen[group] = gen;
            SharedCheck::WgOp op;
            auto add = [&](uint64_t addr) {
                if (addr + 2 <= size) {
                    op.bytes.push_back((uint32_t)addr);
                    op.bytes.push_back((uint32_t)addr + 1);
                }
            };
            for (int row = 0; row < 64; ++row)
                for (int k = 0; k < 16; ++k) add(a_at(row, k));
            for (int k = 0; k < 16; ++k)
                for (int col = 0; col < n; ++col) add(b_at(k, col));
            std::sort(op.bytes.begin(), op.bytes.end());
            op.bytes.erase(std::unique(op.bytes.begin(), op.bytes.end()), op.bytes.end());
            for (uint32_t x : op.bytes) {
                note_read(*w, x, me, true, -2 - group, 0, Site{file, line});
                ++c.wg_reading[x];
            }
            c.op_index[group] = (int)c.ops.size();
            c.ops.push_back(std::move(op));
        }
        r.op = c.op_index[group];
    }
    if (!wg_current(f, d, r.n, r.v)) fail(describe(f) + ": " + at + ": wgmma accumulators overlap another wgmma's in flight");
    // Element i: row 16 warp + lane / 4 + 8 ((i / 2) % 2), column 8 (i / 4) + 2 (lane % 4) + i % 2.
    for (int i = 0; i < r.n; ++i) {
        const int h = (i >> 1) & 1, col = 8 * (i >> 2) + 2 * (lane % 4) + (i & 1);
        float acc = r.v[i];
        for (int k = 0; k < 16; ++k) acc += av[h][k] * bv[k][col];
        r.v[i] = acc;
    }
    arrive(w->wg_barriers[group], Wait::Warpgroup, Site{file, line}, "wgmma");
    f.wgmmas.open.push_back(r);
}

bool check_access(const void* base, long long index, unsigned size, bool store, const char* file, int line) {
    Worker* w = tl_worker;
    const auto& ranges = w->launch->ranges;
    const uintptr_t b = (uintptr_t)base;
    auto it = std::upper_bound(ranges.begin(), ranges.end(), b, [](uintptr_t x, const Range& r) { return x < r.begin; });
    const Range* r = it == ranges.begin() ? nullptr : &*(it - 1);
    const bool inside = r && b < r->end;
    const uintptr_t a = b + (uintptr_t)(index * (long long)size);
    if (inside && index >= -(long long)((b - r->begin) / size) && a + size <= r->end) return true;
    char buf[320];
    if (!inside) {
        std::snprintf(buf, sizeof buf, "%s: %s: %s through pointer %#lx, which is in none of the launch's buffers",
                      describe(*w->current).c_str(), Site{file, line}.str().c_str(), store ? "store" : "load", (unsigned long)b);
    } else {
        std::snprintf(buf, sizeof buf,
                      "%s: %s: out-of-bounds %s of %u bytes at element %lld from %#lx (%lld bytes into a buffer of %lu bytes)",
                      describe(*w->current).c_str(), Site{file, line}.str().c_str(), store ? "store" : "load", size, index, (unsigned long)b,
                      (long long)(a - r->begin), (unsigned long)(r->end - r->begin));
    }
    fail(buf);
    return false;
}

static void fiber_main() {
    Worker* w = tl_worker;
    w->launch->kernel(w->launch->params);
    attribute_writes(Site{"(return)", 0});
    if (!w->current->wgmmas.empty()) {
        fail(describe(*w->current) + ": returned with a wgmma in flight (no wgmma.wait_group for it)");
    }
    w->current->done = true;
    _longjmp(w->sched, 1);
}

static void prepare(Worker& w, const Launch& l) {
    const unsigned n = l.block.x * l.block.y * l.block.z;
    if (w.fibers.size() != n) {
        for (char* s : w.stacks) munmap(s, w.stack_bytes);
        w.stacks.clear();
        w.fibers = std::vector<Fiber>(n);
        w.stack_bytes = STACK_BYTES;
        for (unsigned i = 0; i < n; ++i) {
            void* s = mmap(nullptr, STACK_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
            if (s == MAP_FAILED) throw std::bad_alloc();
            mprotect(s, 4096, PROT_NONE);  // guard page: an overflow faults instead of corrupting
            w.stacks.push_back((char*)s);
        }
    }
    w.warp_barriers.assign((n + 31) / 32, Barrier{});
    for (unsigned i = 0; i < w.warp_barriers.size(); ++i) w.warp_barriers[i].expected = std::min(32u, n - 32 * i);
    w.wg_barriers.assign((n + 127) / 128, Barrier{});
    for (auto& b : w.wg_barriers) b.expected = 128;
    w.wg_exchange.assign(n, WgOperands{});
    w.exchange.assign(n, 0);
    w.fragments.assign((size_t)n * MMA_WORDS, 0);
    // 16 bytes more than the launch asks for (a non-empty buffer); the checks allow only its size.
    w.shared.assign(l.shared_bytes + 16, 0);
}

// Run fiber `f` until it waits or finishes. Kept out of line so that the setjmp frame holds no
// variable of the scheduler loop.
__attribute__((noinline)) static void resume(Worker& w, Fiber& f) {
    w.current = &f;
    if (_setjmp(w.sched) == 0) {
        if (!f.started) {
            f.started = true;
            setcontext(&f.boot);
        }
        _longjmp(f.ctx, 1);
    }
}

// Run block `id` (linear over the grid) on this worker; false when it failed or deadlocked.
static bool run_block(Worker& w, const Launch& l, long long id) {
    const unsigned n = (unsigned)w.fibers.size();
    dim3 bid;
    bid.x = (unsigned)(id % l.grid.x);
    bid.y = (unsigned)(id / l.grid.x % l.grid.y);
    bid.z = (unsigned)(id / ((long long)l.grid.x * l.grid.y));
    w.block_barrier = Barrier{};
    w.block_barrier.expected = n;
    for (auto& b : w.warp_barriers) b = Barrier{0, 0, b.expected, Site{}};
    for (auto& b : w.wg_barriers) b = Barrier{0, 0, b.expected, Site{}};
    // Shared memory starts as garbage on a GPU; a recognisable NaN pattern here.
    std::fill(w.shared.begin(), w.shared.end(), (unsigned char)0xff);
    w.check.on = l.check_shared;
    if (w.check.on) w.check.reset(w.shared, n);
    std::vector<unsigned> order(n);
    for (unsigned i = 0; i < n; ++i) order[i] = l.schedule == 1 ? n - 1 - i : i;
    std::mt19937_64 rng(l.seed ^ ((uint64_t)id * 0x9E3779B97F4A7C15ull));
    for (unsigned i = 0; i < n; ++i) {
        Fiber& f = w.fibers[i];
        f.linear = (int)i;
        f.started = f.done = false;
        f.wait = Wait::None;
        f.copies.clear();
        f.wg_fenced = false;
        f.wgmmas.clear();
        f.pos.thread.x = i % l.block.x;
        f.pos.thread.y = i / l.block.x % l.block.y;
        f.pos.thread.z = i / (l.block.x * l.block.y);
        f.pos.block = bid;
        f.pos.block_dim = l.block;
        f.pos.grid_dim = l.grid;
        getcontext(&f.boot);
        f.boot.uc_stack.ss_sp = w.stacks[i];
        f.boot.uc_stack.ss_size = w.stack_bytes;
        f.boot.uc_link = nullptr;
        makecontext(&f.boot, fiber_main, 0);
    }
    unsigned live = n;
    // Shuffled: a fresh order every pass, and warps held back for runs of passes (each pass, a
    // warp changes between held and running with probability 1/4; none is held after a pass that
    // ran nothing), so that warps drift apart by many collectives.
    std::vector<char> held((n + 31) / 32, 0);
    bool holding = false;
    while (live > 0 && !w.failed) {
        bool progressed = false;
        if (l.schedule == 2) {
            std::shuffle(order.begin(), order.end(), rng);
            for (auto& h : held) h = holding && (h != ((rng() & 3) == 0));
        }
        for (unsigned k = 0; k < n && !w.failed; ++k) {
            const unsigned i = order[k];
            Fiber& f = w.fibers[i];
            if (f.done || held[i / 32]) continue;
            if (f.wait == Wait::Block && f.wait_gen == w.block_barrier.gen) continue;
            if (f.wait == Wait::Warp && f.wait_gen == w.warp_barriers[i / 32].gen) continue;
            if (f.wait == Wait::Warpgroup && f.wait_gen == w.wg_barriers[i / 128].gen) continue;
            resume(w, f);
            progressed = true;
            if (f.done) --live;
        }
        if (!progressed && holding) {
            holding = false;  // run every warp before calling it a deadlock
            continue;
        }
        holding = l.schedule == 2;
        if (!progressed && live > 0) {
            unsigned finished = n - live, at_block = 0;
            for (auto& f : w.fibers) at_block += !f.done && f.wait == Wait::Block;
            char buf[240];
            std::snprintf(buf, sizeof buf,
                          "block (%u,%u,%u): deadlock: %u threads wait at __syncthreads (%s), %u at warp collectives, %u "
                          "have returned",
                          bid.x, bid.y, bid.z, at_block, w.block_barrier.site.str().c_str(), live - at_block, finished);
            fail(buf);
        }
    }
    w.current = nullptr;
    return !w.failed;
}

static void work(Launch* l) {
    Worker w;
    w.launch = l;
    tl_worker = &w;
    const long long blocks = (long long)l->grid.x * l->grid.y * l->grid.z;
    try {
        prepare(w, *l);
        for (long long id = l->next_block++; id < blocks && !l->failed; id = l->next_block++) {
            if (!run_block(w, *l, id)) {
                l->failed = true;
                std::lock_guard<std::mutex> g(l->error_mutex);
                if (l->error.empty()) l->error = std::string(l->kernel_name) + ": " + w.error;
            }
        }
    } catch (const std::exception& e) {
        l->failed = true;
        std::lock_guard<std::mutex> g(l->error_mutex);
        if (l->error.empty()) l->error = std::string(l->kernel_name) + ": " + e.what();
    }
    tl_worker = nullptr;
}

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
                                                         SELFTEST(selftest_missing_barrier) SELFTEST(selftest_cp_async_outside_shared)};

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
