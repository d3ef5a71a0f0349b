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

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=shim/dist.cpp");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let lib = PathBuf::from(std::env::var("DEP_TCH_LIBTORCH_LIB").unwrap_or_default());
    let torch = lib.parent().map(PathBuf::from).unwrap_or_default();
    let include = torch.join("include");
    cc::Build::new()
        .cpp(true)
        .file("shim/dist.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .include("vendor")
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        // As LibTorch was built: with c10d and its Gloo backend.
        .define("USE_DISTRIBUTED", None)
        .define("USE_C10D_GLOO", None)
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-Wno-deprecated-declarations")
        .warnings(false)
        .compile("reprise_dist");
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
}
