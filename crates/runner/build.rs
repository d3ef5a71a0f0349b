//! Links LibTorch so that CUDA really is available at run time, and records its version.
//!
//! The linker's default `--as-needed` drops `libtorch.so` (nothing references it directly), and
//! with it `libtorch_cuda.so`: `tch::Cuda::is_available()` would then be false on a GPU machine.
//! `--no-as-needed -ltorch` keeps it; the rpath lets the binary run without `LD_LIBRARY_PATH`.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB").unwrap_or_default();
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg-bins=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg-bins=-ltorch");
        if !lib.is_empty() {
            println!("cargo:rustc-link-arg-bins=-Wl,-rpath,{lib}");
        }
    }
    // The pip wheel keeps its version in torch/version.py beside torch/lib.
    let version = Path::new(&lib)
        .parent()
        .map(|torch| torch.join("version.py"))
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|text| {
            text.lines().find_map(|l| {
                l.strip_prefix("__version__ = ")
                    .map(|v| v.trim_matches(['\'', '"']).to_string())
            })
        })
        .or_else(|| {
            let lt = Path::new(&lib).parent()?.join("build-version");
            std::fs::read_to_string(lt)
                .ok()
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=REPRISE_LIBTORCH_VERSION={version}");
    println!("cargo:rustc-env=REPRISE_LIBTORCH_LIB={lib}");
}
