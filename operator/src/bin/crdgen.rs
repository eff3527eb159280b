//! steward-crdgen: writes the InferenceService CRD generated from the Rust
//! types to `crds/inferenceservice.yaml` and the Helm chart's copy
//! `charts/steward/crds/inferenceservice.yaml` (or stdout with `--stdout`),
//! and the Grafana dashboard generated from the signal builders to
//! `charts/steward/dashboards/steward-inferenceservice.json`.

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
    /// Where to write the Grafana dashboard (empty: not written).
    #[arg(
        long,
        env = "STEWARD_DASHBOARD_OUT",
        default_value = "charts/steward/dashboards/steward-inferenceservice.json"
    )]
    dashboard_out: PathBuf,
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
        if !args.dashboard_out.as_os_str().is_empty() {
            let out = &args.dashboard_out;
            if let Some(dir) = out.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(out, steward_operator::dashboard::dashboard_json())
                .with_context(|| format!("writing {}", out.display()))?;
            eprintln!("wrote {}", out.display());
        }
    }
    Ok(())
}
