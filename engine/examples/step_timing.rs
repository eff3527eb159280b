//! Times engine decode steps at several batch sizes on a model directory:
//! `cargo run --release -p steward-engine --example step_timing -- DIR [f32|bf16] [threads] [layouts]`,
//! `layouts` a comma-separated list (`auto`, `plain`, `packed`, `both`,
//! `panel`; default `auto`): each is loaded and timed in turn, batch size by
//! batch size, so a busy machine skews them alike. Prints the p50 and the
//! fastest of 12 steps. Runs on CUDA when libtorch sees a GPU.

use std::time::Instant;

use clap::ValueEnum;
use steward_engine::executor::EngineCore;
use steward_engine::model::{pick_device, DType, Llama, WeightLayout};
use steward_engine::sampling::argmax;
use steward_engine::sched::SchedulerConfig;

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().expect("model dir");
    let dtype = match args.next().as_deref() {
        Some("bf16") => DType::Bf16,
        _ => DType::F32,
    };
    if let Some(n) = args.next().and_then(|s| s.parse::<i32>().ok()) {
        tch::set_num_threads(n);
    }
    let layouts: Vec<WeightLayout> = args
        .next()
        .unwrap_or_else(|| "auto".into())
        .split(',')
        .map(|l| WeightLayout::from_str(l, true).expect("layout: auto|plain|packed|both|panel"))
        .collect();
    let (device, _) = pick_device();
    let mut cores = Vec::new();
    for layout in layouts {
        let model =
            Llama::load_as(std::path::Path::new(&dir), device, dtype, layout).expect("load");
        println!(
            "{} ({} layout) on {device:?}, {} threads",
            dtype.as_str(),
            model.layout.as_str(),
            tch::get_num_threads()
        );
        let name = model.layout.as_str();
        let core = EngineCore::new(
            model,
            SchedulerConfig {
                num_blocks: 512,
                block_size: 16,
                max_batch_tokens: 4096,
                prefill_chunk_while_decoding: 4096,
                prefill_tokens_per_decode: 0,
                prefill_step_ratio: 0.0,
                max_running: 64,
                prefix_caching: false,
            },
        );
        cores.push((name, core));
    }
    for b in [1usize, 2, 4, 8, 16] {
        for (name, core) in &mut cores {
            for i in 0..b {
                core.sched.add(
                    i as u64,
                    (0..32).map(|t| (t * 3 + i) as u32 % 500 + 2).collect(),
                );
            }
            let out = core.step().expect("prefill");
            for (s, l) in out.logits {
                core.sched.append_token(s, argmax(&l));
            }
            let mut times = Vec::new();
            for _ in 0..12 {
                let t = Instant::now();
                let out = core.step().expect("step");
                times.push(t.elapsed().as_secs_f64() * 1000.0);
                for (s, l) in out.logits {
                    core.sched.append_token(s, argmax(&l));
                }
            }
            times.sort_by(|a, b| a.total_cmp(b));
            println!(
                "{name:>6} batch {b:2}: decode step p50 {:.1} ms min {:.1} ms",
                times[6], times[0]
            );
            for i in 0..b {
                core.sched.remove(i as u64);
            }
        }
    }
}
