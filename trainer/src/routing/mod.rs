//! Token routing during training: TREAD (Krause et al., ICCV 2025) and SPRINT (2025).
//!
//! Both pick, per sample, a random subset of image tokens to carry through a middle span of
//! blocks while the others skip it. TREAD scatters the skipped tokens back unchanged into
//! their original positions after the span (no new parameters). SPRINT drops more (75%),
//! fills the dropped positions with a learnable mask token after the span and fuses
//! `[dense features before the span || restored deep features]` with a Linear(2C -> C).
//! Routing applies to training only; sampling runs all tokens through every block.
//!
//! Token order is handled with one permutation per sample: kept tokens first, then the
//! skipped ones; the inverse permutation restores the original order exactly.

use candle_core::{Device, Result, Tensor};
use serde::{Deserialize, Serialize};

use crate::rng::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RoutingKind {
    #[default]
    None,
    Tread,
    Sprint,
}

/// `[routing]` section. Blocks are numbered from 1; blocks `start..=end` see only the kept
/// tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    pub kind: RoutingKind,
    pub start: usize,
    pub end: usize,
    /// Fraction of image tokens that skip the span (TREAD 0.5, SPRINT 0.75).
    pub rate: f64,
    /// Fraction of the training steps, at the end, that run with every token (SPRINT's
    /// short full-token fine-tune after masked pre-training; 0: route every step).
    pub full_token_fraction: f64,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self { kind: RoutingKind::None, start: 2, end: 6, rate: 0.5, full_token_fraction: 0.0 }
    }
}

impl RoutingConfig {
    pub fn enabled(&self) -> bool {
        self.kind != RoutingKind::None
    }

    /// Whether training step `step` of `steps` drops tokens (routing on, and not in the
    /// full-token tail).
    pub fn routes_at(&self, step: usize, steps: usize) -> bool {
        self.enabled() && (step as f64) < ((1.0 - self.full_token_fraction) * steps as f64).round()
    }

    /// A SPRINT model's span as 0-based blocks (None for other kinds).
    pub fn sprint_span(&self) -> Option<(usize, usize)> {
        (self.kind == RoutingKind::Sprint).then(|| (self.start - 1, self.end - 1))
    }

    pub fn validate(&self, depth: usize) -> std::result::Result<(), String> {
        if !self.enabled() {
            return Ok(());
        }
        if self.start < 1 || self.start > self.end || self.end > depth {
            return Err(format!(
                "routing.start..routing.end ({}..{}) must lie within the model's blocks 1..{depth}",
                self.start, self.end
            ));
        }
        if !(self.rate > 0.0 && self.rate < 1.0) {
            return Err(format!("routing.rate must be in (0, 1), got {}", self.rate));
        }
        if !(0.0..1.0).contains(&self.full_token_fraction) {
            return Err(format!("routing.full_token_fraction must be in [0, 1), got {}", self.full_token_fraction));
        }
        Ok(())
    }
}

/// One batch's routing decision.
#[derive(Debug, Clone)]
pub struct RoutePlan {
    pub kind: RoutingKind,
    /// 0-based index of the first routed block.
    pub first: usize,
    /// 0-based index of the last routed block.
    pub last: usize,
    /// Tokens kept per sample.
    pub keep: usize,
    /// Flattened (B*N) gather indices into (B*N, C): kept tokens first, per sample.
    pub perm: Tensor,
    /// Inverse of `perm`.
    pub inv: Tensor,
    /// Per-sample kept token positions (B, keep), 0..N, for RoPE tables and REPA targets.
    pub kept: Vec<Vec<u32>>,
    /// Per-sample token order (N): kept tokens first, each part in raster order.
    orders: Vec<Vec<u32>>,
}

impl RoutePlan {
    pub fn draw(cfg: &RoutingConfig, batch: usize, tokens: usize, rng: &mut Rng, device: &Device) -> Result<Self> {
        let keep = ((tokens as f64) * (1.0 - cfg.rate)).round().clamp(1.0, tokens as f64) as usize;
        let orders = (0..batch)
            .map(|_| {
                let mut p: Vec<u32> = (0..tokens as u32).collect();
                rng.shuffle(&mut p);
                // kept tokens in raster order: deterministic layout, easier to reason about
                p[..keep].sort_unstable();
                p[keep..].sort_unstable();
                p
            })
            .collect();
        Self::from_orders(cfg.kind, cfg.start - 1, cfg.end - 1, keep, orders, device)
    }

    /// The plan of samples `range` only, with the same draws (a micro-batch of this batch).
    pub fn slice(&self, range: std::ops::Range<usize>) -> Result<Self> {
        Self::from_orders(self.kind, self.first, self.last, self.keep, self.orders[range].to_vec(), self.perm.device())
    }

    /// A plan from each sample's token order (kept tokens first).
    fn from_orders(kind: RoutingKind, first: usize, last: usize, keep: usize, orders: Vec<Vec<u32>>, device: &Device) -> Result<Self> {
        let batch = orders.len();
        let tokens = orders.first().map_or(0, Vec::len);
        let mut perm = Vec::with_capacity(batch * tokens);
        let mut inv = vec![0u32; batch * tokens];
        for (b, p) in orders.iter().enumerate() {
            for (j, &src) in p.iter().enumerate() {
                perm.push((b * tokens) as u32 + src);
                inv[b * tokens + src as usize] = (b * tokens + j) as u32;
            }
        }
        Ok(Self {
            kind,
            first,
            last,
            keep,
            perm: Tensor::from_vec(perm, batch * tokens, device)?,
            inv: Tensor::from_vec(inv, batch * tokens, device)?,
            kept: orders.iter().map(|p| p[..keep].to_vec()).collect(),
            orders,
        })
    }

    /// Reorders (B, N, C) so each sample's kept tokens come first; returns (kept, skipped).
    pub fn split(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, n, c) = x.dims3()?;
        let p = x.reshape((b * n, c))?.index_select(&self.perm, 0)?.reshape((b, n, c))?;
        Ok((p.narrow(1, 0, self.keep)?, p.narrow(1, self.keep, n - self.keep)?))
    }

    /// Inverse of `split`: puts kept and skipped tokens back into their original positions.
    pub fn merge(&self, kept: &Tensor, skipped: &Tensor) -> Result<Tensor> {
        let x = Tensor::cat(&[kept, skipped], 1)?;
        let (b, n, c) = x.dims3()?;
        x.reshape((b * n, c))?.index_select(&self.inv, 0)?.reshape((b, n, c))
    }

    /// Per-sample RoPE tables (B, keep, Dh/2) for the kept tokens.
    pub fn select_table(&self, table: &Tensor) -> Result<Tensor> {
        let idx: Vec<u32> = self.kept.iter().flatten().copied().collect();
        let b = self.kept.len();
        let idx = Tensor::from_vec(idx, b * self.keep, table.device())?;
        table.index_select(&idx, 0)?.reshape((b, self.keep, ()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_then_merge_restores_token_order_exactly() -> Result<()> {
        let dev = Device::Cpu;
        let cfg = RoutingConfig { kind: RoutingKind::Tread, start: 2, end: 4, rate: 0.5, full_token_fraction: 0.0 };
        let mut rng = Rng::new(3);
        let plan = RoutePlan::draw(&cfg, 3, 16, &mut rng, &dev)?;
        let x = Tensor::arange(0f32, (3 * 16 * 5) as f32, &dev)?.reshape((3, 16, 5))?;
        let (kept, skipped) = plan.split(&x)?;
        assert_eq!(kept.dims(), &[3, 8, 5]);
        assert_eq!(skipped.dims(), &[3, 8, 5]);
        // kept rows are the tokens the plan names, per sample
        let k = kept.to_vec3::<f32>()?;
        for b in 0..3 {
            for (j, &tok) in plan.kept[b].iter().enumerate() {
                assert_eq!(k[b][j][0], ((b * 16 + tok as usize) * 5) as f32);
            }
        }
        let back = plan.merge(&kept, &skipped)?;
        assert_eq!(back.to_vec3::<f32>()?, x.to_vec3::<f32>()?);
        // different samples drop different tokens
        assert_ne!(plan.kept[0], plan.kept[1]);
        Ok(())
    }

    #[test]
    fn a_slice_is_the_plan_of_those_samples() -> Result<()> {
        let dev = Device::Cpu;
        let cfg = RoutingConfig { kind: RoutingKind::Tread, start: 2, end: 4, rate: 0.5, full_token_fraction: 0.0 };
        let plan = RoutePlan::draw(&cfg, 4, 16, &mut Rng::new(9), &dev)?;
        let part = plan.slice(1..3)?;
        assert_eq!(part.kept, plan.kept[1..3].to_vec());
        let x = Tensor::arange(0f32, (4 * 16 * 2) as f32, &dev)?.reshape((4, 16, 2))?;
        let (kept, _) = plan.split(&x)?;
        let (kept_part, skipped_part) = part.split(&x.narrow(0, 1, 2)?)?;
        assert_eq!(kept_part.to_vec3::<f32>()?, kept.narrow(0, 1, 2)?.to_vec3::<f32>()?);
        assert_eq!(part.merge(&kept_part, &skipped_part)?.to_vec3::<f32>()?, x.narrow(0, 1, 2)?.to_vec3::<f32>()?);
        Ok(())
    }

    #[test]
    fn bad_spans_are_refused() {
        let cfg = RoutingConfig { kind: RoutingKind::Tread, start: 2, end: 9, rate: 0.5, full_token_fraction: 0.0 };
        assert!(cfg.validate(8).unwrap_err().contains("routing.start..routing.end"));
        let cfg = RoutingConfig { kind: RoutingKind::Sprint, start: 2, end: 6, rate: 1.0, full_token_fraction: 0.0 };
        assert!(cfg.validate(8).is_err());
    }
}
