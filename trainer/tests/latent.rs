//! Latent spaces and REPA-E.

mod common;

use ablate_trainer::latent::Latent;
use ablate_trainer::Trainer;
use candle_core::{Device, Tensor};
use common::{batches, small_config};

#[test]
fn shipped_autoencoders_reconstruct_scenes() {
    let dev = Device::Cpu;
    let x = ablate_trainer::latent::train::image_batch(99, 0, 16, &dev).unwrap();
    for (kind, channels, min_psnr) in [("ae-lean", 4, 24.0), ("ae-rich", 12, 26.0), ("ae-repa-e", 4, 20.0)] {
        let l = Latent::load(kind, None, None, &dev).unwrap();
        let z = l.encode(&x).unwrap();
        assert_eq!(z.dims(), &[16, channels, 16, 16]);
        // normalised latents have roughly unit scale
        let std = z.sqr().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
        assert!((0.5..2.0).contains(&std), "{kind}: latent rms {std}");
        let mse = (l.decode(&z).unwrap() - &x).unwrap().sqr().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap();
        let psnr = ablate_trainer::latent::train::psnr(mse as f64);
        assert!(psnr > min_psnr, "{kind}: PSNR {psnr:.1} dB");
    }
}

#[test]
fn missing_weights_name_the_path_and_the_fix() {
    let err = Latent::load("ae-lean", Some("/nonexistent/ae.safetensors"), None, &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("/nonexistent/ae.safetensors") && err.contains("ablate assets train-ae lean"), "{err}");
}

/// REPA-E: the autoencoder's gradient comes from REPA + reconstruction only. Changing the
/// diffusion loss (here: adding the contrastive term) must leave it untouched, while the
/// denoiser's gradient changes.
#[test]
fn repa_e_stops_the_diffusion_gradient_at_the_autoencoder() {
    let grads_for = |contrastive: f64| {
        let mut c = small_config();
        c.latent.kind = "ae-lean".into();
        c.latent.end_to_end = true;
        c.repa.enabled = true;
        c.objective.contrastive_lambda = contrastive;
        let t = Trainer::new(c, &Device::Cpu).unwrap();
        let b = &batches(&t.cfg, 1)[0];
        let (g, _) = t.compute_grads(b).unwrap();
        let get = |name: &str| -> Tensor {
            let p = t.params.iter().find(|p| p.name == name).unwrap_or_else(|| panic!("no {name}"));
            g.get(p.var.as_tensor()).unwrap_or_else(|| panic!("no grad for {name}")).clone()
        };
        (get("ae.enc.c1.weight"), get("denoiser.final.out.weight"))
    };
    let (ae_a, den_a) = grads_for(0.0);
    let (ae_b, den_b) = grads_for(0.5);
    let d_ae = (ae_a - ae_b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    let d_den = (den_a - den_b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(d_ae, 0.0, "diffusion loss leaked into the autoencoder");
    assert!(d_den > 0.0);
}
