//! Sampling: Euler integration of the learned velocity field from noise (t = 1) to data
//! (t = 0), with classifier-free guidance `v = v_uncond + w (v_cond - v_uncond)`, and PNG
//! sample grids.

pub mod grid;

use candle_core::{Result, Tensor};

use crate::objective::flow::shift;

/// The Euler time grid: `steps + 1` points from 1 to 0, with the resolution shift applied.
pub fn time_grid(steps: usize, shift_a: f64) -> Vec<f64> {
    (0..=steps).map(|i| shift(1.0 - i as f64 / steps as f64, shift_a)).collect()
}

/// Integrates `x` from t = 1 to 0. `velocity(x, t, uncond)` returns the model's velocity for
/// the conditional (uncond = false) or unconditional batch; guidance 1.0 skips the
/// unconditional pass.
pub fn euler<F>(mut x: Tensor, steps: usize, shift_a: f64, guidance: f64, mut velocity: F) -> Result<Tensor>
where
    F: FnMut(&Tensor, f64, bool) -> Result<Tensor>,
{
    let ts = time_grid(steps, shift_a);
    for w in ts.windows(2) {
        let (t, t_next) = (w[0], w[1]);
        let vc = velocity(&x, t, false)?;
        let v = if (guidance - 1.0).abs() < 1e-12 {
            vc
        } else {
            let vu = velocity(&x, t, true)?;
            (&vu + ((vc - &vu)? * guidance)?)?
        };
        // detach: the weights are `Var`s, so without it the graph of every step is kept alive
        x = (x - (v * (t - t_next))?)?.detach();
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn euler_is_exact_for_a_straight_flow() -> Result<()> {
        // data x0 = 2, noise eps: for the exact velocity v = eps - x0, Euler lands on x0
        let dev = Device::Cpu;
        let eps = Tensor::new(&[0.7f32, -1.3], &dev)?;
        let x0 = Tensor::new(&[2f32, -0.5], &dev)?;
        let v = (&eps - &x0)?;
        let out = euler(eps.clone(), 7, 1.0, 3.5, |_, _, _| Ok(v.clone()))?;
        let d = (out - &x0)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(d < 1e-5);
        let g = time_grid(4, 3.0);
        assert_eq!(g.first(), Some(&1.0));
        assert_eq!(g.last(), Some(&0.0));
        assert!((g[2] - 0.75).abs() < 1e-12);
        Ok(())
    }
}
