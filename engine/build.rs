//! Compiles `csrc/onednn_linear.cpp`, a small C++ shim over two oneDNN
//! linear operators libtorch registers but tch does not wrap (see
//! `model::linear`), against the same libtorch headers torch-sys uses.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=csrc/onednn_linear.cpp");
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
        .opt_level(2)
        .debug(false)
        .file("csrc/onednn_linear.cpp")
        .compile("steward_onednn");
}
