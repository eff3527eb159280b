//! What decode attention over the paged KV cache costs, per step (all
//! layers), at several context lengths and batch sizes, split into the
//! gather (blocks copied into a padded tensor) and the attention itself:
//!
//!   cargo run --release -p steward-engine --example attention_cost -- DIR [threads]
//!
//! Shapes come from the model's config.json (heads, KV heads, head size,
//! layers); slots are scattered over the cache as a paged allocator leaves
//! them. Variants:
//! - `repeat`: index_select per K and V in the slot-major cache, permute,
//!   repeat_interleave to the query heads, masked SDPA (the engine before
//!   issue 14);
//! - `gqa`: the same gather, SDPA with `enable_gqa` (no repeat);
//! - `headmajor`: one index_select per K and V in a head-major cache that
//!   yields `[B, kv, L, hd]` contiguous, then grouped matmul attention;
//! - `in-place`: the engine's decode path on AVX-512 CPUs (f32): scores and
//!   probabilities x V read the head-major cache's rows in place
//!   (`model::linear::paged_attention`), no padded copy.

use std::time::Instant;

use steward_engine::model::config::ModelConfig;
use steward_engine::model::linear::{paged_attention, panel_available, PagedPart};
use tch::{Device, Kind, Tensor};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn time<F: FnMut()>(mut f: F, reps: usize) -> f64 {
    f();
    let mut ts = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        f();
        ts.push(t.elapsed().as_secs_f64() * 1e3);
    }
    median(ts)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().expect("model dir");
    if let Some(n) = args.next().and_then(|s| s.parse::<i32>().ok()) {
        tch::set_num_threads(n);
    }
    let cfg: ModelConfig = serde_json::from_str(
        &std::fs::read_to_string(std::path::Path::new(&dir).join("config.json")).expect("config"),
    )
    .expect("config.json");
    let _g = tch::no_grad_guard();
    let (nh, nkv, hd) = (
        cfg.num_attention_heads as i64,
        cfg.kv_heads() as i64,
        cfg.head_dim() as i64,
    );
    let groups = nh / nkv;
    let layers = cfg.num_hidden_layers as f64;
    let scale = 1.0 / (hd as f64).sqrt();
    let dev = Device::Cpu;
    println!(
        "attention per decode step, {} layers, {nh} heads / {nkv} KV heads x {hd}; ms (median)",
        cfg.num_hidden_layers
    );
    println!(
        "{:>6} {:>6} | {:>9} {:>9} {:>9} | {:>9} {:>9} | {:>9} {:>9} | {:>9}",
        "batch",
        "ctx",
        "gather",
        "repeat",
        "sdpa",
        "gqa-sdpa",
        "total",
        "hm-gather",
        "hm-total",
        "in-place"
    );
    for &b in &[1i64, 16] {
        for &ctx in &[128i64, 1024, 4096] {
            let slots = b * ctx + 64;
            let kc = Tensor::randn([slots, nkv, hd], (Kind::Float, dev));
            let vc = Tensor::randn([slots, nkv, hd], (Kind::Float, dev));
            // A scattered block table: blocks of 16 in a shuffled order.
            let nblocks = slots / 16;
            let perm = Tensor::randperm(nblocks, (Kind::Int64, dev));
            let blocks = perm.narrow(0, 0, b * ctx / 16).view([b, ctx / 16, 1]);
            let flat =
                (blocks * 16 + Tensor::arange(16, (Kind::Int64, dev)).view([1, 1, 16])).view([-1]);
            let mask = Tensor::ones([b, 1, 1, ctx], (Kind::Bool, dev));
            let q = Tensor::randn([b, nh, 1, hd], (Kind::Float, dev));
            let reps = if ctx >= 4096 { 5 } else { 15 };

            let gather = time(
                || {
                    let _k = kc.index_select(0, &flat);
                    let _v = vc.index_select(0, &flat);
                },
                reps,
            );
            let gathered = |c: &Tensor| {
                c.index_select(0, &flat)
                    .view([b, ctx, nkv, hd])
                    .permute([0, 2, 1, 3])
            };
            let repeat = time(
                || {
                    let _k = gathered(&kc).repeat_interleave_self_int(groups, 1, None::<i64>);
                    let _v = gathered(&vc).repeat_interleave_self_int(groups, 1, None::<i64>);
                },
                reps,
            );
            let total = time(
                || {
                    let k = gathered(&kc).repeat_interleave_self_int(groups, 1, None::<i64>);
                    let v = gathered(&vc).repeat_interleave_self_int(groups, 1, None::<i64>);
                    let _o = Tensor::scaled_dot_product_attention(
                        &q,
                        &k,
                        &v,
                        Some(&mask),
                        0.0,
                        false,
                        scale,
                        false,
                    );
                },
                reps,
            );
            let gqa = time(
                || {
                    let k = gathered(&kc);
                    let v = gathered(&vc);
                    let _o = Tensor::scaled_dot_product_attention(
                        &q,
                        &k,
                        &v,
                        Some(&mask),
                        0.0,
                        false,
                        scale,
                        true,
                    );
                },
                reps,
            );
            // Head-major cache: [kv * slots, hd]; index h * slots + slot.
            let khm = kc.permute([1, 0, 2]).contiguous().view([nkv * slots, hd]);
            let vhm = vc.permute([1, 0, 2]).contiguous().view([nkv * slots, hd]);
            let hm_idx = (Tensor::arange(nkv, (Kind::Int64, dev)).view([1, nkv, 1]) * slots
                + flat.view([b, 1, ctx]))
            .view([-1]);
            let hm_gather = time(
                || {
                    let _k = khm.index_select(0, &hm_idx);
                    let _v = vhm.index_select(0, &hm_idx);
                },
                reps,
            );
            let bias = Tensor::zeros([b, 1, 1, ctx], (Kind::Float, dev));
            let hm_total = time(
                || {
                    let k = khm.index_select(0, &hm_idx).view([b, nkv, ctx, hd]);
                    let v = vhm.index_select(0, &hm_idx).view([b, nkv, ctx, hd]);
                    let qg = (&q * scale).view([b, nkv, groups, hd]);
                    let s = qg.matmul(&k.transpose(-1, -2)) + &bias;
                    let p = s.softmax(-1, Kind::Float);
                    let _o = p.matmul(&v).view([b, nh, hd]);
                },
                reps,
            );
            let in_place = if panel_available() {
                let time_it = time(
                    || {
                        let qg = (&q * scale).view([b, nkv, groups, hd]).contiguous();
                        let s = paged_attention(&qg, &khm, &hm_idx, ctx, PagedPart::Scores)
                            .expect("scores")
                            + &bias;
                        let p = s.softmax(-1, Kind::Float).contiguous();
                        let _o = paged_attention(&p, &vhm, &hm_idx, ctx, PagedPart::Values)
                            .expect("values")
                            .view([b, nh, hd]);
                    },
                    reps,
                );
                format!("{:>9.2}", time_it * layers)
            } else {
                format!("{:>9}", "-")
            };
            let _ = repeat;
            let sdpa = total - repeat;
            println!(
                "{b:>6} {ctx:>6} | {:>9.2} {:>9.2} {:>9.2} | {:>9.2} {:>9.2} | {:>9.2} {:>9.2} | {in_place}",
                gather * layers,
                (repeat - gather) * layers,
                sdpa * layers,
                gqa * layers,
                total * layers,
                hm_gather * layers,
                hm_total * layers
            );
        }
    }
}
