//! Compiles the eBPF programs in `bpf/` with clang into `OUT_DIR`.
//!
//! When clang is missing (or fails), the crate still builds without the programs: `cfg(l7mp_ebpf)` stays unset and
//! `Kernel::load` returns `OffloadError::NotBuilt`, so the agent builds on machines without an eBPF toolchain.
//! `L7MP_CLANG` overrides the clang binary.

use std::{env, path::PathBuf, process::Command};

const PROGRAMS: [&str; 2] = ["udp_nat", "tcp_splice"];

fn main() {
    println!("cargo::rustc-check-cfg=cfg(l7mp_ebpf)");
    println!("cargo::rerun-if-env-changed=L7MP_CLANG");
    for program in PROGRAMS {
        println!("cargo::rerun-if-changed=bpf/{program}.c");
    }
    let Some(out_dir) = env::var_os("OUT_DIR").map(PathBuf::from) else {
        println!("cargo::warning=OUT_DIR is not set; eBPF offload is disabled");
        return;
    };
    let clang = env::var("L7MP_CLANG").unwrap_or_else(|_| "clang".to_owned());
    if Command::new(&clang).arg("--version").output().is_err() {
        println!(
            "cargo::warning=eBPF offload is disabled: clang was not found at `{clang}` \
             (apt-get install clang llvm libbpf-dev, or set L7MP_CLANG)"
        );
        return;
    }
    // Debian keeps asm/types.h under the multiarch directory; clang -target bpf does not look there by itself.
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".to_owned());
    let multiarch = format!("-I/usr/include/{arch}-linux-gnu");
    for program in PROGRAMS {
        let src = format!("bpf/{program}.c");
        let obj = out_dir.join(format!("{program}.o"));
        let result = Command::new(&clang)
            .args([
                "-O2", "-g", "-Wall", "-Werror", "-target", "bpf", &multiarch, "-c", &src, "-o",
            ])
            .arg(&obj)
            .output();
        match result {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                let stderr = String::from_utf8_lossy(&out.stderr);
                let first = stderr.lines().find(|l| l.contains("error")).unwrap_or("unknown error");
                println!("cargo::warning=eBPF offload is disabled: clang failed on {src}: {first}");
                return;
            }
            Err(e) => {
                println!("cargo::warning=eBPF offload is disabled: running {clang} failed: {e}");
                return;
            }
        }
    }
    println!("cargo::rustc-cfg=l7mp_ebpf");
}
