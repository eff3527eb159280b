//! steward-crdgen: writes the InferenceService CRD generated from the Rust
//! types to `crds/inferenceservice.yaml` and the Helm chart's copy
//! `charts/steward/crds/inferenceservice.yaml` (or stdout with `--stdout`).

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// Generate the CRD YAML from the Rust types.
#[derive(Parser, Debug)]
#[command(name = "steward-crdgen", version)]
struct Args {
    /// Where to write the CRD (comma-separated for several files).
    #[arg(
        long,
        env = "STEWARD_CRD_OUT",
        value_delimiter = ',',
        default_value = "crds/inferenceservice.yaml,charts/steward/crds/inferenceservice.yaml"
    )]
    out: Vec<PathBuf>,
    /// Print to stdout instead of writing the file.
    #[arg(long, env = "STEWARD_CRD_STDOUT")]
    stdout: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let yaml = steward_operator::crd::crd_yaml().context("serialising the CRD")?;
    if args.stdout {
        print!("{yaml}");
    } else {
        for out in &args.out {
            std::fs::write(out, &yaml).with_context(|| format!("writing {}", out.display()))?;
            eprintln!("wrote {}", out.display());
        }
    }
    Ok(())
}
