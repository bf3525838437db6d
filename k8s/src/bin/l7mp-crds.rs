//! Writes l7mp's CRDs (and their kustomization) to a directory, or checks that it is current.

use std::path::PathBuf;
use std::process::ExitCode;

use l7mp_k8s::generate;

const USAGE: &str = "usage: l7mp-crds [--check] DIR

Writes one YAML file per l7mp CRD (VirtualService, Target, Route, Rule) and a kustomization.yaml into DIR.
With --check, writes nothing and exits with 1 when DIR differs from what would be written.

example: cargo run -p l7mp-k8s --bin l7mp-crds -- manifests/crds";

fn main() -> ExitCode {
    let mut check = false;
    let mut dir: Option<PathBuf> = None;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--check" => check = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            a if a.starts_with('-') || dir.is_some() => {
                eprintln!("unexpected argument {a:?}\n\n{USAGE}");
                return ExitCode::from(2);
            }
            a => dir = Some(PathBuf::from(a)),
        }
    }
    let Some(dir) = dir else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    if check {
        match generate::check(&dir) {
            Ok(stale) if stale.is_empty() => ExitCode::SUCCESS,
            Ok(stale) => {
                for s in stale {
                    eprintln!("{}/{s}", dir.display());
                }
                eprintln!("regenerate with: {}", generate::REGENERATE);
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    } else {
        match generate::write(&dir) {
            Ok(paths) => {
                for p in paths {
                    println!("wrote {}", p.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    }
}
