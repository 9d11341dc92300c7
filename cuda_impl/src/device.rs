//! Finding a GPU without panicking, and loading the kernels onto it.

use crate::compile::{entries, nvrtc_version, options, Entry};
use crate::{driver, CudaError};
use cudarc::driver::sys::CUdevice_attribute;
use cudarc::driver::{CudaContext, CudaEvent, CudaFunction, CudaModule, CudaSlice, CudaStream};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// What a certificate records about the device and the build of the kernels.
#[derive(Clone, Debug, PartialEq)]
pub struct GpuInfo {
    pub name: String,
    pub compute_capability: (i32, i32),
    pub multiprocessors: i32,
    pub max_shared_per_block: i32,
    pub max_shared_per_multiprocessor: i32,
    pub reserved_shared_per_block: i32,
    pub l2_bytes: i32,
    pub driver_version: String,
    pub nvrtc_version: String,
    pub arch: String,
    pub compile_options: Vec<String>,
}

impl GpuInfo {
    pub fn environment(&self) -> BTreeMap<String, String> {
        [
            ("device", self.name.clone()),
            (
                "compute_capability",
                format!("{}.{}", self.compute_capability.0, self.compute_capability.1),
            ),
            ("multiprocessors", self.multiprocessors.to_string()),
            ("l2_cache_bytes", self.l2_bytes.to_string()),
            ("cuda_driver", self.driver_version.clone()),
            ("nvrtc", self.nvrtc_version.clone()),
            ("nvrtc_options", self.compile_options.join(" ")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

/// The CUDA driver's version as "major.minor".
fn driver_version() -> Result<String, CudaError> {
    let mut v = 0;
    // SAFETY: the driver library is loaded (checked by the caller); the call writes one int.
    let r = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) };
    if r != cudarc::driver::sys::CUresult::CUDA_SUCCESS {
        return Err(CudaError::Driver {
            what: "reading the driver version".into(),
            source: cudarc::driver::DriverError(r),
        });
    }
    Ok(format!("{}.{}", v / 1000, (v % 1000) / 10))
}

/// A context on device `ordinal`, or why there is none. Never panics: the driver library is
/// probed before any call into it.
pub fn context(ordinal: usize) -> Result<Arc<CudaContext>, CudaError> {
    // SAFETY: only tries to dlopen the library.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(CudaError::NoDriver);
    }
    let n = CudaContext::device_count().map_err(|e| CudaError::NoDevice(format!("{e:?}")))?;
    if (n as usize) <= ordinal {
        return Err(CudaError::NoDevice(format!("device {ordinal} asked for, {n} present")));
    }
    CudaContext::new(ordinal).map_err(|e| CudaError::NoDevice(format!("{e:?}")))
}

/// An opened GPU with the kernels compiled for its architecture and loaded.
pub struct Gpu {
    pub(crate) ctx: Arc<CudaContext>,
    pub(crate) stream: Arc<CudaStream>,
    _module: Arc<CudaModule>,
    functions: HashMap<Entry, CudaFunction>,
    /// Dynamic shared memory each kernel has been allowed so far (the driver call is made only
    /// when a launch needs more, not on every launch of a timed loop).
    shared_allowed: Mutex<HashMap<Entry, u32>>,
    /// The buffer written before each timed run to evict L2 (allocated at the first timing).
    flush: Mutex<Option<CudaSlice<u8>>>,
    /// Set when a wait timed out: the device resources are then leaked on drop, not freed.
    hung: std::sync::atomic::AtomicBool,
    pub info: GpuInfo,
}

impl Drop for Gpu {
    /// After a hung kernel, freeing the flush buffer, the module or the context could block
    /// behind it forever: they are leaked instead (the process is about to exit).
    fn drop(&mut self) {
        if self.hung.load(std::sync::atomic::Ordering::SeqCst) {
            std::mem::forget(self.flush.get_mut().map(Option::take).unwrap_or_else(|e| e.into_inner().take()));
            std::mem::forget(self.stream.clone());
            std::mem::forget(self._module.clone());
            std::mem::forget(self.ctx.clone());
        }
    }
}

/// The exit status of a process whose GPU work hung (as `timeout`'s).
pub const HUNG_EXIT_CODE: i32 = 124;

impl Gpu {
    /// Open device `ordinal`, compile the kernels with NVRTC for its compute capability and load
    /// them.
    pub fn open(ordinal: usize) -> Result<Self, CudaError> {
        let ctx = context(ordinal)?;
        let cc = ctx.compute_capability().map_err(driver("reading the compute capability"))?;
        let arch = crate::compile::arch_for(cc);
        let (ptx, _cache) = crate::ptx_cache::compile_cached(&arch, crate::ptx_cache::default_dir().as_deref())?;
        let module = ctx.load_module(ptx).map_err(driver("loading the compiled module"))?;
        let mut functions = HashMap::new();
        for entry in entries(&arch) {
            let f = module
                .load_function(&entry.to_string())
                .map_err(driver(format!("loading kernel {entry}")))?;
            functions.insert(entry, f);
        }
        let attr = |a| ctx.attribute(a).map_err(driver("reading a device attribute"));
        let info = GpuInfo {
            name: ctx.name().map_err(driver("reading the device name"))?,
            compute_capability: cc,
            multiprocessors: attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?,
            max_shared_per_block: attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?,
            max_shared_per_multiprocessor: attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR)?,
            reserved_shared_per_block: attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_RESERVED_SHARED_MEMORY_PER_BLOCK)?,
            l2_bytes: attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)?,
            driver_version: driver_version()?,
            nvrtc_version: nvrtc_version()?,
            compile_options: options(&arch),
            arch,
        };
        // One stream: ordering is the stream's, so cudarc's per-buffer event tracking is not needed.
        // SAFETY: every buffer of this crate is used on `stream` only.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        Ok(Self {
            ctx,
            stream,
            _module: module,
            functions,
            shared_allowed: Mutex::new(HashMap::new()),
            flush: Mutex::new(None),
            hung: std::sync::atomic::AtomicBool::new(false),
            info,
        })
    }

    /// Allow kernel `entry` `bytes` of dynamic shared memory (above 48 KB needs an opt-in).
    pub(crate) fn allow_shared(&self, entry: Entry, f: &CudaFunction, bytes: u32) -> Result<(), CudaError> {
        let mut allowed = self.shared_allowed.lock().unwrap_or_else(|e| e.into_inner());
        if allowed.get(&entry).is_some_and(|&a| a >= bytes) {
            return Ok(());
        }
        use cudarc::driver::sys::CUfunction_attribute::{
            CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT,
        };
        f.set_attribute(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes as i32)
            .map_err(driver("raising the shared-memory limit"))?;
        if bytes > 48 * 1024 {
            // The kernels that need the opt-in want every block the registers allow resident
            // (two of the narrow tensor-core kernel's ~103 KB): prefer the largest shared-memory
            // carveout (a hint, in percent; their cp.async.cg loads bypass L1 anyway).
            f.set_attribute(CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT, 100)
                .map_err(driver("preferring the shared-memory carveout"))?;
        }
        allowed.insert(entry, bytes);
        Ok(())
    }

    /// A loaded kernel (e.g. `attn_bf16`); an error for one the architecture lacks (wgmma off
    /// sm_90a).
    pub(crate) fn function(&self, entry: Entry) -> Result<&CudaFunction, CudaError> {
        self.functions
            .get(&entry)
            .ok_or_else(|| CudaError::Unsupported(format!("no kernel named {entry} in the module for {}", self.info.arch)))
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Wait for the work recorded in `event`, polling, for at most [`sync_timeout`]. Work that
    /// outlasts it is taken for a hung kernel: [`CudaError::Hung`], and this GPU is marked so that
    /// dropping it leaks its context instead of tearing it down (the destructors' driver calls
    /// could block behind the kernel). The caller writes what it can and exits with
    /// [`HUNG_EXIT_CODE`], so that a hang does not eat the rest of a GPU lease. Errors of earlier
    /// launches (a fault) come back as errors.
    ///
    /// [`sync_timeout`]: crate::timing::sync_timeout
    pub(crate) fn wait(&self, event: &CudaEvent, what: &str) -> Result<(), CudaError> {
        let limit = crate::timing::sync_timeout();
        let start = Instant::now();
        let mut pause = Duration::from_micros(10);
        while !event.try_is_complete().map_err(driver(what))? {
            if start.elapsed() > limit {
                self.hung.store(true, std::sync::atomic::Ordering::SeqCst);
                return Err(self.hung_error(what).expect("marked hung just now"));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(1));
        }
        Ok(())
    }

    /// [`CudaError::Hung`] for `what` once a wait on this GPU has timed out (see [`Gpu::wait`]);
    /// None while it has not.
    pub fn hung_error(&self, what: &str) -> Option<CudaError> {
        self.hung.load(std::sync::atomic::Ordering::SeqCst).then(|| CudaError::Hung {
            what: what.to_string(),
            seconds: crate::timing::sync_timeout().as_secs_f64(),
        })
    }

    /// An event recorded on the stream now.
    pub(crate) fn record(&self, flags: cudarc::driver::sys::CUevent_flags) -> Result<CudaEvent, CudaError> {
        let e = self.ctx.new_event(Some(flags)).map_err(driver("creating an event"))?;
        e.record(&self.stream).map_err(driver("recording an event"))?;
        Ok(e)
    }

    /// The L2 flush buffer ([`crate::timing::flush_bytes`]), allocated on first use.
    pub(crate) fn flush_buffer(&self) -> Result<MutexGuard<'_, Option<CudaSlice<u8>>>, CudaError> {
        let mut flush = self.flush.lock().unwrap_or_else(|e| e.into_inner());
        if flush.is_none() {
            let bytes = crate::timing::flush_bytes(self.info.l2_bytes.max(0) as usize);
            *flush = Some(
                self.stream
                    .alloc_zeros::<u8>(bytes)
                    .map_err(driver("allocating the L2 flush buffer"))?,
            );
        }
        Ok(flush)
    }
}
