//! Every CUDA kernel's algorithm, run from its own source under host emulation, against the
//! CPU fused op of `ablate-trainer` (forward and every input gradient, the CPU side through
//! candle's autograd with `dy` as the weights of a weighted sum): f32 within 1e-5 and bf16
//! within 1e-2 of the largest magnitude. Shapes are small but cross every boundary the
//! kernels have: rows not a multiple of the row chunk, widths not a multiple of a warp,
//! grids smaller than the rows (grid-stride loops), several partial-sum chunks.

use ablate_cuda_emu::{kernels, launch, P};
use ablate_trainer::kernels::launch as geo;
use ablate_trainer::rng::Rng;
use candle_core::{Device, Tensor, Var};
use std::ffi::c_void;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Prec {
    F32,
    Bf16,
}
use Prec::{Bf16, F32};

/// A device buffer stand-in: f32, or bf16 as its 16 bits.
struct Buf {
    prec: Prec,
    f: Vec<f32>,
    h: Vec<u16>,
}

impl Buf {
    fn new(prec: Prec, vals: &[f32]) -> Self {
        match prec {
            F32 => Buf { prec, f: vals.to_vec(), h: vec![] },
            Bf16 => Buf { prec, f: vec![], h: vals.iter().map(|&v| half::bf16::from_f32(v).to_bits()).collect() },
        }
    }
    fn zeros(prec: Prec, n: usize) -> Self {
        Self::new(prec, &vec![0.0; n])
    }
    fn p(&self) -> P<c_void> {
        match self.prec {
            F32 => P(self.f.as_ptr() as *mut c_void),
            Bf16 => P(self.h.as_ptr() as *mut c_void),
        }
    }
    fn values(&self) -> Vec<f32> {
        match self.prec {
            F32 => self.f.clone(),
            Bf16 => self.h.iter().map(|&b| half::bf16::from_bits(b).to_f32()).collect(),
        }
    }
}

/// Calls the f32 or bf16 instance of a kernel.
macro_rules! k {
    ($prec:expr, $name:ident, $($a:expr),* $(,)?) => {
        // SAFETY: every pointer is a live buffer of the size the kernel indexes (the tests
        // size them from the same shapes they pass).
        unsafe { match $prec { F32 => kernels::f32::$name($($a as _),*), Bf16 => kernels::bf16::$name($($a as _),*) } }
    };
}

fn run(l: geo::Launch, f: impl Fn() + Sync) {
    launch(l.0, l.1, f).expect("emulated launch");
}

fn randn(n: usize, seed: u64, scale: f32, offset: f32) -> Vec<f32> {
    Rng::new(seed).normal_vec(n).into_iter().map(|v| v * scale + offset).collect()
}

/// What the kernel sees: values rounded to the precision.
fn rounded(prec: Prec, v: &[f32]) -> Vec<f32> {
    Buf::new(prec, v).values()
}

fn tol(prec: Prec) -> f32 {
    match prec {
        F32 => 1e-5,
        Bf16 => 1e-2,
    }
}

#[track_caller]
fn assert_close(what: &str, prec: Prec, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-3);
    let (i, diff) = got.iter().zip(want).map(|(a, b)| (a - b).abs()).enumerate().fold((0, 0f32), |m, (i, d)| if d > m.1 { (i, d) } else { m });
    assert!(diff / scale <= tol(prec), "{what} ({prec:?}): element {i} is {} vs {} (max diff {diff}, scale {scale})", got[i], want[i]);
}

/// The CPU op's value and input gradients for upstream gradient `dy`.
fn cpu_grads(inputs: &[(&[f32], &[usize])], dy: &[f32], f: impl Fn(&[Tensor]) -> candle_core::Result<Tensor>) -> (Vec<f32>, Vec<Vec<f32>>) {
    let vars: Vec<Var> = inputs.iter().map(|(v, s)| Var::from_tensor(&Tensor::from_vec(v.to_vec(), *s, &Device::Cpu).unwrap()).unwrap()).collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&ts).unwrap();
    let w = Tensor::from_vec(dy.to_vec(), y.shape(), &Device::Cpu).unwrap();
    let g = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    (flat(&y), vars.iter().map(|v| flat(g.get(v.as_tensor()).expect("a gradient"))).collect())
}

/// adaLN modulate (per-sample shift/scale, offset 1) and LayerNorm-affine (shared, offset 0):
/// y, dx, dshift, dscale, with the default geometry and with a grid of 2 blocks.
#[test]
fn layer_norm_modulate_matches_the_cpu_op() {
    let (b, n, d) = (3usize, 70usize, 96usize);
    let rows = b * n;
    for prec in [F32, Bf16] {
        for shared in [false, true] {
            let pr = if shared { 1 } else { b };
            let x = rounded(prec, &randn(rows * d, 1, 2.0, 0.5));
            let shift = rounded(prec, &randn(pr * d, 2, 0.5, 0.0));
            let scale = rounded(prec, &randn(pr * d, 3, 0.5, if shared { 1.0 } else { 0.0 }));
            let dy = rounded(prec, &randn(rows * d, 4, 1.0, 0.0));
            let (want_y, want_g) = cpu_grads(&[(&x, &[b, n, d]), (&shift, &[pr, d]), (&scale, &[pr, d])], &dy, |t| {
                if shared {
                    ablate_trainer::kernels::norm::layer_norm_affine(&t[0], &t[2].reshape(d)?, &t[1].reshape(d)?, 1e-6)
                } else {
                    ablate_trainer::kernels::norm::layer_norm_modulate(&t[0], &t[1], &t[2], 1e-6)
                }
            });
            let offset = if shared { 0.0f32 } else { 1.0 };
            let (xb, shb, scb, dyb) = (Buf::new(prec, &x), Buf::new(prec, &shift), Buf::new(prec, &scale), Buf::new(prec, &dy));
            for l in [geo::ln_rows(rows, d), ((2, 1), geo::row_block(d))] {
                let y = Buf::zeros(prec, rows * d);
                let (px, psh, psc, py) = (xb.p(), shb.p(), scb.p(), y.p());
                run(l, || k!(prec, ablate_ln_modulate_fwd, px.get(), psh.get(), psc.get(), py.get(), rows as i32, n as i32, d as i32, shared as i32, offset, 1e-6f64));
                assert_close("ln forward", prec, &y.values(), &want_y);
            }
            // backward: dx and the row statistics, then the two-pass parameter sums
            let (dx, mut stats) = (Buf::zeros(prec, rows * d), vec![0f32; 2 * rows]);
            let (px, psc, pdy, pdx, pst) = (xb.p(), scb.p(), dyb.p(), dx.p(), P::of(&mut stats));
            run(geo::ln_rows(rows, d), || k!(prec, ablate_ln_modulate_bwd_dx, px.get(), psc.get(), pdy.get(), pdx.get(), pst.get(), rows as i32, n as i32, d as i32, shared as i32, offset, 1e-6f64));
            assert_close("ln dx", prec, &dx.values(), &want_g[0]);
            let (groups, group_rows) = if shared { (1, rows) } else { (b, n) };
            let (chunk_rows, chunks) = (geo::chunk_rows(groups, group_rows), geo::chunks(groups, group_rows));
            assert!(chunks > 1, "the test must cross a chunk boundary");
            let (mut ps, mut pc) = (vec![0f32; groups * chunks * d], vec![0f32; groups * chunks * d]);
            let (pps, ppc, pst) = (P::of(&mut ps), P::of(&mut pc), P::of_ref(&stats));
            run(geo::column_partials(groups, group_rows, d), || k!(prec, ablate_ln_modulate_param_partials, px.get(), pdy.get(), pst.get(), pps.get(), ppc.get(), group_rows as i32, chunk_rows as i32, chunks as i32, d as i32));
            for (what, part, want) in [("ln dshift", &ps, &want_g[1]), ("ln dscale", &pc, &want_g[2])] {
                let out = Buf::zeros(prec, groups * d);
                let (pp, po) = (P::of_ref(part), out.p());
                run(geo::column_sum(groups, d), || k!(prec, ablate_col_sum, pp.get(), po.get(), groups as i32, chunks as i32, d as i32));
                assert_close(what, prec, &out.values(), want);
            }
        }
    }
}

/// RMSNorm over rows of 64 (the QK norms' head width) and of 40 (not whole warps).
#[test]
fn rms_norm_matches_the_cpu_op() {
    for prec in [F32, Bf16] {
        for (lead, d) in [([2usize, 3, 70], 64usize), ([1, 2, 45], 40)] {
            let rows: usize = lead.iter().product();
            let shape = [lead[0], lead[1], lead[2], d];
            let x = rounded(prec, &randn(rows * d, 11, 2.0, 0.0));
            let w = rounded(prec, &randn(d, 12, 0.3, 1.0));
            let dy = rounded(prec, &randn(rows * d, 13, 1.0, 0.0));
            let (want_y, want_g) = cpu_grads(&[(&x, &shape), (&w, &[d])], &dy, |t| ablate_trainer::kernels::rms::rms_norm(&t[0], &t[1], 1e-6));
            let (xb, wb, dyb, y, dx) = (Buf::new(prec, &x), Buf::new(prec, &w), Buf::new(prec, &dy), Buf::zeros(prec, rows * d), Buf::zeros(prec, rows * d));
            let (px, pw, pdy, py, pdx) = (xb.p(), wb.p(), dyb.p(), y.p(), dx.p());
            run(geo::rms_rows(rows), || k!(prec, ablate_rms_norm_fwd, px.get(), pw.get(), py.get(), rows as i64, d as i32, 1e-6f64));
            assert_close("rms forward", prec, &y.values(), &want_y);
            let mut stats = vec![0f32; rows];
            let pst = P::of(&mut stats);
            run(geo::rms_rows(rows), || k!(prec, ablate_rms_norm_bwd_dx, px.get(), pw.get(), pdy.get(), pdx.get(), pst.get(), rows as i64, d as i32, 1e-6f64));
            assert_close("rms dx", prec, &dx.values(), &want_g[0]);
            let (chunk_rows, chunks) = (geo::chunk_rows(1, rows), geo::chunks(1, rows));
            let mut part = vec![0f32; chunks * d];
            let (pp, pst) = (P::of(&mut part), P::of_ref(&stats));
            run(geo::column_partials(1, rows, d), || k!(prec, ablate_rms_norm_dw_partials, px.get(), pdy.get(), pst.get(), pp.get(), rows as i64, chunk_rows as i32, d as i32));
            let dw = Buf::zeros(prec, d);
            let (pp, pdw) = (P::of_ref(&part), dw.p());
            run(geo::column_sum(1, d), || k!(prec, ablate_col_sum, pp.get(), pdw.get(), 1i32, chunks as i32, d as i32));
            assert_close("rms dw", prec, &dw.values(), &want_g[1]);
        }
    }
}

/// gelu, gelu(gate) * up, and the packed gate|up form, forward and backward.
#[test]
fn gated_gelu_matches_the_cpu_ops() {
    let (rows, m) = (45usize, 33usize);
    let n = rows * m;
    for prec in [F32, Bf16] {
        let gate = rounded(prec, &randn(n, 21, 2.0, 0.0));
        let up = rounded(prec, &randn(n, 22, 1.0, 0.0));
        let dy = rounded(prec, &randn(n, 23, 1.0, 0.0));
        let (gb, ub, dyb) = (Buf::new(prec, &gate), Buf::new(prec, &up), Buf::new(prec, &dy));
        for with_up in [true, false] {
            let (want_y, want_g) = if with_up {
                cpu_grads(&[(&gate, &[rows, m]), (&up, &[rows, m])], &dy, |t| ablate_trainer::kernels::gelu::gated_gelu(&t[0], &t[1]))
            } else {
                cpu_grads(&[(&gate, &[rows, m])], &dy, |t| ablate_trainer::kernels::gelu::gelu(&t[0]))
            };
            let (y, dg, du) = (Buf::zeros(prec, n), Buf::zeros(prec, n), Buf::zeros(prec, n));
            let pu = if with_up { ub.p() } else { P::null() };
            let (pg, py, pdy, pdg, pdu) = (gb.p(), y.p(), dyb.p(), dg.p(), du.p());
            run(geo::elementwise(n), || k!(prec, ablate_gated_gelu_fwd, pg.get(), pu.get(), py.get(), n as i64));
            assert_close("gelu forward", prec, &y.values(), &want_y);
            run(geo::elementwise(n), || k!(prec, ablate_gated_gelu_bwd, pg.get(), pu.get(), pdy.get(), pdg.get(), pdu.get(), n as i64));
            assert_close("gelu dgate", prec, &dg.values(), &want_g[0]);
            if with_up {
                assert_close("gelu dup", prec, &du.values(), &want_g[1]);
            }
        }
        // packed: x (rows, 2m) = [gate | up]
        let packed: Vec<f32> = (0..rows).flat_map(|r| gate[r * m..(r + 1) * m].iter().chain(&up[r * m..(r + 1) * m]).copied().collect::<Vec<_>>()).collect();
        let (want_y, want_g) = cpu_grads(&[(&packed, &[rows, 2 * m])], &dy, |t| ablate_trainer::kernels::gelu::gated_gelu_packed(&t[0]));
        let (xb, y, dx) = (Buf::new(prec, &packed), Buf::zeros(prec, n), Buf::zeros(prec, 2 * n));
        let (px, py, pdy, pdx) = (xb.p(), y.p(), dyb.p(), dx.p());
        run(geo::elementwise(n), || k!(prec, ablate_gated_gelu_packed_fwd, px.get(), py.get(), rows as i64, m as i32));
        assert_close("packed gelu forward", prec, &y.values(), &want_y);
        run(geo::elementwise(n), || k!(prec, ablate_gated_gelu_packed_bwd, px.get(), pdy.get(), pdx.get(), rows as i64, m as i32));
        assert_close("packed gelu dx", prec, &dx.values(), &want_g[0]);
    }
}

/// x + y * gate: out, dx (= dout), dy, dgate (two-pass per-sample column sums).
#[test]
fn gated_residual_matches_the_cpu_op() {
    let (b, n, d) = (3usize, 70usize, 40usize);
    let total = b * n * d;
    for prec in [F32, Bf16] {
        let x = rounded(prec, &randn(total, 31, 1.0, 0.0));
        let y = rounded(prec, &randn(total, 32, 1.0, 0.0));
        let gate = rounded(prec, &randn(b * d, 33, 1.0, 0.0));
        let dout = rounded(prec, &randn(total, 34, 1.0, 0.0));
        let (want, want_g) = cpu_grads(&[(&x, &[b, n, d]), (&y, &[b, n, d]), (&gate, &[b, d])], &dout, |t| ablate_trainer::kernels::residual::gated_residual(&t[0], &t[1], &t[2]));
        assert_eq!(want_g[0], dout, "dx is dout");
        let (xb, yb, gb, db) = (Buf::new(prec, &x), Buf::new(prec, &y), Buf::new(prec, &gate), Buf::new(prec, &dout));
        let (out, dy) = (Buf::zeros(prec, total), Buf::zeros(prec, total));
        let (px, py, pg, pd, po, pdy) = (xb.p(), yb.p(), gb.p(), db.p(), out.p(), dy.p());
        run(geo::elementwise(total), || k!(prec, ablate_gated_residual_fwd, px.get(), py.get(), pg.get(), po.get(), total as i64, n as i32, d as i32));
        assert_close("residual forward", prec, &out.values(), &want);
        run(geo::elementwise(total), || k!(prec, ablate_gated_residual_bwd_dy, pg.get(), pd.get(), pdy.get(), total as i64, n as i32, d as i32));
        assert_close("residual dy", prec, &dy.values(), &want_g[1]);
        let (chunk_rows, chunks) = (geo::chunk_rows(b, n), geo::chunks(b, n));
        let mut part = vec![0f32; b * chunks * d];
        let pp = P::of(&mut part);
        run(geo::column_partials(b, n, d), || k!(prec, ablate_gated_residual_dgate_partials, py.get(), pd.get(), pp.get(), n as i32, chunk_rows as i32, chunks as i32, d as i32));
        let dg = Buf::zeros(prec, b * d);
        let (pp, pdg) = (P::of_ref(&part), dg.p());
        run(geo::column_sum(b, d), || k!(prec, ablate_col_sum, pp.get(), pdg.get(), b as i32, chunks as i32, d as i32));
        assert_close("residual dgate", prec, &dg.values(), &want_g[2]);
    }
}

/// RoPE with shared (n, dh/2) and per-sample (B, n, dh/2) tables; backward is the inverse
/// rotation (sign -1) of dy.
#[test]
fn rope_matches_the_cpu_op() {
    use ablate_trainer::model::layers::rope_tables;
    let (b, h, n, dh) = (2usize, 3usize, 12usize, 16usize);
    let (cos, sin) = rope_tables(3, 4, dh, 10000.0, &Device::Cpu).unwrap();
    let idx = Tensor::new((0..n as u32).chain((0..n as u32).rev()).collect::<Vec<_>>(), &Device::Cpu).unwrap();
    let per = (cos.index_select(&idx, 0).unwrap().reshape((b, n, dh / 2)).unwrap(), sin.index_select(&idx, 0).unwrap().reshape((b, n, dh / 2)).unwrap());
    let total = b * h * n * dh;
    for prec in [F32, Bf16] {
        let x = rounded(prec, &randn(total, 41, 1.0, 0.0));
        let dy = rounded(prec, &randn(total, 42, 1.0, 0.0));
        for (c, s) in [(&cos, &sin), (&per.0, &per.1)] {
            let (want, want_g) = cpu_grads(&[(&x, &[b, h, n, dh])], &dy, |t| ablate_trainer::kernels::rope::rope(&t[0], c, s));
            let (cv, sv) = (c.flatten_all().unwrap().to_vec1::<f32>().unwrap(), s.flatten_all().unwrap().to_vec1::<f32>().unwrap());
            let (xb, dyb, y, dx) = (Buf::new(prec, &x), Buf::new(prec, &dy), Buf::zeros(prec, total), Buf::zeros(prec, total));
            let (pc, ps) = (P::of_ref(&cv), P::of_ref(&sv));
            let per_sample = (c.rank() == 3) as i32;
            let pairs = total / 2;
            for (src, dst, sign, want, what) in [(xb.p(), y.p(), 1.0f32, &want, "rope forward"), (dyb.p(), dx.p(), -1.0, &want_g[0], "rope backward")] {
                run(geo::elementwise(pairs), || k!(prec, ablate_rope, src.get(), pc.get(), ps.get(), dst.get(), pairs as i64, h as i32, n as i32, dh as i32, per_sample, sign));
                let got = if sign > 0.0 { y.values() } else { dx.values() };
                assert_close(what, prec, &got, want);
            }
        }
    }
}

/// mean((a - b)^2) over more than one partial-sum chunk, and its two gradients.
#[test]
fn mean_squared_error_matches_the_cpu_op() {
    let n = 2 * geo::MSE_CHUNK + 1234;
    for prec in [F32, Bf16] {
        let a = rounded(prec, &randn(n, 51, 1.0, 0.0));
        let bv = rounded(prec, &randn(n, 52, 1.0, 0.3));
        let g = 0.75f32;
        let (want, want_g) = cpu_grads(&[(&a, &[n]), (&bv, &[n])], &[g], |t| ablate_trainer::kernels::loss::mean_squared_error(&t[0], &t[1]));
        let (ab, bb, gb, out, da, db) = (Buf::new(prec, &a), Buf::new(prec, &bv), Buf::new(prec, &[g]), Buf::zeros(prec, 1), Buf::zeros(prec, n), Buf::zeros(prec, n));
        let l = geo::mse_partials(n);
        assert_eq!(l.0 .0, 3);
        let mut part = vec![0f64; l.0 .0 as usize];
        let (pa, pb, pp) = (ab.p(), bb.p(), P::of(&mut part));
        run(l, || k!(prec, ablate_mse_partials, pa.get(), pb.get(), pp.get(), n as i64));
        let (pp, po) = (P::of_ref(&part), out.p());
        run(((1, 1), geo::BLOCK), || k!(prec, ablate_mse_finish, pp.get(), part.len() as i32, po.get(), n as i64));
        assert_close("mse value", prec, &out.values(), &want);
        let (pg, pda, pdb) = (gb.p(), da.p(), db.p());
        run(geo::elementwise(n), || k!(prec, ablate_mse_bwd, pa.get(), pb.get(), pg.get(), pda.get(), pdb.get(), n as i64));
        assert_close("mse da", prec, &da.values(), &want_g[0]);
        assert_close("mse db", prec, &db.values(), &want_g[1]);
    }
}

/// Attention's softmax with the key mask of padded text keys: `softmax(s * scale + bias)`
/// against candle's composition on the CPU, and its backward (from the stored
/// probabilities), over rows wider than a block (320 image + 64 text keys) and narrower.
#[test]
fn masked_softmax_matches_the_composition() {
    use ablate_trainer::model::layers::padding_bias;
    for (b, h, nq, n_img, n_txt, valid) in [(2usize, 3usize, 5usize, 320usize, 64usize, [64usize, 17]), (2, 2, 3, 24, 8, [8, 3])] {
        let nk = n_img + n_txt;
        let scale = 1.0 / 8.0f32;
        let rows = b * h * nq;
        let bias = padding_bias(n_img, &valid, n_txt, &Device::Cpu).unwrap();
        let bias_v = bias.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(bias_v.len(), b * nk);
        for prec in [F32, Bf16] {
            let s = rounded(prec, &randn(rows * nk, 61, 3.0, 0.0));
            let dp = rounded(prec, &randn(rows * nk, 62, 1.0, 0.0));
            let (want, want_g) = cpu_grads(&[(&s, &[b, h, nq, nk])], &dp, |t| candle_nn::ops::softmax(&(&t[0] * scale as f64)?.broadcast_add(&bias)?, candle_core::D::Minus1));
            let (sb, dpb, p, ds) = (Buf::new(prec, &s), Buf::new(prec, &dp), Buf::zeros(prec, rows * nk), Buf::zeros(prec, rows * nk));
            let (ps, pb, pp, pdp, pds) = (sb.p(), P::of_ref(&bias_v), p.p(), dpb.p(), ds.p());
            run(geo::ln_rows(rows, nk), || k!(prec, ablate_masked_softmax_fwd, ps.get(), pb.get(), pp.get(), rows as i64, (h * nq) as i64, nk as i32, scale));
            assert_close("softmax forward", prec, &p.values(), &want);
            // masked keys get exactly zero probability
            let pv = p.values();
            assert!((0..rows).filter(|r| r / (h * nq) == 1).all(|r| pv[r * nk + n_img + valid[1]..(r + 1) * nk].iter().all(|&x| x == 0.0)), "masked keys");
            run(geo::ln_rows(rows, nk), || k!(prec, ablate_masked_softmax_bwd, pp.get(), pdp.get(), pds.get(), rows as i64, nk as i32, scale));
            assert_close("softmax backward", prec, &ds.values(), &want_g[0]);
        }
    }
}

/// Attention's input preparation (head split, QK RMSNorms, RoPE, text-key concatenation)
/// against the composition of `layers::attention_core_composed`, with shared and per-sample
/// RoPE tables: the packed [q | k | v], and dqkv, dtkv and the three norm weights' gradients.
#[test]
fn qkv_prep_matches_the_composition() {
    use ablate_trainer::model::layers::{qkv_prep_composed, rope_tables};
    let (b, n, t, heads, dh) = (2usize, 6usize, 4usize, 3usize, 8usize);
    let h = heads * dh;
    let (cos, sin) = rope_tables(2, 3, dh, 10000.0, &Device::Cpu).unwrap();
    let idx = Tensor::new(&[0u32, 1, 2, 3, 4, 5, 5, 4, 3, 2, 1, 0], &Device::Cpu).unwrap();
    let per = (cos.index_select(&idx, 0).unwrap().reshape((b, n, dh / 2)).unwrap(), sin.index_select(&idx, 0).unwrap().reshape((b, n, dh / 2)).unwrap());
    // the composed preparation, packed as the kernel packs it
    let prep = |x: &[Tensor], c: &Tensor, s: &Tensor| -> candle_core::Result<Tensor> {
        let (q, k, v) = qkv_prep_composed(&x[0], &x[1], [&x[2], &x[3], &x[4]], c, s, heads, 1e-6)?;
        Tensor::cat(&[q.flatten_all()?, k.flatten_all()?, v.flatten_all()?], 0)
    };
    let rows = b * heads * (n + 2 * (n + t));
    for prec in [F32, Bf16] {
        let qkv = rounded(prec, &randn(b * n * 3 * h, 71, 1.5, 0.0));
        let tkv = rounded(prec, &randn(b * t * 2 * h, 72, 1.5, 0.0));
        let ws: Vec<Vec<f32>> = (0..3).map(|i| rounded(prec, &randn(dh, 73 + i, 0.3, 1.0))).collect();
        let g = rounded(prec, &randn(rows * dh, 76, 1.0, 0.0));
        let w_all: Vec<f32> = ws.concat();
        for (c, s) in [(&cos, &sin), (&per.0, &per.1)] {
            let (want, want_g) = cpu_grads(&[(&qkv, &[b, n, 3 * h]), (&tkv, &[b, t, 2 * h]), (&ws[0], &[dh]), (&ws[1], &[dh]), (&ws[2], &[dh])], &g, |x| prep(x, c, s));
            let (cv, sv) = (c.flatten_all().unwrap().to_vec1::<f32>().unwrap(), s.flatten_all().unwrap().to_vec1::<f32>().unwrap());
            let per_sample = (c.rank() == 3) as i32;
            let (qb, tb, wb, gb) = (Buf::new(prec, &qkv), Buf::new(prec, &tkv), Buf::new(prec, &w_all), Buf::new(prec, &g));
            let out = Buf::zeros(prec, rows * dh);
            let (pq, pt, pw, pc, ps, po) = (qb.p(), tb.p(), wb.p(), P::of_ref(&cv), P::of_ref(&sv), out.p());
            run(geo::rms_rows(rows), || k!(prec, ablate_qkv_prep_fwd, pq.get(), pt.get(), pw.get(), pc.get(), ps.get(), po.get(), b as i64, heads as i32, n as i32, t as i32, dh as i32, per_sample, 1e-6f64));
            assert_close("qkv prep forward", prec, &out.values(), &want);
            let (dq, dt, mut stats) = (Buf::zeros(prec, qkv.len()), Buf::zeros(prec, tkv.len()), vec![0f32; rows]);
            let (pg, pdq, pdt, pst) = (gb.p(), dq.p(), dt.p(), P::of(&mut stats));
            run(geo::rms_rows(rows), || k!(prec, ablate_qkv_prep_bwd, pq.get(), pt.get(), pw.get(), pc.get(), ps.get(), pg.get(), pdq.get(), pdt.get(), pst.get(), b as i64, heads as i32, n as i32, t as i32, dh as i32, per_sample, 1e-6f64));
            assert_close("qkv prep dqkv", prec, &dq.values(), &want_g[0]);
            assert_close("qkv prep dtkv", prec, &dt.values(), &want_g[1]);
            let per_weight = b * heads * n.max(t);
            let (chunk_rows, chunks) = (geo::chunk_rows(3, per_weight), geo::chunks(3, per_weight));
            let mut part = vec![0f32; 3 * chunks * dh];
            let (pst, pp) = (P::of_ref(&stats), P::of(&mut part));
            run(geo::column_partials(3, per_weight, dh), || k!(prec, ablate_qkv_prep_dw_partials, pq.get(), pt.get(), pc.get(), ps.get(), pg.get(), pst.get(), pp.get(), b as i64, heads as i32, n as i32, t as i32, dh as i32, per_sample, chunk_rows as i32, chunks as i32));
            let dw = Buf::zeros(prec, 3 * dh);
            let (pp, pdw) = (P::of_ref(&part), dw.p());
            run(geo::column_sum(3, dh), || k!(prec, ablate_col_sum, pp.get(), pdw.get(), 3i32, chunks as i32, dh as i32));
            let dwv = dw.values();
            for (i, name) in ["qkv prep dwq", "qkv prep dwk", "qkv prep dwt"].iter().enumerate() {
                assert_close(name, prec, &dwv[i * dh..(i + 1) * dh], &want_g[2 + i]);
            }
        }
    }
}
