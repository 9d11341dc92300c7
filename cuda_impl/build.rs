//! Builds the host emulator: the CUDA kernel source compiled by the C++ compiler against a small
//! shim of the CUDA runtime (emu/), so the kernels run and are certified without a GPU.

fn main() {
    println!("cargo:rerun-if-changed=emu/emu.cpp");
    println!("cargo:rerun-if-changed=emu/emu.h");
    println!("cargo:rerun-if-changed=emu/selftest.cu");
    println!("cargo:rerun-if-changed=kernels/decode.cu");
    cc::Build::new()
        .cpp(true)
        .file("emu/emu.cpp")
        .std("c++17")
        .opt_level(2)
        // _longjmp onto another fiber's stack is what the emulator does on purpose.
        .flag("-U_FORTIFY_SOURCE")
        .flag("-fno-strict-aliasing")
        .flag_if_supported("-Wno-unknown-pragmas")
        .compile("gqla_cuda_emu");
}
