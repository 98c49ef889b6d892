//! The protocol a metric was measured under, carried by every reported number.
//!
//! Two numbers are comparable only when everything that changes a metric's value agrees:
//! network and its weights, sample count, sampler steps, guidance, seed, reference set,
//! resize. [`Measured::delta`] refuses to subtract numbers whose protocols differ and names
//! the fields that differ.

use serde::{Deserialize, Serialize};

use super::EvalError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Protocol {
    /// "fid", "fd_scenes", "mmd_scenes", "accuracy".
    pub metric: String,
    /// Feature network, e.g. "pytorch-fid inception-v3" or "scene-evaluator".
    pub network: String,
    /// sha256 of the network's weights file.
    pub weights_sha256: String,
    /// Generated (or first-set) images the number is computed from.
    pub samples: u64,
    /// Euler steps of the sampler (None for image folders).
    pub sampler_steps: Option<usize>,
    pub guidance: Option<f64>,
    /// Seed of the evaluation noise and prompts.
    pub seed: Option<u64>,
    /// What the samples were compared with, e.g. "scenes:photo:seed=…:n=…" or a stats file hash.
    pub reference: String,
    /// How images reach the network, e.g. "bilinear 299x299 align_corners=false, [-1,1]".
    pub resize: String,
}

impl Protocol {
    /// The fields in which `other` differs, as "field: a vs b".
    pub fn differences(&self, other: &Protocol) -> Vec<String> {
        let mut d = Vec::new();
        let mut cmp = |name: &str, a: String, b: String| {
            if a != b {
                d.push(format!("{name}: {a} vs {b}"));
            }
        };
        cmp("metric", self.metric.clone(), other.metric.clone());
        cmp("network", self.network.clone(), other.network.clone());
        cmp("weights_sha256", self.weights_sha256.clone(), other.weights_sha256.clone());
        cmp("samples", self.samples.to_string(), other.samples.to_string());
        cmp("sampler_steps", format!("{:?}", self.sampler_steps), format!("{:?}", other.sampler_steps));
        cmp("guidance", format!("{:?}", self.guidance), format!("{:?}", other.guidance));
        cmp("seed", format!("{:?}", self.seed), format!("{:?}", other.seed));
        cmp("reference", self.reference.clone(), other.reference.clone());
        cmp("resize", self.resize.clone(), other.resize.clone());
        d
    }

    /// One line for tables and CLI output.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "{} with {} (weights sha256 {}), {} samples",
            self.metric,
            self.network,
            self.weights_sha256.chars().take(12).collect::<String>(),
            self.samples
        );
        if let Some(st) = self.sampler_steps {
            s.push_str(&format!(", {st} Euler steps"));
        }
        if let Some(g) = self.guidance {
            s.push_str(&format!(", guidance {g}"));
        }
        if let Some(seed) = self.seed {
            s.push_str(&format!(", seed {seed}"));
        }
        s.push_str(&format!(", reference {}, resize {}", self.reference, self.resize));
        s
    }
}

/// A metric value with its protocol.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    pub value: f64,
    pub protocol: Protocol,
}

impl Measured {
    /// `self - baseline`, only if both were measured the same way.
    pub fn delta(&self, baseline: &Measured) -> Result<f64, EvalError> {
        let diff = self.protocol.differences(&baseline.protocol);
        if !diff.is_empty() {
            return Err(EvalError::ProtocolMismatch(diff.join("; ")));
        }
        Ok(self.value - baseline.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> Protocol {
        Protocol {
            metric: "fd_scenes".into(),
            network: "scene-evaluator".into(),
            weights_sha256: "abcdef0123456789".into(),
            samples: 128,
            sampler_steps: Some(20),
            guidance: Some(3.5),
            seed: Some(7),
            reference: "scenes:photo".into(),
            resize: "bilinear 32x32".into(),
        }
    }

    #[test]
    fn refuses_to_compare_different_protocols() {
        let a = Measured { value: 3.0, protocol: p() };
        let b = Measured { value: 1.0, protocol: p() };
        assert_eq!(a.delta(&b).unwrap(), 2.0);
        let mut q = p();
        q.samples = 256;
        q.guidance = Some(1.0);
        let err = a.delta(&Measured { value: 1.0, protocol: q }).unwrap_err().to_string();
        assert!(err.contains("samples: 128 vs 256") && err.contains("guidance"), "{err}");
    }
}
