//! Compiles `csrc/onednn_linear.cpp`, a small C++ shim over two oneDNN
//! linear operators libtorch registers but tch does not wrap and over
//! steward's own panel linear (see `model::linear`), against the same
//! libtorch headers torch-sys uses, and the panel kernel's AVX-512 loops
//! (`csrc/panel_kernel_avx512.cpp`).

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=csrc/onednn_linear.cpp");
    println!("cargo:rerun-if-changed=csrc/panel_kernel_avx512.cpp");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    // torch-sys (links = "tch") passes its libtorch lib folder to direct
    // dependents; LIBTORCH is the fallback.
    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB")
        .map(PathBuf::from)
        .or_else(|_| std::env::var("LIBTORCH").map(|p| PathBuf::from(p).join("lib")))
        .expect("libtorch location: DEP_TCH_LIBTORCH_LIB (from torch-sys) or LIBTORCH");
    let root = lib.parent().map(PathBuf::from).unwrap_or_default();
    let include = root.join("include");
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .flag("-DGLOG_USE_GLOG_EXPORT")
        // at::parallel_for is a header template over OpenMP pragmas: without
        // -fopenmp here it runs on the calling thread alone.
        .flag("-fopenmp")
        .opt_level(2)
        .debug(false)
        .file("csrc/onednn_linear.cpp")
        .compile("steward_onednn");
    // The OpenMP runtime libtorch itself loads (the wheel ships it as
    // lib/libgomp.so.1), so both share one thread pool.
    let gomp = lib.join("libgomp.so.1");
    if gomp.exists() {
        println!("cargo:rustc-link-arg={}", gomp.display());
    } else {
        println!("cargo:rustc-link-lib=dylib=gomp");
    }
    // The panel kernel's inner loops: AVX-512 for this file only, used
    // after a runtime CPU check (csrc/onednn_linear.cpp).
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("x86_64") {
        cc::Build::new()
            .cpp(true)
            .pic(true)
            .warnings(false)
            .flag("-std=c++17")
            .flag("-mavx512f")
            .flag("-mavx512bw")
            .flag("-mavx512vl")
            .flag("-mfma")
            .flag("-fno-exceptions")
            .opt_level(2)
            .debug(false)
            .file("csrc/panel_kernel_avx512.cpp")
            .compile("steward_panel_avx512");
    }
}
