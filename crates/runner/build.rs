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
    build_commit();
}

/// The commit the binary is built from and whether the checkout had changes then
/// (`REPRISE_BUILD_COMMIT`, empty outside git; `REPRISE_BUILD_DIRTY`), recorded by every run
/// beside the commit of the experiments it reads. Rerun when the sources or the checkout's
/// commit change.
fn build_commit() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for p in ["crates", "experiments", "Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", root.join(p).display());
    }
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(&root)
            .args(args)
            .stderr(std::process::Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        for f in ["HEAD", "index", "packed-refs"] {
            println!("cargo:rerun-if-changed={dir}/{f}");
        }
        if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={dir}/{r}");
        }
    }
    let commit = git(&["rev-parse", "HEAD"]).unwrap_or_default();
    // Tracked files changed; untracked ones are left out (a build leaves none that matter).
    let dirty = !commit.is_empty()
        && git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    println!("cargo:rustc-env=REPRISE_BUILD_COMMIT={commit}");
    println!("cargo:rustc-env=REPRISE_BUILD_DIRTY={dirty}");
}
