//! How the CLI reaches a coordinator: the token of a command (`--token-file`, else the
//! environment) and a channel whose calls carry it (TLS for `https://` URLs). Below every
//! client command, none of which it knows.

use ablate_proto::auth::Authed;

/// The token of a command: `--token-file`, else the environment (`ablate_proto::auth::client_token`).
pub fn token_from(file: Option<&std::path::Path>) -> anyhow::Result<Option<String>> {
    match file {
        Some(f) => Ok(Some(ablate_proto::auth::read_token_file(f).map_err(anyhow::Error::msg)?)),
        None => ablate_proto::auth::client_token().map_err(anyhow::Error::msg),
    }
}

/// A channel to the first coordinator of `spec` that answers, its calls carrying `token`.
pub async fn channel(spec: &str, token: Option<&str>) -> anyhow::Result<Authed> {
    let (_, channel) = ablate_proto::connect_authed(spec, token).await.map_err(|e| anyhow::anyhow!("cannot reach the coordinator ({e}); start one with `ablate coordinator`"))?;
    Ok(channel)
}
