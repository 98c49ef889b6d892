//! The evaluation report on the wire: the trainer's `EvalReport` (with its per-image
//! `EvalSamples`) to and from `ablate.v1.EvalReport`, field for field, in one place. The
//! worker sends what its ranks measured; the CLI reads what the coordinator kept with the
//! same conversion, so the table is built from the trainer's types wherever the numbers
//! travelled.

use ablate_proto::v1;
use ablate_trainer::eval::bootstrap::EvalSamples;
use ablate_trainer::eval::suite::EvalReport;
use ablate_trainer::eval::{Composition, Measured, Protocol};

/// Why a report from the wire cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("evaluation report from the coordinator: {0}")]
pub struct WireEvalError(String);

fn missing(what: &str) -> WireEvalError {
    WireEvalError(format!("{what} is missing"))
}

pub fn protocol_to_wire(p: &Protocol) -> v1::EvalProtocol {
    v1::EvalProtocol {
        metric: p.metric.clone(),
        network: p.network.clone(),
        weights_sha256: p.weights_sha256.clone(),
        samples: p.samples,
        sampler_steps: p.sampler_steps.map(|s| s as u32),
        guidance: p.guidance,
        seed: p.seed,
        reference: p.reference.clone(),
        resize: p.resize.clone(),
    }
}

pub fn protocol_from_wire(p: &v1::EvalProtocol) -> Protocol {
    Protocol {
        metric: p.metric.clone(),
        network: p.network.clone(),
        weights_sha256: p.weights_sha256.clone(),
        samples: p.samples,
        sampler_steps: p.sampler_steps.map(|s| s as usize),
        guidance: p.guidance,
        seed: p.seed,
        reference: p.reference.clone(),
        resize: p.resize.clone(),
    }
}

fn measured_to_wire(m: &Measured) -> v1::Measured {
    v1::Measured { value: m.value, protocol: Some(protocol_to_wire(&m.protocol)) }
}

fn measured_from_wire(m: Option<&v1::Measured>, what: &str) -> Result<Measured, WireEvalError> {
    let m = m.ok_or_else(|| missing(what))?;
    Ok(Measured { value: m.value, protocol: protocol_from_wire(m.protocol.as_ref().ok_or_else(|| missing(&format!("{what}'s protocol")))?) })
}

fn composition_to_wire(c: &Composition) -> v1::Composition {
    v1::Composition { object: c.object, color: c.color, count: c.count, position: c.position, layout: c.layout, color_position: c.color_position, overall: c.overall, all_correct: c.all_correct, images: c.images }
}

fn composition_from_wire(c: &v1::Composition) -> Composition {
    Composition { object: c.object, color: c.color, count: c.count, position: c.position, layout: c.layout, color_position: c.color_position, overall: c.overall, all_correct: c.all_correct, images: c.images }
}

pub fn samples_to_wire(s: &EvalSamples) -> v1::EvalSamples {
    v1::EvalSamples { dim: s.dim as u32, generated: s.generated.clone(), reference: s.reference.clone(), scores: s.scores.clone(), protocol: Some(protocol_to_wire(&s.protocol)) }
}

/// Refuses data whose sizes do not fit its `dim` and number of images.
pub fn samples_from_wire(s: &v1::EvalSamples) -> Result<EvalSamples, WireEvalError> {
    let (dim, n) = (s.dim as usize, s.scores.len());
    if dim == 0 || s.generated.len() != n * dim || s.reference.len() != n * dim {
        return Err(WireEvalError(format!("per-image data of {n} images x {dim} dimensions holds {} generated and {} reference numbers", s.generated.len(), s.reference.len())));
    }
    let protocol = protocol_from_wire(s.protocol.as_ref().ok_or_else(|| missing("the per-image data's protocol"))?);
    Ok(EvalSamples { dim, generated: s.generated.clone(), reference: s.reference.clone(), scores: s.scores.clone(), protocol })
}

/// The report as the wire carries it; `with_samples` adds its per-image data (completion
/// reports only: the periodic evaluations travel without it).
pub fn report_to_wire(r: &EvalReport, with_samples: bool) -> v1::EvalReport {
    v1::EvalReport {
        step: r.step as u64,
        fd_scenes: r.fd_scenes.as_ref().map(measured_to_wire),
        mmd_scenes: r.mmd_scenes.as_ref().map(measured_to_wire),
        accuracy: r.accuracy.as_ref().map(measured_to_wire),
        composition: r.composition.as_ref().map(composition_to_wire),
        fid: r.fid.as_ref().map(measured_to_wire),
        fid_unavailable: r.fid_unavailable.clone().unwrap_or_default(),
        cmmd: r.cmmd.as_ref().map(measured_to_wire),
        cmmd_unavailable: r.cmmd_unavailable.clone().unwrap_or_default(),
        dino_mmd: r.dino_mmd.as_ref().map(measured_to_wire),
        dino_mmd_unavailable: r.dino_mmd_unavailable.clone().unwrap_or_default(),
        seconds: r.seconds,
        samples: if with_samples { r.samples.as_ref().map(samples_to_wire) } else { None },
    }
}

pub fn report_from_wire(r: &v1::EvalReport) -> Result<EvalReport, WireEvalError> {
    Ok(EvalReport {
        step: r.step as usize,
        fd_scenes: r.fd_scenes.as_ref().map(|m| measured_from_wire(Some(m), "FD-scenes")).transpose()?,
        mmd_scenes: r.mmd_scenes.as_ref().map(|m| measured_from_wire(Some(m), "MMD")).transpose()?,
        accuracy: r.accuracy.as_ref().map(|m| measured_from_wire(Some(m), "accuracy")).transpose()?,
        composition: r.composition.as_ref().map(composition_from_wire),
        fid: r.fid.as_ref().map(|m| measured_from_wire(Some(m), "FID")).transpose()?,
        fid_unavailable: (!r.fid_unavailable.is_empty()).then(|| r.fid_unavailable.clone()),
        cmmd: r.cmmd.as_ref().map(|m| measured_from_wire(Some(m), "CMMD")).transpose()?,
        cmmd_unavailable: (!r.cmmd_unavailable.is_empty()).then(|| r.cmmd_unavailable.clone()),
        dino_mmd: r.dino_mmd.as_ref().map(|m| measured_from_wire(Some(m), "DINO-MMD")).transpose()?,
        dino_mmd_unavailable: (!r.dino_mmd_unavailable.is_empty()).then(|| r.dino_mmd_unavailable.clone()),
        seconds: r.seconds,
        samples: r.samples.as_ref().map(samples_from_wire).transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn protocol(metric: &str, seed: Option<u64>) -> Protocol {
        Protocol {
            metric: metric.into(),
            network: "scene-evaluator".into(),
            weights_sha256: "ab12".into(),
            samples: 2,
            sampler_steps: Some(20),
            guidance: Some(3.5),
            seed,
            reference: "scenes:photo:seed=7:n=2".into(),
            resize: "none".into(),
        }
    }

    fn report(fid: bool) -> EvalReport {
        let m = |v: f64, name: &str| Measured { value: v, protocol: protocol(name, Some(1234)) };
        EvalReport {
            step: 400,
            fd_scenes: Some(m(812.5, "fd_scenes")),
            mmd_scenes: Some(m(1.25, "mmd_scenes")),
            accuracy: Some(m(0.125, "accuracy")),
            composition: Some(Composition { object: 0.5, color: 0.25, count: 0.75, position: 0.5, layout: 0.1, color_position: 0.2, overall: 0.125, all_correct: 0.0, images: 2 }),
            fid: fid.then(|| Measured { value: 41.0, protocol: protocol("fid", None) }),
            fid_unavailable: (!fid).then(|| "weights not installed".to_string()),
            cmmd: fid.then(|| Measured { value: 0.41, protocol: protocol("cmmd", None) }),
            cmmd_unavailable: (!fid).then(|| "CLIP weights not installed".to_string()),
            dino_mmd: fid.then(|| Measured { value: 0.39, protocol: protocol("dino_mmd", None) }),
            dino_mmd_unavailable: (!fid).then(|| "DINOv2 weights not installed".to_string()),
            seconds: 3.5,
            samples: Some(EvalSamples { dim: 3, generated: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], reference: vec![0.5; 6], scores: vec![0.25, 0.75], protocol: protocol("fd_scenes", Some(1234)) }),
        }
    }

    #[test]
    fn the_typed_report_round_trips_the_wire() {
        for fid in [true, false] {
            let r = report(fid);
            // through the encoded bytes, as between processes
            let bytes = prost::Message::encode_to_vec(&report_to_wire(&r, true));
            let back = report_from_wire(&<v1::EvalReport as prost::Message>::decode(bytes.as_slice()).unwrap()).unwrap();
            assert_eq!(back, r);
            // the periodic form leaves the per-image data behind, nothing else
            let light = report_from_wire(&report_to_wire(&r, false)).unwrap();
            assert_eq!(light, EvalReport { samples: None, ..r });
        }
        // a report on the user's own set has no scene metrics, and says so by their absence
        let real = EvalReport { fd_scenes: None, mmd_scenes: None, accuracy: None, composition: None, samples: None, ..report(true) };
        assert_eq!(report_from_wire(&report_to_wire(&real, true)).unwrap(), real);
    }

    #[test]
    fn damaged_reports_are_refused_with_the_reason() {
        let mut w = report_to_wire(&report(true), true);
        w.samples.as_mut().unwrap().generated.pop();
        let e = report_from_wire(&w).unwrap_err().to_string();
        assert!(e.contains("2 images x 3 dimensions holds 5 generated"), "{e}");
        let mut w = report_to_wire(&report(true), false);
        w.mmd_scenes.as_mut().unwrap().protocol = None;
        assert!(report_from_wire(&w).unwrap_err().to_string().contains("MMD's protocol is missing"));
    }
}
