//! Compiles the eBPF data plane (src/dataplane/ebpf/duet.bpf.c) with clang;
//! the object is embedded in the binary and loaded by aya at run time, so
//! nothing of libbpf or clang is needed where duet runs.
use std::path::PathBuf;
use std::process::Command;

const SRC: &str = "src/dataplane/ebpf/duet.bpf.c";

fn main() {
    println!("cargo:rerun-if-changed={SRC}");
    println!("cargo:rerun-if-env-changed=CLANG");
    let out =
        PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("duet.bpf.o");
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    // The asm/ headers that linux/bpf.h pulls in sit under the host triple
    // on Debian; -target bpf does not look there by itself.
    let multiarch = format!("/usr/include/{}-linux-gnu", std::env::consts::ARCH);
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .arg(format!("-I{multiarch}"))
        .args(["-c", SRC, "-o"])
        .arg(&out)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{clang} failed to compile {SRC} ({s}); `make deps` installs clang and libbpf-dev"),
        Err(e) => panic!(
            "cannot run {clang} to compile the eBPF data plane ({e}): install clang and libbpf-dev (`make deps`), or set CLANG"
        ),
    }
}
