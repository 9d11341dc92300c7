//! GPUs the planner knows: dense bf16 matrix rate, memory bandwidth and per-GPU interconnect
//! bandwidth from the vendors' datasheets (SXM parts where there are several). Datasheet figures
//! are upper bounds; measured ceilings (e.g. `gqla bench decode`'s) override them.

/// One GPU's ceilings.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct GpuSpec {
    /// The name `--gpu` takes.
    pub key: &'static str,
    pub name: &'static str,
    /// Dense bf16 tensor-core rate with f32 accumulation, TFLOP/s.
    pub bf16_tflops: f64,
    /// Memory bandwidth, GB/s.
    pub bandwidth_gbps: f64,
    /// Per-GPU interconnect bandwidth for tensor-parallel all-reduces, GB/s (NVLink, else PCIe).
    pub link_gbps: f64,
    /// Where the figures come from.
    pub source: &'static str,
}

impl GpuSpec {
    /// Arithmetic intensity (FLOP/byte) at which the two roofs meet.
    pub fn ridge(&self) -> f64 {
        self.bf16_tflops * 1e12 / (self.bandwidth_gbps * 1e9)
    }
    /// The same GPU with measured ceilings in place of the datasheet's.
    pub fn with_measured(mut self, bf16_tflops: Option<f64>, bandwidth_gbps: Option<f64>) -> Self {
        if let Some(t) = bf16_tflops {
            self.bf16_tflops = t;
            self.source = "measured (overrides the datasheet)";
        }
        if let Some(b) = bandwidth_gbps {
            self.bandwidth_gbps = b;
            self.source = "measured (overrides the datasheet)";
        }
        self
    }
}

/// The table.
pub const GPUS: [GpuSpec; 8] = [
    GpuSpec {
        key: "h100",
        name: "H100 SXM5 80GB",
        bf16_tflops: 989.0,
        bandwidth_gbps: 3350.0,
        link_gbps: 900.0,
        source: "NVIDIA H100 datasheet",
    },
    GpuSpec {
        key: "h800",
        name: "H800 SXM5 80GB",
        bf16_tflops: 989.0,
        bandwidth_gbps: 3350.0,
        link_gbps: 400.0,
        source: "NVIDIA H800 datasheet (H100 compute, NVLink cut to 400 GB/s)",
    },
    GpuSpec {
        key: "h20",
        name: "H20 96GB",
        bf16_tflops: 148.0,
        bandwidth_gbps: 4000.0,
        link_gbps: 900.0,
        source: "NVIDIA H20 datasheet",
    },
    GpuSpec {
        key: "h200",
        name: "H200 SXM 141GB",
        bf16_tflops: 989.0,
        bandwidth_gbps: 4800.0,
        link_gbps: 900.0,
        source: "NVIDIA H200 datasheet",
    },
    GpuSpec {
        key: "a100",
        name: "A100 SXM4 80GB",
        bf16_tflops: 312.0,
        bandwidth_gbps: 2039.0,
        link_gbps: 600.0,
        source: "NVIDIA A100 datasheet",
    },
    GpuSpec {
        key: "l40s",
        name: "L40S 48GB",
        bf16_tflops: 362.0,
        bandwidth_gbps: 864.0,
        link_gbps: 64.0,
        source: "NVIDIA L40S datasheet (PCIe Gen4 x16, no NVLink)",
    },
    GpuSpec {
        key: "b200",
        name: "B200 180GB (HGX)",
        bf16_tflops: 2250.0,
        bandwidth_gbps: 8000.0,
        link_gbps: 1800.0,
        source: "NVIDIA Blackwell datasheet",
    },
    GpuSpec {
        key: "rtx4090",
        name: "GeForce RTX 4090 24GB",
        bf16_tflops: 165.2,
        bandwidth_gbps: 1008.0,
        link_gbps: 64.0,
        source: "NVIDIA Ada whitepaper (bf16 with f32 accumulation; PCIe Gen4 x16)",
    },
];

/// The GPU `key` names (case-insensitive).
pub fn gpu(key: &str) -> Option<GpuSpec> {
    GPUS.iter().copied().find(|g| g.key.eq_ignore_ascii_case(key))
}
