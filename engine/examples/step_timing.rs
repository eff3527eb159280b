//! Times engine decode steps at several batch sizes on a model directory:
//! `cargo run --release -p steward-engine --example step_timing -- DIR`.

use std::time::Instant;

use steward_engine::executor::EngineCore;
use steward_engine::model::Llama;
use steward_engine::sampling::argmax;
use steward_engine::sched::SchedulerConfig;

fn main() {
    let dir = std::env::args().nth(1).expect("model dir");
    let model = Llama::load(std::path::Path::new(&dir), tch::Device::Cpu).expect("load");
    let mut core = EngineCore::new(
        model,
        SchedulerConfig {
            num_blocks: 512,
            block_size: 16,
            max_batch_tokens: 4096,
            max_running: 64,
            prefix_caching: false,
        },
    );
    for b in [1usize, 2, 4, 8, 16] {
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
            "batch {b:2}: decode step p50 {:.1} ms min {:.1} ms",
            times[6], times[0]
        );
        for i in 0..b {
            core.sched.remove(i as u64);
        }
    }
}
