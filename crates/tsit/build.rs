//! Links LibTorch into the examples and benchmarks with `--no-as-needed`, as the runner's
//! build script does for its binary: without it the linker drops `libtorch.so`, and with it
//! `libtorch_cuda.so`, so CUDA would be unavailable to the step timers on a GPU machine.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        for kind in ["examples", "benches"] {
            println!("cargo:rustc-link-arg-{kind}=-Wl,--no-as-needed");
            println!("cargo:rustc-link-arg-{kind}=-ltorch");
        }
    }
}
