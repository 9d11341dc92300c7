//! Where the kernels run: a CUDA device ([`Gpu`]) or the host emulator ([`Emulator`]).
//!
//! The launch code ([`crate::launch`]) and the harness kernel ([`crate::kernel`]) are written
//! once against [`Runtime`], so the emulator runs exactly the launches the GPU gets: same
//! parameter structs, grids, shared-memory sizes and split counts.
//!
//! [`Emulator`]: crate::emu::Emulator

use crate::compile::Entry;
use crate::device::Gpu;
use crate::timing::Timing;
use crate::{driver, CudaError};
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg, SyncOnDrop, ValidAsZeroBits};
use std::collections::BTreeMap;

/// Element types of runtime buffers.
pub trait Element: DeviceRepr + ValidAsZeroBits + Default + Copy + Unpin + 'static {}
impl Element for u8 {}
impl Element for i32 {}
impl Element for f32 {}

/// Parameters of the attention kernels (`AttnParams` in kernels/common.cuh, field for field).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct AttnParams {
    pub q: u64,
    pub ka: u64,
    pub kb: u64,
    pub v: u64,
    pub seq_lens: u64,
    pub block_table: u64,
    pub out: u64,
    pub lse: u64,
    pub part_o: u64,
    pub part_lse: u64,
    pub ka_stride: i64,
    pub kb_stride: i64,
    pub v_stride: i64,
    pub ka_head_stride: i32,
    pub v_head_stride: i32,
    pub da: i32,
    pub db: i32,
    pub dv: i32,
    pub max_pages: i32,
    pub page: i32,
    pub batch: i32,
    pub sq: i32,
    pub h: i32,
    pub streams: i32,
    pub num_splits: i32,
    pub v_is_key_prefix: i32,
    pub stages: i32,
    pub scale: f32,
}
// SAFETY: plain old data with the layout of the CUDA struct.
unsafe impl DeviceRepr for AttnParams {}

/// Parameters of the expand kernel (`ExpandParams` in kernels/common.cuh).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ExpandParams {
    pub latent: u64,
    pub w: u64,
    pub tok_b: u64,
    pub tok_t: u64,
    pub block_table: u64,
    pub k_out: u64,
    pub v_out: u64,
    pub max_pages: i32,
    pub page: i32,
    pub tokens: i32,
    pub g: i32,
    pub dc: i32,
    pub dn: i32,
    pub dv: i32,
}
// SAFETY: as above.
unsafe impl DeviceRepr for ExpandParams {}

/// Parameters of `mma_probe_*` (`ProbeParams` in kernels/probes.cu): one m16n8k16 product of row-major
/// `a [16][16]` and `b [16][8]` (16-bit floats) into `d [16][8]` (f32).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ProbeParams {
    pub a: u64,
    pub b: u64,
    pub d: u64,
}
// SAFETY: as above.
unsafe impl DeviceRepr for ProbeParams {}

/// Parameters of `fill_*` (`FillParams` in kernels/fill.cu): `n` pseudo-random elements
/// amp·[-1, 1) at `p`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FillParams {
    pub p: u64,
    pub n: i64,
    pub seed: u32,
    pub amp: f32,
}
// SAFETY: as above.
unsafe impl DeviceRepr for FillParams {}

/// The parameter struct of one launch.
#[derive(Clone, Copy, Debug)]
pub enum Args<'a> {
    Attn(&'a AttnParams),
    Expand(&'a ExpandParams),
    Probe(&'a ProbeParams),
    Fill(&'a FillParams),
}

/// Grid, block and dynamic shared memory of one launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Launch {
    pub grid: (u32, u32, u32),
    pub threads: u32,
    pub shared_bytes: u32,
}

/// A buffer a launch may touch: `bytes` bytes from address `addr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub addr: u64,
    pub bytes: usize,
}

/// A buffer bound for one launch: the address its kernel gets, the span it may touch, and the
/// runtime's access guard. On the GPU the guard is cudarc's event record, which must be dropped
/// only after the launch that uses the address is enqueued; so a `Bound` is passed to
/// [`Runtime::launch`] and lives until it returns.
pub struct Bound<'a, R: Runtime + ?Sized + 'a> {
    pub addr: u64,
    pub span: Span,
    _guard: R::Guard<'a>,
}

impl<'a, R: Runtime + ?Sized + 'a> Bound<'a, R> {
    /// `bytes` bytes at `addr`, held by `guard`.
    pub fn new(addr: u64, bytes: usize, guard: R::Guard<'a>) -> Self {
        Self {
            addr,
            span: Span { addr, bytes },
            _guard: guard,
        }
    }
    /// The address `elements` elements of `elem_bytes` bytes past the start.
    pub fn offset(&self, elements: usize, elem_bytes: usize) -> u64 {
        self.addr + (elements * elem_bytes) as u64
    }
}

/// Memory and launches of one place the kernels run. Launches are asynchronous and ordered;
/// [`Runtime::synchronize`] waits for them.
pub trait Runtime: Send + Sync {
    /// A buffer of `T` in the runtime's memory.
    type Buf<T: Element>;
    /// What keeps a bound buffer's access recorded until its launch is enqueued.
    type Guard<'a>
    where
        Self: 'a;

    /// The name a certificate gives the kernels on this runtime (`cuda`, `cuda-emu`).
    fn kernel_name(&self) -> &'static str;
    /// One line about where the kernels run.
    fn description(&self) -> String;
    /// What a certificate records about the runtime.
    fn environment(&self) -> BTreeMap<String, String>;
    /// Make the runtime usable from the calling thread.
    fn bind(&self) -> Result<(), CudaError>;

    fn upload<T: Element>(&self, data: &[T]) -> Result<Self::Buf<T>, CudaError>;
    fn download<T: Element>(&self, buf: &Self::Buf<T>) -> Result<Vec<T>, CudaError>;
    /// Elements `start..start + len` of `buf`.
    fn download_range<T: Element>(&self, buf: &Self::Buf<T>, start: usize, len: usize) -> Result<Vec<T>, CudaError>;
    fn zeros<T: Element>(&self, n: usize) -> Result<Self::Buf<T>, CudaError>;
    fn len<T: Element>(buf: &Self::Buf<T>) -> usize;
    /// `buf` bound for a launch that reads it.
    fn read<'a, T: Element>(&'a self, buf: &'a Self::Buf<T>) -> Bound<'a, Self>;
    /// `buf` bound for a launch that writes it.
    fn write<'a, T: Element>(&'a self, buf: &'a mut Self::Buf<T>) -> Bound<'a, Self>;

    /// Launch kernel `name` (e.g. `attn_bf16`) on `buffers`, the buffers its parameters point
    /// into. Asynchronous on the GPU; the emulator runs it before returning.
    ///
    /// # Safety
    /// - `args` is the parameter struct kernel `name` takes;
    /// - every address in `args` points into one of `buffers`, and every access the kernel makes
    ///   as the parameters direct it (strides, widths, counts, and the lengths, block-table
    ///   entries and token lists it reads from device memory) stays within those buffers;
    /// - the buffers are not freed or touched by the host until the launch completes (the next
    ///   [`Runtime::synchronize`] or download on the same runtime).
    ///
    /// The emulator checks every access against `buffers` and fails the launch on the first one
    /// outside them; the GPU checks nothing, and an access outside them is undefined behaviour.
    unsafe fn launch(&self, entry: Entry, launch: Launch, args: Args, buffers: &[Bound<'_, Self>]) -> Result<(), CudaError>;
    fn synchronize(&self) -> Result<(), CudaError>;
    /// The time of one call of `f` (which enqueues work): after a warm-up, enough runs for about
    /// `budget_ms`, at least 5 and at most `max_reps`, each timed by its own CUDA events on a cold
    /// L2 (see [`crate::timing`]).
    fn time(&self, budget_ms: f64, max_reps: usize, f: &mut dyn FnMut() -> Result<(), CudaError>) -> Result<Timing, CudaError>;

    fn multiprocessors(&self) -> usize;
    /// Dynamic shared memory one block may opt in to.
    fn max_shared_per_block(&self) -> usize;
    /// Shared memory of one SM, of which each resident block also takes `reserved_shared_per_block`.
    fn max_shared_per_multiprocessor(&self) -> usize;
    fn reserved_shared_per_block(&self) -> usize;
    /// Whether the tensor-core kernels run here (compute capability 8.0 or later).
    fn has_mma(&self) -> bool;
    /// Whether the wgmma kernels run here (compute capability 9.0, compiled for sm_90a).
    fn has_wgmma(&self) -> bool;
}

impl Runtime for Gpu {
    type Buf<T: Element> = CudaSlice<T>;
    type Guard<'a> = SyncOnDrop<'a>;

    fn kernel_name(&self) -> &'static str {
        "cuda"
    }
    fn description(&self) -> String {
        format!("{} ({}), NVRTC {}", self.info.name, self.info.arch, self.info.nvrtc_version)
    }
    fn environment(&self) -> BTreeMap<String, String> {
        self.info.environment()
    }
    fn bind(&self) -> Result<(), CudaError> {
        // Nothing more runs behind a hung kernel: each further wait would only time out again.
        if let Some(hung) = self.hung_error("an earlier launch (no further work is started)") {
            return Err(hung);
        }
        self.ctx.bind_to_thread().map_err(driver("binding the context to the thread"))
    }
    fn upload<T: Element>(&self, data: &[T]) -> Result<CudaSlice<T>, CudaError> {
        self.stream.clone_htod(data).map_err(driver("copying to the device"))
    }
    fn download<T: Element>(&self, buf: &CudaSlice<T>) -> Result<Vec<T>, CudaError> {
        self.stream.clone_dtoh(buf).map_err(driver("copying from the device"))
    }
    fn download_range<T: Element>(&self, buf: &CudaSlice<T>, start: usize, len: usize) -> Result<Vec<T>, CudaError> {
        if start + len > buf.len() {
            return Err(CudaError::Unsupported(format!(
                "elements {start}..{} of a buffer of {}",
                start + len,
                buf.len()
            )));
        }
        self.stream
            .clone_dtoh(&buf.slice(start..start + len))
            .map_err(driver("copying from the device"))
    }
    fn zeros<T: Element>(&self, n: usize) -> Result<CudaSlice<T>, CudaError> {
        self.stream.alloc_zeros::<T>(n).map_err(driver("allocating a buffer"))
    }
    fn len<T: Element>(buf: &CudaSlice<T>) -> usize {
        buf.len()
    }
    fn read<'a, T: Element>(&'a self, buf: &'a CudaSlice<T>) -> Bound<'a, Self> {
        let bytes = buf.len() * std::mem::size_of::<T>();
        let (addr, guard) = buf.device_ptr(&self.stream);
        Bound::new(addr, bytes, guard)
    }
    fn write<'a, T: Element>(&'a self, buf: &'a mut CudaSlice<T>) -> Bound<'a, Self> {
        let bytes = buf.len() * std::mem::size_of::<T>();
        let (addr, guard) = buf.device_ptr_mut(&self.stream);
        Bound::new(addr, bytes, guard)
    }
    unsafe fn launch(&self, entry: Entry, launch: Launch, args: Args, _buffers: &[Bound<'_, Self>]) -> Result<(), CudaError> {
        let f = self.function(entry)?;
        if launch.shared_bytes > 0 {
            self.allow_shared(entry, f, launch.shared_bytes)?;
        }
        let cfg = LaunchConfig {
            grid_dim: launch.grid,
            block_dim: (launch.threads, 1, 1),
            shared_mem_bytes: launch.shared_bytes,
        };
        let mut b = self.stream.launch_builder(f);
        match args {
            Args::Attn(p) => b.arg(p),
            Args::Expand(p) => b.arg(p),
            Args::Probe(p) => b.arg(p),
            Args::Fill(p) => b.arg(p),
        };
        // SAFETY: the caller's contract: the parameters are the kernel's, point into `_buffers` and
        // stay within them, and the buffers outlive the launch (every use is ordered on this one
        // stream). The buffers' access guards drop after this returns, when it is enqueued.
        unsafe { b.launch(cfg) }.map_err(driver(format!("launching {entry}")))?;
        Ok(())
    }
    fn synchronize(&self) -> Result<(), CudaError> {
        let done = self.record(CUevent_flags::CU_EVENT_DISABLE_TIMING)?;
        self.wait(&done, "running the kernels")
    }
    fn time(&self, budget_ms: f64, max_reps: usize, f: &mut dyn FnMut() -> Result<(), CudaError>) -> Result<Timing, CudaError> {
        let mut flush = self.flush_buffer()?;
        let flush = flush.as_mut().expect("allocated by flush_buffer");
        let mut runs = |n: usize| -> Result<Vec<f64>, CudaError> {
            let mut events = Vec::with_capacity(n);
            for _ in 0..n {
                self.stream.memset_zeros(flush).map_err(driver("flushing L2"))?;
                let start = self.record(CUevent_flags::CU_EVENT_DEFAULT)?;
                f()?;
                events.push((start, self.record(CUevent_flags::CU_EVENT_DEFAULT)?));
            }
            if let Some((_, last)) = events.last() {
                self.wait(last, "running the timed work")?;
            }
            events
                .iter()
                .map(|(a, b)| a.elapsed_ms(b).map(f64::from).map_err(driver("reading an event")))
                .collect()
        };
        runs(1)?; // warm-up
        let first = runs(1)?[0];
        let reps = ((budget_ms / first.max(1e-3)) as usize).clamp(5, max_reps.max(5));
        Timing::from_samples(runs(reps)?).ok_or_else(|| CudaError::Timing {
            what: "a launch".into(),
            why: "the events gave no finite times".into(),
        })
    }
    fn multiprocessors(&self) -> usize {
        self.info.multiprocessors.max(1) as usize
    }
    fn max_shared_per_block(&self) -> usize {
        self.info.max_shared_per_block.max(0) as usize
    }
    fn max_shared_per_multiprocessor(&self) -> usize {
        self.info.max_shared_per_multiprocessor.max(0) as usize
    }
    fn reserved_shared_per_block(&self) -> usize {
        self.info.reserved_shared_per_block.max(0) as usize
    }
    fn has_mma(&self) -> bool {
        self.info.compute_capability.0 >= 8
    }
    fn has_wgmma(&self) -> bool {
        crate::compile::has_wgmma(&self.info.arch)
    }
}
