//! Builds the host emulator: the CUDA kernel source compiled by the C++ compiler against a small
//! shim of the CUDA runtime (emu/), so the kernels run and are certified without a GPU.

/// The kernel source files, in the order they are assembled (each may use what comes before).
const PARTS: [&str; 9] = [
    "common.cuh",
    "attn_simt.cu",
    "mma.cuh",
    "wgmma.cuh",
    "attn_tc.cu",
    "probes.cu",
    "combine_expand.cu",
    "fill.cu",
    "instantiate.cu",
];

/// Assemble the kernel parts into one source in `OUT_DIR` (NVRTC takes one string, and the
/// emulator includes the same file), each after a `#line` so diagnostics name the part.
fn assemble_kernels() -> std::path::PathBuf {
    let mut source = String::new();
    for part in PARTS {
        let path = format!("kernels/{part}");
        println!("cargo:rerun-if-changed={path}");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
        source.push_str(&format!("#line 1 \"{path}\"\n{text}"));
    }
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out.join("gqla_kernels.cu"), source).expect("writing the assembled kernels");
    out
}

fn main() {
    println!("cargo:rerun-if-changed=emu/emu.cpp");
    println!("cargo:rerun-if-changed=emu/emu.h");
    println!("cargo:rerun-if-changed=emu/selftest.cu");
    for part in ["state", "shared_check", "sync", "tensor_core", "scheduler"] {
        println!("cargo:rerun-if-changed=emu/{part}.inc");
    }
    let assembled = assemble_kernels();
    cc::Build::new()
        .cpp(true)
        .file("emu/emu.cpp")
        .include(&assembled)
        .std("c++17")
        .opt_level(2)
        // _longjmp onto another fiber's stack is what the emulator does on purpose.
        .flag("-U_FORTIFY_SOURCE")
        .flag("-fno-strict-aliasing")
        .flag_if_supported("-Wno-unknown-pragmas")
        .compile("gqla_cuda_emu");
}
