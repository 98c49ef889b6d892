//! Validation of images handed to an evaluator: the place where the uint8-vs-float trap
//! (PRX's released code feeds uint8 images to a FID that expects floats) becomes an error.
//!
//! Every evaluator takes (B, 3, H, W) float tensors with values in [0, 1].

use candle_core::{DType, Tensor};

use super::EvalError;

/// Slack for values produced by float arithmetic (e.g. a decoder's output clamped in f32).
const RANGE_SLACK: f32 = 1e-4;

pub fn validate(images: &Tensor) -> Result<(), EvalError> {
    let dims = images.dims();
    if dims.len() != 4 || dims[1] != 3 {
        return Err(EvalError::Images(format!("expected (batch, 3, height, width), got shape {dims:?}")));
    }
    if dims[0] == 0 || dims[2] < 2 || dims[3] < 2 {
        return Err(EvalError::Images(format!("empty or degenerate image batch {dims:?}")));
    }
    match images.dtype() {
        DType::F32 | DType::F64 | DType::BF16 | DType::F16 => {}
        DType::U8 => {
            return Err(EvalError::Images(
                "got uint8 images; evaluators take floats in [0, 1]: convert with x as f32 / 255 (feeding 0..255 integers is the classic silent FID error)".into(),
            ))
        }
        other => return Err(EvalError::Images(format!("got {other:?} images; evaluators take floats in [0, 1]"))),
    }
    let flat = images.flatten_all()?.to_dtype(DType::F32)?;
    let lo = flat.min(0)?.to_scalar::<f32>()?;
    let hi = flat.max(0)?.to_scalar::<f32>()?;
    if !lo.is_finite() || !hi.is_finite() {
        return Err(EvalError::NonFinite(format!("image values range over [{lo}, {hi}]")));
    }
    if hi > 1.0 + RANGE_SLACK {
        let hint = if hi > 2.0 { ": these look like 0..255 pixel values; divide by 255" } else { "" };
        return Err(EvalError::Images(format!("values up to {hi}, expected [0, 1]{hint}")));
    }
    if lo < -RANGE_SLACK {
        let hint = if lo >= -1.0 - RANGE_SLACK { ": these look like [-1, 1] model outputs; map them with (x + 1) / 2" } else { "" };
        return Err(EvalError::Images(format!("values down to {lo}, expected [0, 1]{hint}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn the_uint8_trap_and_other_mistakes_are_errors() {
        let dev = Device::Cpu;
        let ok = Tensor::full(0.5f32, (2, 3, 8, 8), &dev).unwrap();
        validate(&ok).unwrap();
        let u8s = Tensor::full(200u8, (2, 3, 8, 8), &dev).unwrap();
        assert!(validate(&u8s).unwrap_err().to_string().contains("uint8"));
        let big = Tensor::full(255f32, (2, 3, 8, 8), &dev).unwrap();
        assert!(validate(&big).unwrap_err().to_string().contains("divide by 255"));
        let neg = Tensor::full(-0.7f32, (2, 3, 8, 8), &dev).unwrap();
        assert!(validate(&neg).unwrap_err().to_string().contains("(x + 1) / 2"));
        let gray = Tensor::full(0.5f32, (2, 1, 8, 8), &dev).unwrap();
        assert!(validate(&gray).unwrap_err().to_string().contains("(batch, 3, height, width)"));
    }
}
