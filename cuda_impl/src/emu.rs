//! The host emulator: the kernels (kernels/, assembled by build.rs) compiled by the system C++ compiler against a small shim of the
//! CUDA runtime (`cuda_impl/emu/`), so the very kernels the GPU runs are run and certified on a
//! CPU, in CI, with no GPU.
//!
//! Each CUDA thread is a fiber; a block's fibers switch only at `__syncthreads` and warp
//! shuffles. Every global load and store is bounds-checked against the buffer its base pointer
//! points into, and a barrier that not every thread of the block (or lane of the warp) reaches
//! at the same place is reported as an error. It checks the kernels' logic (indexing, paging,
//! split-KV, masking, dtype conversions, barriers), not their speed, and not what only the
//! hardware decides (memory ordering across blocks, `expf`'s last bit).
//!
//! Two options look for shared-memory races, at a cost ([`Emulator::checked`]): running a block's
//! threads in another order ([`Schedule`]), so that a read that misses its barrier reads the NaN
//! shared memory starts as, or a stale value; and [`Emulator::check_shared`], which attributes
//! every shared-memory write to its thread and reports unordered conflicts, reads of bytes a
//! `cp.async` is still writing, writes to bytes an unwaited `wgmma` reads, and `wgmma` operands
//! written without `fence.proxy.async` (emu/emu.h has the list).

use crate::compile::Entry;
use crate::runtime::{Args, Bound, Element, Launch, Runtime, Span};
use crate::timing::Timing;
use crate::CudaError;
use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, c_void, CString};

extern "C" {
    fn gqla_emu_launch(
        name: *const c_char,
        grid: *const u32,
        block: *const u32,
        shared_bytes: usize,
        params: *const c_void,
        ranges: *const u64,
        n_ranges: usize,
        threads: u32,
        schedule: c_int,
        seed: u64,
        check_shared: c_int,
        error: *mut c_char,
        error_cap: usize,
    ) -> c_int;
}

/// The emulated device. It reports the H100's multiprocessor count and shared-memory limits, so
/// that default split counts, stage counts and launch checks are the ones an H100 gets.
#[derive(Clone, Debug)]
pub struct Emulator {
    /// OS threads a launch spreads its blocks over.
    pub threads: usize,
    /// Shared memory of one SM (an H100's by default): less makes the tensor-core kernel keep
    /// fewer tiles in flight, which is how tests reach every stage count.
    pub shared_per_multiprocessor: usize,
    /// The order a block's threads run in between collectives.
    pub schedule: Schedule,
    /// Attribute every shared-memory write to its thread and check it (emu/emu.h). It compares
    /// the block's shared memory at every collective: for small launches.
    pub check_shared: bool,
}

/// The order the emulator runs a block's threads in, each up to its next collective. A correct
/// kernel gives the same output in every order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schedule {
    /// By thread index.
    Forward,
    /// Highest index first: a read that misses a barrier runs before the write it needs.
    Reverse,
    /// A fresh seeded permutation at every pass over the block.
    Shuffled(u64),
}

/// SMs of an H100 SXM.
const MULTIPROCESSORS: usize = 132;
/// Opt-in shared memory per block on sm_90, in bytes.
const MAX_SHARED_PER_BLOCK: usize = 227 * 1024;
/// Shared memory per SM on sm_90, of which each resident block takes RESERVED_SHARED_PER_BLOCK.
const MAX_SHARED_PER_MULTIPROCESSOR: usize = 228 * 1024;
const RESERVED_SHARED_PER_BLOCK: usize = 1024;

impl Default for Emulator {
    fn default() -> Self {
        Self {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            shared_per_multiprocessor: MAX_SHARED_PER_MULTIPROCESSOR,
            schedule: Schedule::Forward,
            check_shared: false,
        }
    }
}

/// A buffer of the emulator: host memory.
#[derive(Debug)]
pub struct EmuBuf<T>(Vec<T>);

impl Runtime for Emulator {
    type Buf<T: Element> = EmuBuf<T>;
    type Guard<'a> = ();

    fn kernel_name(&self) -> &'static str {
        "cuda-emu"
    }
    fn description(&self) -> String {
        let checks = if self.check_shared { ", shared-memory checks" } else { "" };
        let order = match self.schedule {
            Schedule::Forward => String::new(),
            Schedule::Reverse => ", threads in reverse order".to_string(),
            Schedule::Shuffled(seed) => format!(", threads shuffled (seed {seed})"),
        };
        format!(
            "host emulation (fibers, checked loads and stores{checks}{order}, {} threads)",
            self.threads
        )
    }
    fn environment(&self) -> BTreeMap<String, String> {
        [
            ("device", "host emulation of the CUDA kernels".to_string()),
            ("emulated_multiprocessors", MULTIPROCESSORS.to_string()),
            ("emulator_threads", self.threads.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
    fn bind(&self) -> Result<(), CudaError> {
        Ok(())
    }
    fn upload<T: Element>(&self, data: &[T]) -> Result<EmuBuf<T>, CudaError> {
        Ok(EmuBuf(data.to_vec()))
    }
    fn download<T: Element>(&self, buf: &EmuBuf<T>) -> Result<Vec<T>, CudaError> {
        Ok(buf.0.clone())
    }
    fn download_range<T: Element>(&self, buf: &EmuBuf<T>, start: usize, len: usize) -> Result<Vec<T>, CudaError> {
        buf.0
            .get(start..start + len)
            .map(<[T]>::to_vec)
            .ok_or_else(|| CudaError::Unsupported(format!("elements {start}..{} of a buffer of {}", start + len, buf.0.len())))
    }
    fn zeros<T: Element>(&self, n: usize) -> Result<EmuBuf<T>, CudaError> {
        Ok(EmuBuf(vec![T::default(); n]))
    }
    fn len<T: Element>(buf: &EmuBuf<T>) -> usize {
        buf.0.len()
    }
    fn read<'a, T: Element>(&'a self, buf: &'a EmuBuf<T>) -> Bound<'a, Self> {
        Bound::new(buf.0.as_ptr() as u64, std::mem::size_of_val(buf.0.as_slice()), ())
    }
    fn write<'a, T: Element>(&'a self, buf: &'a mut EmuBuf<T>) -> Bound<'a, Self> {
        let bytes = std::mem::size_of_val(buf.0.as_slice());
        Bound::new(buf.0.as_mut_ptr() as u64, bytes, ())
    }
    unsafe fn launch(&self, entry: Entry, launch: Launch, args: Args, buffers: &[Bound<'_, Self>]) -> Result<(), CudaError> {
        let name = &entry.to_string();
        let spans: Vec<Span> = buffers.iter().map(|b| b.span).collect();
        let spans = spans.as_slice();
        // SAFETY: the caller's contract (the parameter struct is the kernel's); the emulator
        // checks every access against the spans itself.
        unsafe {
            match args {
                Args::Attn(p) => self.launch_with(name, launch, p, spans),
                Args::Expand(p) => self.launch_with(name, launch, p, spans),
                Args::Probe(p) => self.launch_with(name, launch, p, spans),
                Args::Fill(p) => self.launch_with(name, launch, p, spans),
            }
        }
    }
    fn synchronize(&self) -> Result<(), CudaError> {
        Ok(())
    }
    /// Wall-clock time of one call after one warm-up: the emulator's speed says nothing about a
    /// GPU's, so this only keeps the benchmark's code path runnable here.
    fn time(&self, _budget_ms: f64, _max_reps: usize, f: &mut dyn FnMut() -> Result<(), CudaError>) -> Result<Timing, CudaError> {
        f()?;
        let t = std::time::Instant::now();
        f()?;
        Ok(Timing::single(t.elapsed().as_secs_f64() * 1e3))
    }
    fn multiprocessors(&self) -> usize {
        MULTIPROCESSORS
    }
    fn max_shared_per_block(&self) -> usize {
        MAX_SHARED_PER_BLOCK
    }
    fn max_shared_per_multiprocessor(&self) -> usize {
        self.shared_per_multiprocessor
    }
    fn reserved_shared_per_block(&self) -> usize {
        RESERVED_SHARED_PER_BLOCK
    }
    fn has_mma(&self) -> bool {
        true
    }
    fn has_wgmma(&self) -> bool {
        true
    }
}

impl Emulator {
    /// The emulator with the shared-memory checks on and threads run in `schedule`.
    pub fn checked(schedule: Schedule) -> Self {
        Self {
            schedule,
            check_shared: true,
            ..Self::default()
        }
    }

    /// Run kernel `name` with parameter struct `params`; `spans` are the buffers it may touch.
    /// Synchronous. Besides the decode kernels, the emulator has test kernels `selftest_*`
    /// (emu/selftest.cu), which take `{ float* out; int n; }`.
    ///
    /// # Safety
    /// `P` must be the parameter struct kernel `name` takes, field for field.
    pub unsafe fn launch_with<P: Copy>(&self, name: &str, launch: Launch, params: &P, spans: &[Span]) -> Result<(), CudaError> {
        let cname = CString::new(name).map_err(|_| CudaError::Emulator(format!("kernel name {name:?}")))?;
        let grid = [launch.grid.0, launch.grid.1, launch.grid.2];
        let block = [launch.threads, 1, 1];
        let params: *const c_void = (params as *const P).cast();
        let ranges: Vec<u64> = spans
            .iter()
            .filter(|s| s.bytes > 0)
            .flat_map(|s| [s.addr, s.addr + s.bytes as u64])
            .collect();
        let (schedule, seed) = match self.schedule {
            Schedule::Forward => (0, 0),
            Schedule::Reverse => (1, 0),
            Schedule::Shuffled(seed) => (2, seed),
        };
        let mut error = vec![0u8; 1024];
        // SAFETY: the parameter struct is the kernel's (the caller's contract) and its pointers
        // point into the buffers listed in `spans`, which the caller borrows for the call; the
        // emulator checks every access against those spans and performs none outside them. It
        // runs synchronously, so nothing outlives this call.
        let rc = unsafe {
            gqla_emu_launch(
                cname.as_ptr(),
                grid.as_ptr(),
                block.as_ptr(),
                launch.shared_bytes as usize,
                params,
                ranges.as_ptr(),
                ranges.len() / 2,
                self.threads as u32,
                schedule,
                seed,
                c_int::from(self.check_shared),
                error.as_mut_ptr().cast(),
                error.len(),
            )
        };
        if rc != 0 {
            let end = error.iter().position(|&b| b == 0).unwrap_or(error.len());
            return Err(CudaError::Emulator(String::from_utf8_lossy(&error[..end]).into_owned()));
        }
        Ok(())
    }
}
