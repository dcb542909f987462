//! Gives the shared library its soname on Linux: `libnormkit.so.MAJOR`, or
//! `libnormkit.so.0.MINOR` while the major version is 0 (where a minor release may change the
//! ABI). See "ABI stability" in README.md.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if os != "linux" {
        return;
    }
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").expect("set by cargo");
    let minor = std::env::var("CARGO_PKG_VERSION_MINOR").expect("set by cargo");
    let soname = if major == "0" {
        format!("libnormkit.so.0.{minor}")
    } else {
        format!("libnormkit.so.{major}")
    };
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,{soname}");
}
