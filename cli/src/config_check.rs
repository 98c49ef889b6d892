//! The coordinator's check of every submitted training config: the trainer's own parse and
//! file-free validation, so a client other than this CLI (a script on the gRPC API) gets
//! `INVALID_ARGUMENT` naming the key at submission, not a failure on a worker later.

use ablate_coordinator::ConfigCheck;

pub fn trainer_config_check() -> ConfigCheck {
    ConfigCheck(std::sync::Arc::new(|text: &str| {
        use ablate_trainer::config::ConfigError;
        // the coordinator says "config_toml: " before it
        ablate_trainer::TrainConfig::from_toml_str_portable(text, "config_toml").map(|_| ()).map_err(|e| match e {
            ConfigError::Parse { message, .. } | ConfigError::Invalid(message) => message,
            other => other.to_string(),
        })
    }))
}
