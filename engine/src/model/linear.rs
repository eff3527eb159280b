//! A projection's weight, laid out once at load for the kernel that reads
//! it, so no step re-packs or re-transposes a weight.
//!
//! - `plain`: the checkpoint's `[out, in]`, multiplied with `x.linear(w)`.
//!   On CUDA this is all there is (cuBLAS reads it as it is). On CPU it is
//!   MKL: a matrix-vector product at batch 1 streams it well, but above
//!   batch 1 `sgemm` copies (packs) the whole weight on every call: 37% of
//!   a batch-16 step in the issue-14 profile, and f32 batch-16 linears 3-4x
//!   slower than the packed layout in measurements here.
//! - `packed`: oneDNN's blocked layout (`mkldnn::_reorder_linear_weight`),
//!   multiplied with `mkldnn::_linear_pointwise` for any number of rows;
//!   in bf16 on CPUs with AMX or AVX-512 BF16 it is the fastest at every
//!   batch size. Called through a small C++ shim (`csrc/onednn_linear.cpp`).
//!
//! - `panel`: steward's own kernel (`csrc/panel_kernel_avx512.cpp`, CPUs
//!   with AVX-512): the weight as `[ceil(out/16), in, 16]` panels, f32 or
//!   bf16, multiplied by one AVX-512 loop per 16 output features that
//!   reads each panel once per call, broadcasting up to 16 rows of `x` into
//!   the FMAs. It streams the weights at most of the memory bandwidth at
//!   batch 1 (MKL's `sgemv` reached about a third of it on the bench
//!   machine) and keeps one copy for every batch size.
//!
//! Which layouts a model keeps is decided at load ([`WeightLayout`]): with
//! both, batch-1 rows go to `plain` and the rest to `packed` (twice the
//! weight memory).

use std::ffi::{c_char, CStr};

use tch::{Device, Kind, Tensor};

use super::{ModelError, Result};

extern "C" {
    fn steward_sdp_use_cudnn(enabled: i32);
    fn steward_onednn_available() -> i32;
    fn steward_onednn_reorder_linear_weight(
        w: *const torch_sys::C_tensor,
        err: *mut c_char,
        err_len: usize,
    ) -> *mut torch_sys::C_tensor;
    fn steward_onednn_linear(
        x: *const torch_sys::C_tensor,
        w: *const torch_sys::C_tensor,
        err: *mut c_char,
        err_len: usize,
    ) -> *mut torch_sys::C_tensor;
    fn steward_panel_available() -> i32;
    fn steward_panel_bf16dp_available() -> i32;
    fn steward_paged_attention(
        a: *const torch_sys::C_tensor,
        cache: *const torch_sys::C_tensor,
        index: *const torch_sys::C_tensor,
        lmax: i64,
        pv: i32,
        err: *mut c_char,
        err_len: usize,
    ) -> *mut torch_sys::C_tensor;
    fn steward_panel_linear(
        x: *const torch_sys::C_tensor,
        packed: *const torch_sys::C_tensor,
        out_features: i64,
        err: *mut c_char,
        err_len: usize,
    ) -> *mut torch_sys::C_tensor;
}

/// Output features per panel of the `panel` layout.
pub const PANEL_WIDTH: i64 = 16;

/// Which weight layouts a model keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WeightLayout {
    /// CUDA: plain; CPU with AVX-512: panel; other CPUs: both in f32,
    /// packed in bf16.
    Auto,
    /// `[out, in]` only.
    Plain,
    /// oneDNN blocked only (CPU).
    Packed,
    /// Both: plain for batch 1, packed otherwise (CPU; 2x weight memory).
    Both,
    /// Steward's panel kernel (CPU with AVX-512; one copy).
    Panel,
}

impl WeightLayout {
    /// The concrete choice for a device and storage dtype. Packing needs
    /// the oneDNN operators; without them everything stays plain.
    pub fn resolve(self, device: Device, kind: Kind) -> WeightLayout {
        let cpu = device == Device::Cpu;
        let packable = cpu && onednn_available();
        let panel = cpu && panel_available();
        match self {
            WeightLayout::Auto if panel => WeightLayout::Panel,
            WeightLayout::Panel if !panel => WeightLayout::Auto.resolve(device, kind),
            WeightLayout::Auto if !packable => WeightLayout::Plain,
            WeightLayout::Auto if kind == Kind::Float => WeightLayout::Both,
            WeightLayout::Auto => WeightLayout::Packed,
            WeightLayout::Packed | WeightLayout::Both if !packable => WeightLayout::Plain,
            other => other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            WeightLayout::Auto => "auto",
            WeightLayout::Plain => "plain",
            WeightLayout::Packed => "packed",
            WeightLayout::Both => "both",
            WeightLayout::Panel => "panel",
        }
    }
}

/// Turns the cuDNN backend of scaled-dot-product attention on or off (see
/// `csrc/onednn_linear.cpp`: it builds a plan per input shape, and decode
/// shapes change every step).
pub fn sdp_use_cudnn(enabled: bool) {
    // SAFETY: sets a flag in libtorch's global context.
    unsafe { steward_sdp_use_cudnn(i32::from(enabled)) }
}

/// True when libtorch has the oneDNN linear operators (CPU builds with
/// mkldnn, which the PyPI wheels are).
pub fn onednn_available() -> bool {
    // SAFETY: no arguments; looks two schemas up in the dispatcher.
    unsafe { steward_onednn_available() != 0 }
}

/// True when this CPU can run the panel kernel (x86-64 with AVX-512 F, BW
/// and VL).
pub fn panel_available() -> bool {
    // SAFETY: no arguments; reads the CPU's feature flags.
    unsafe { steward_panel_available() != 0 }
}

/// True when bf16 panel weights times bf16 activations use the AVX-512 BF16
/// dot product (`VDPBF16PS`): the CPU has it and `STEWARD_PANEL_BF16_DP` is
/// not `0`. Otherwise bf16 weights are widened to f32 in registers.
pub fn bf16_dot_available() -> bool {
    // SAFETY: no arguments; reads the CPU's feature flags and the environment once.
    unsafe { steward_panel_bf16dp_available() != 0 }
}

/// Lays `w` (`[out, in]`, CPU) out as `[ceil(out/16), in, 16]` panels of
/// 16 output features, zero-padded past `out`.
pub fn panel_pack(w: &Tensor) -> Tensor {
    let (out, inp) = (w.size()[0], w.size()[1]);
    let panels = (out + PANEL_WIDTH - 1) / PANEL_WIDTH;
    let padded = panels * PANEL_WIDTH;
    let w = if padded > out {
        Tensor::cat(
            &[
                w.shallow_clone(),
                Tensor::zeros([padded - out, inp], (w.kind(), w.device())),
            ],
            0,
        )
    } else {
        w.shallow_clone()
    };
    w.view([panels, PANEL_WIDTH, inp])
        .permute([0, 2, 1])
        .contiguous()
}

/// `x @ wᵀ` for a panel-packed `w` with `out_features` outputs; `x` is
/// `[rows, in]` of any float dtype, the result has `x`'s dtype.
pub fn panel_linear(x: &Tensor, packed: &Tensor, out_features: i64) -> Result<Tensor> {
    let mut err = [0 as c_char; 512];
    // SAFETY: both tensors are live for the call; the shim checks shapes,
    // dtypes and the CPU before touching memory.
    let p = unsafe {
        steward_panel_linear(
            x.as_ptr(),
            packed.as_ptr(),
            out_features,
            err.as_mut_ptr(),
            err.len(),
        )
    };
    from_shim(p, &err, "panel linear")
}

/// Which half of the decode attention [`paged_attention`] computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PagedPart {
    /// `a` is the scaled query `[B, kv_heads, groups, hd]`, `cache` the
    /// layer's K: returns the scores `[B, kv_heads, groups, lmax]`.
    Scores,
    /// `a` is the probabilities `[B, kv_heads, groups, lmax]`, `cache` the
    /// layer's V: returns `[B, kv_heads, groups, hd]`.
    Values,
}

/// Decode attention read in place from the paged cache (`[kv_heads *
/// slots, hd]`, f32, CPU with AVX-512): `index` is the decode group's
/// head-major rows (`[B * kv_heads * lmax]`), so no padded copy of the
/// contexts is made. A probability of exactly 0 (padding) skips its row.
pub fn paged_attention(
    a: &Tensor,
    cache: &Tensor,
    index: &Tensor,
    lmax: i64,
    part: PagedPart,
) -> Result<Tensor> {
    let mut err = [0 as c_char; 512];
    // SAFETY: the tensors are live for the call; the shim checks shapes,
    // dtypes, the device and every row of the index before reading.
    let p = unsafe {
        steward_paged_attention(
            a.as_ptr(),
            cache.as_ptr(),
            index.as_ptr(),
            lmax,
            i32::from(part == PagedPart::Values),
            err.as_mut_ptr(),
            err.len(),
        )
    };
    from_shim(p, &err, "paged attention")
}

fn from_shim(ptr: *mut torch_sys::C_tensor, err: &[c_char], what: &str) -> Result<Tensor> {
    if ptr.is_null() {
        // SAFETY: the shim NUL-terminates within the buffer.
        let msg = unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy();
        return Err(ModelError::Torch(tch::TchError::Torch(format!(
            "{what}: {msg}"
        ))));
    }
    // SAFETY: the shim returns a fresh heap `at::Tensor*` that we now own,
    // which is what tch's Tensor wraps and frees.
    Ok(unsafe { Tensor::from_ptr(ptr) })
}

/// Lays `w` (`[out, in]`, contiguous, CPU) out in oneDNN's blocked format.
pub fn onednn_pack(w: &Tensor) -> Result<Tensor> {
    let mut err = [0 as c_char; 512];
    // SAFETY: `w` is a live tensor; the shim copies what it needs.
    let p =
        unsafe { steward_onednn_reorder_linear_weight(w.as_ptr(), err.as_mut_ptr(), err.len()) };
    from_shim(p, &err, "oneDNN weight reorder")
}

/// `x @ wᵀ` for a packed `w`; `x` is `[rows, in]` of the weight's dtype.
pub fn onednn_linear(x: &Tensor, packed: &Tensor) -> Result<Tensor> {
    let mut err = [0 as c_char; 512];
    // SAFETY: both tensors are live for the call.
    let p =
        unsafe { steward_onednn_linear(x.as_ptr(), packed.as_ptr(), err.as_mut_ptr(), err.len()) };
    from_shim(p, &err, "oneDNN linear")
}

/// One projection (no bias: Llama has none).
pub struct Linear {
    plain: Option<Tensor>,
    packed: Option<Tensor>,
    panel: Option<Tensor>,
    out_features: i64,
    in_features: i64,
}

impl Linear {
    /// Lays out `w` (`[out, in]`) as `layout` (already resolved).
    pub fn new(w: Tensor, layout: WeightLayout) -> Result<Self> {
        let sz = w.size();
        let (out_features, in_features) = (sz[0], sz[1]);
        let w = w.contiguous();
        let (plain, packed, panel) = match layout {
            WeightLayout::Packed => (None, Some(onednn_pack(&w)?), None),
            WeightLayout::Both => {
                let p = onednn_pack(&w)?;
                (Some(w), Some(p), None)
            }
            WeightLayout::Panel => (None, None, Some(panel_pack(&w))),
            WeightLayout::Plain | WeightLayout::Auto => (Some(w), None, None),
        };
        Ok(Self {
            plain,
            packed,
            panel,
            out_features,
            in_features,
        })
    }

    /// `x @ wᵀ` for `x` of shape `[rows, in]`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        if let Some(p) = &self.panel {
            return match panel_linear(x, p, self.out_features) {
                Ok(y) => y,
                // Shapes and the CPU were checked at load; only a broken
                // build gets here. Fail the step loudly (the actor turns a
                // panic into failed requests).
                Err(e) => panic!("{e}"),
            };
        }
        match (&self.plain, &self.packed) {
            (Some(w), Some(p)) if x.size()[0] > 1 => self.packed_or_plain(x, p, w),
            (Some(w), _) => x.linear::<Tensor>(w, None),
            (None, Some(p)) => match onednn_linear(x, p) {
                Ok(y) => y,
                // Only a broken libtorch gets here; fail the step loudly
                // (the actor turns a panic into failed requests).
                Err(e) => panic!("{e}"),
            },
            (None, None) => unreachable!("a Linear always has a layout"),
        }
    }

    fn packed_or_plain(&self, x: &Tensor, p: &Tensor, w: &Tensor) -> Tensor {
        onednn_linear(x, p).unwrap_or_else(|_| x.linear::<Tensor>(w, None))
    }

    /// Parameters (one copy, whatever the layouts).
    pub fn numel(&self) -> usize {
        (self.out_features * self.in_features) as usize
    }

    /// True when the `[out, in]` weight itself is kept (a tied output
    /// head's then shares the embedding's storage).
    pub fn has_plain(&self) -> bool {
        self.plain.is_some()
    }

    /// Bytes held, all layouts together (panel padding included).
    pub fn bytes(&self) -> u64 {
        let elt = |t: &Tensor| t.kind().elt_size_in_bytes() as u64;
        let panel = self.panel.iter().map(|t| t.numel() as u64 * elt(t));
        [&self.plain, &self.packed]
            .into_iter()
            .flatten()
            .map(|t| self.numel() as u64 * elt(t))
            .chain(panel)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every layout computes the same product, at batch 1 and above.
    #[test]
    fn packed_and_plain_layouts_agree_with_a_reference_matmul() {
        if !onednn_available() {
            eprintln!("libtorch without oneDNN linear ops: only the plain layout exists");
            return;
        }
        let _g = tch::no_grad_guard();
        tch::manual_seed(3);
        let w = Tensor::randn([96, 64], (Kind::Float, Device::Cpu));
        for rows in [1, 5, 16] {
            let x = Tensor::randn([rows, 64], (Kind::Float, Device::Cpu));
            let reference = x.to_kind(Kind::Double).mm(&w.to_kind(Kind::Double).tr());
            for layout in [
                WeightLayout::Plain,
                WeightLayout::Packed,
                WeightLayout::Both,
            ] {
                let l = Linear::new(w.copy(), layout).unwrap();
                let y = l.forward(&x).to_kind(Kind::Double);
                let err = (&y - &reference).abs().max().double_value(&[]);
                assert!(err < 1e-4, "{layout:?} rows {rows}: max error {err}");
            }
            let lb = Linear::new(w.to_kind(Kind::BFloat16), WeightLayout::Packed).unwrap();
            let yb = lb.forward(&x.to_kind(Kind::BFloat16)).to_kind(Kind::Double);
            let rel = ((&yb - &reference).norm() / reference.norm()).double_value(&[]);
            assert!(rel < 1e-2, "bf16 packed rows {rows}: relative error {rel}");
        }
    }

    /// The panel kernel computes the same product as a double-precision
    /// reference for every row count around its 16-row blocks, output
    /// counts that do not fill the last panel, and odd input widths, in
    /// f32 and bf16 storage, and for bf16 activations.
    #[test]
    fn panel_layout_agrees_with_a_reference_matmul() {
        if !panel_available() {
            eprintln!("this CPU has no AVX-512: the panel layout is not used here");
            return;
        }
        let _g = tch::no_grad_guard();
        tch::manual_seed(5);
        for (out, inp) in [(96, 64), (100, 67), (16, 1), (709, 768), (1, 33)] {
            let w = Tensor::randn([out, inp], (Kind::Float, Device::Cpu));
            let l = Linear::new(w.copy(), WeightLayout::Panel).unwrap();
            let lb = Linear::new(w.to_kind(Kind::BFloat16), WeightLayout::Panel).unwrap();
            let wb = w.to_kind(Kind::BFloat16).to_kind(Kind::Double);
            for rows in [0, 1, 2, 3, 4, 7, 15, 16, 17, 33, 64] {
                let x = Tensor::randn([rows, inp], (Kind::Float, Device::Cpu));
                let y = l.forward(&x);
                assert_eq!(y.size(), [rows, out]);
                assert_eq!(y.kind(), Kind::Float);
                if rows == 0 {
                    continue;
                }
                let reference = x.to_kind(Kind::Double).mm(&w.to_kind(Kind::Double).tr());
                let err = (y.to_kind(Kind::Double) - &reference)
                    .abs()
                    .max()
                    .double_value(&[]);
                assert!(err < 1e-3, "f32 {out}x{inp} rows {rows}: max error {err}");
                // bf16 storage: exact against the rounded weights.
                let ref_b = x.to_kind(Kind::Double).mm(&wb.tr());
                let yb = lb.forward(&x).to_kind(Kind::Double);
                let err = (&yb - &ref_b).abs().max().double_value(&[]);
                assert!(
                    err < 1e-3,
                    "bf16 weights {out}x{inp} rows {rows}: max error {err}"
                );
                // bf16 activations come back as bf16: the exact product of
                // the rounded inputs, rounded once more (8 bits of mantissa).
                // (A relative norm over one output would be ill-conditioned:
                // a dot product can cancel to almost nothing.)
                let xb = x.to_kind(Kind::BFloat16);
                let yx = lb.forward(&xb);
                assert_eq!(yx.kind(), Kind::BFloat16);
                let ref_x = xb.to_kind(Kind::Double).mm(&wb.tr());
                let excess = ((yx.to_kind(Kind::Double) - &ref_x).abs()
                    - ref_x.abs() * (1.0 / 128.0)
                    - 1e-3)
                    .max()
                    .double_value(&[]);
                assert!(
                    excess <= 0.0,
                    "bf16 {out}x{inp} rows {rows}: off by {excess} beyond bf16 rounding"
                );
            }
            assert_eq!(l.numel(), (out * inp) as usize);
            let padded = ((out + 15) / 16 * 16 * inp) as u64;
            assert_eq!(l.bytes(), padded * 4);
            assert_eq!(lb.bytes(), padded * 2);
        }
    }

    /// The in-place decode attention equals gather-then-matmul, padding
    /// included (rows repeated past a context's end, probabilities 0), and
    /// refuses an index that points outside the cache.
    #[test]
    fn paged_attention_matches_the_gathered_path() {
        if !panel_available() {
            return;
        }
        let _g = tch::no_grad_guard();
        tch::manual_seed(11);
        let (b, n_kv, groups, hd, slots) = (3i64, 2i64, 3i64, 32i64, 40i64);
        let opts = (Kind::Float, Device::Cpu);
        let kc = Tensor::randn([n_kv * slots, hd], opts);
        let vc = Tensor::randn([n_kv * slots, hd], opts);
        let lens = [5i64, 17, 1];
        let lmax = 17;
        let mut index = Vec::new();
        let mut bias = Vec::new();
        for (i, &len) in lens.iter().enumerate() {
            let first = (i as i64 * 13) % slots;
            let own: Vec<i64> = (0..len).map(|t| (first + t * 3) % slots).collect();
            for h in 0..n_kv {
                for t in 0..lmax {
                    let slot = if t < len { own[t as usize] } else { own[0] };
                    index.push(h * slots + slot);
                }
            }
            bias.extend((0..lmax).map(|t| if t < len { 0f32 } else { f32::NEG_INFINITY }));
        }
        let index = Tensor::from_slice(&index);
        let bias = Tensor::from_slice(&bias).view([b, 1, 1, lmax]);
        let q = Tensor::randn([b, n_kv, groups, hd], opts);
        let scores = paged_attention(&q, &kc, &index, lmax, PagedPart::Scores).unwrap();
        let kd = kc.index_select(0, &index).view([b, n_kv, lmax, hd]);
        let want = q.matmul(&kd.transpose(-1, -2));
        let err = (&scores - &want).abs().max().double_value(&[]);
        assert!(err < 1e-4, "scores off by {err}");
        let probs = (scores + &bias).softmax(-1, Kind::Float).contiguous();
        let out = paged_attention(&probs, &vc, &index, lmax, PagedPart::Values).unwrap();
        let vd = vc.index_select(0, &index).view([b, n_kv, lmax, hd]);
        let want = probs.matmul(&vd);
        let err = (&out - &want).abs().max().double_value(&[]);
        assert!(err < 1e-4, "values off by {err}");
        let bad = Tensor::from_slice(&vec![n_kv * slots; (b * n_kv * lmax) as usize]);
        let e = paged_attention(&q, &kc, &bad, lmax, PagedPart::Scores)
            .unwrap_err()
            .to_string();
        assert!(e.contains("outside the cache"), "{e}");
    }

    /// A shape the kernel cannot take is an error, not a crash.
    #[test]
    fn panel_linear_refuses_mismatched_shapes() {
        if !panel_available() {
            return;
        }
        let w = panel_pack(&Tensor::randn([32, 8], (Kind::Float, Device::Cpu)));
        let x = Tensor::randn([2, 9], (Kind::Float, Device::Cpu));
        let e = panel_linear(&x, &w, 32).unwrap_err().to_string();
        assert!(e.contains("features"), "{e}");
        let x = Tensor::randn([2, 8], (Kind::Float, Device::Cpu));
        let e = panel_linear(&x, &w, 40).unwrap_err().to_string();
        assert!(e.contains("panels"), "{e}");
        assert!(panel_linear(&x, &w, 20).is_ok());
    }

    #[test]
    fn auto_layout_is_plain_on_cuda_panel_on_avx512_cpus_else_both_or_packed() {
        let cuda = Device::Cuda(0);
        assert_eq!(
            WeightLayout::Auto.resolve(cuda, Kind::Float),
            WeightLayout::Plain
        );
        assert_eq!(
            WeightLayout::Packed.resolve(cuda, Kind::BFloat16),
            WeightLayout::Plain
        );
        if panel_available() {
            for kind in [Kind::Float, Kind::BFloat16] {
                assert_eq!(
                    WeightLayout::Auto.resolve(Device::Cpu, kind),
                    WeightLayout::Panel
                );
            }
            assert_eq!(
                WeightLayout::Panel.resolve(cuda, Kind::Float),
                WeightLayout::Plain
            );
        } else if onednn_available() {
            assert_eq!(
                WeightLayout::Panel.resolve(Device::Cpu, Kind::Float),
                WeightLayout::Both
            );
            assert_eq!(
                WeightLayout::Auto.resolve(Device::Cpu, Kind::Float),
                WeightLayout::Both
            );
            assert_eq!(
                WeightLayout::Auto.resolve(Device::Cpu, Kind::BFloat16),
                WeightLayout::Packed
            );
        }
    }
}
