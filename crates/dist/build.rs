//! Compiles the C++ shim over LibTorch's c10d (`shim/dist.cpp`) against the headers of the
//! LibTorch that torch-sys found (`DEP_TCH_LIBTORCH_LIB`: `<torch>/lib`, headers in
//! `<torch>/include`).
//!
//! `ProcessGroupGloo.hpp` includes Gloo's headers, which the PyTorch wheel does not ship; the 17
//! it reaches are vendored under `vendor/gloo` (with Gloo's BSD licence), taken from
//! github.com/pytorch/gloo at commit bcd1672ee07538123ea8f4fac76832efc58fb8ef (2026-02-12), the
//! last before Gloo moved to C++20. PyTorch 2.11.0 (git 70d99e99) pins its own Gloo commit as a
//! submodule, which could not be read where this was written (the PyTorch repository was too
//! large to fetch): the shim only passes Gloo objects by pointer and calls LibTorch's exported
//! functions, so it does not depend on the layout of Gloo's classes.
//!
//! Where LibTorch has CUDA (`libtorch_cuda.so`) and the CUDA runtime's and NCCL's headers are
//! found, `shim/nccl.cpp` adds c10d's NCCL backend for CUDA tensors. The PyTorch wheel's
//! dependencies ship `cuda_runtime.h` and `nccl.h` under `site-packages/nvidia/`; two pieces the
//! runtime headers include (`crt/host_config.h`, `nv/target`) come from the small header
//! packages `nvidia-cuda-crt` and `nvidia-cuda-cccl`, which `just setup` adds. Elsewhere set
//! `REPRISE_CUDA_INCLUDE` to a `:`-separated list of folders holding them (a CUDA toolkit's
//! `include`, NCCL's). Without them the build says so and CUDA collectives go through Gloo.
//! The same unit reads the CUDA caching allocator's peak (`dist::cuda_peak_bytes`, for
//! `runner plan`).

use std::path::{Path, PathBuf};

/// The include folders of the CUDA runtime and NCCL, when every header the NCCL backend reaches
/// is found there.
fn cuda_includes(torch: &Path) -> Option<Vec<PathBuf>> {
    let dirs: Vec<PathBuf> = match std::env::var("REPRISE_CUDA_INCLUDE") {
        Ok(v) if !v.is_empty() => std::env::split_paths(&v).collect(),
        _ => {
            let nvidia = torch.parent()?.join("nvidia");
            let mut d = vec![nvidia.join("nccl/include")];
            // cu13, cu12, …: the CUDA the wheel was built with.
            let mut cu: Vec<PathBuf> = std::fs::read_dir(&nvidia)
                .ok()?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("cu"))
                })
                .map(|p| p.join("include"))
                .collect();
            cu.sort();
            d.extend(cu);
            d
        }
    };
    let needed = ["cuda_runtime.h", "crt/host_config.h", "nv/target", "nccl.h"];
    let all = needed
        .iter()
        .all(|h| dirs.iter().any(|d| d.join(h).exists()));
    all.then_some(dirs)
}

fn main() {
    println!("cargo:rerun-if-changed=shim/dist.cpp");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let lib = PathBuf::from(std::env::var("DEP_TCH_LIBTORCH_LIB").unwrap_or_default());
    let torch = lib.parent().map(PathBuf::from).unwrap_or_default();
    let include = torch.join("include");
    println!("cargo::rustc-check-cfg=cfg(reprise_nccl)");
    println!("cargo:rerun-if-changed=shim/nccl.cpp");
    println!("cargo:rerun-if-changed=shim/group.h");
    println!("cargo:rerun-if-changed=shim/syncbn.cpp");
    println!("cargo:rerun-if-changed=shim/reducer.cpp");
    println!("cargo:rerun-if-env-changed=REPRISE_CUDA_INCLUDE");
    let has_cuda = lib.join("libtorch_cuda.so").exists();
    let nccl = if has_cuda {
        cuda_includes(&torch)
    } else {
        None
    };
    if has_cuda && nccl.is_none() {
        println!(
            "cargo:warning=LibTorch has CUDA, but the CUDA/NCCL headers were not found: this \
             build has no NCCL backend (CUDA collectives go through Gloo); `just setup` installs \
             them, or set REPRISE_CUDA_INCLUDE"
        );
    }
    let base = || {
        let mut b = cc::Build::new();
        b.cpp(true)
            .include(&include)
            .include(include.join("torch/csrc/api/include"))
            .flag("-std=c++17")
            .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
            .define("USE_DISTRIBUTED", None)
            .flag_if_supported("-Wno-unused-parameter")
            .flag_if_supported("-Wno-deprecated-declarations")
            .warnings(false);
        b
    };
    let mut build = base();
    // As LibTorch was built: with c10d and its Gloo backend.
    build
        .file("shim/dist.cpp")
        .file("shim/syncbn.cpp")
        .file("shim/reducer.cpp")
        .include("vendor")
        .define("USE_C10D_GLOO", None);
    if nccl.is_some() {
        build.define("REPRISE_NCCL", None);
        println!("cargo:rustc-cfg=reprise_nccl");
    }
    build.compile("reprise_dist");
    if let Some(dirs) = &nccl {
        // Its own unit: CUDA's and NCCL's headers stay out of the Gloo one.
        let mut b = base();
        b.file("shim/nccl.cpp")
            .define("USE_C10D_NCCL", None)
            .define("USE_CUDA", None);
        for d in dirs {
            b.include(d);
        }
        b.compile("reprise_dist_nccl");
    }
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    if nccl.is_some() {
        println!("cargo:rustc-link-lib=dylib=torch_cuda");
        println!("cargo:rustc-link-lib=dylib=c10_cuda");
    }
    println!("cargo:rustc-link-lib=dylib=c10");
}
