//! `ablate token create|list|revoke`: the coordinator's access tokens (an admin's token is
//! needed; the coordinator made the first one at its first start).

use ablate_proto::v1::{self, admin_service_client::AdminServiceClient};
use clap::Subcommand;
use serde_json::json;
use std::path::PathBuf;

use crate::conn::{channel, token_from};
use crate::jobs_cmd::{Conn, Output};

#[derive(Subcommand)]
pub enum TokenCmd {
    /// A new token, printed once (or written to --out, mode 0600): the coordinator keeps
    /// only its hash.
    Create {
        /// Who holds it: recorded as the owner of the jobs it submits.
        name: String,
        /// admin, researcher, viewer or worker.
        #[arg(long)]
        role: String,
        /// Worker tokens: the worker id it acts as (`ablate worker --id`).
        #[arg(long)]
        worker_id: Option<String>,
        /// Write the token to this file (mode 0600) instead of printing it.
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Every token: id, name, role, worker, creation, revoked (never the secret).
    List {
        #[command(flatten)]
        conn: Conn,
    },
    /// Revoke a token by its id (`token list`): refused from its next call on.
    Revoke {
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
}

fn info_json(t: &v1::TokenInfo) -> serde_json::Value {
    json!({"id": t.id, "name": t.name, "role": t.role, "worker_id": t.worker_id, "created_unix_ms": t.created_unix_ms, "created_by": t.created_by, "revoked": t.revoked})
}

fn info_line(t: &v1::TokenInfo) -> String {
    let worker = if t.worker_id.is_empty() { String::new() } else { format!(" as worker {}", t.worker_id) };
    format!("{}  {:<24} {:<10}{worker}{}", t.id, t.name, t.role, if t.revoked { "  REVOKED" } else { "" })
}

pub fn token(cmd: TokenCmd) -> anyhow::Result<()> {
    let conn = match &cmd {
        TokenCmd::Create { conn, .. } | TokenCmd::List { conn } | TokenCmd::Revoke { conn, .. } => conn,
    };
    let auth = token_from(conn.token_file.as_deref())?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let mut c = AdminServiceClient::new(channel(&conn.coordinator, auth.as_deref()).await?);
        let status = |s: tonic::Status| anyhow::anyhow!("{}", s.message());
        match &cmd {
            TokenCmd::Create { name, role, worker_id, out, .. } => {
                let r = c.create_token(v1::CreateTokenRequest { name: name.clone(), role: role.clone(), worker_id: worker_id.clone().unwrap_or_default() }).await.map_err(status)?.into_inner();
                let info = r.info.unwrap_or_default();
                match out {
                    Some(path) => {
                        ablate_proto::auth::write_token_file(path, &r.token).map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
                        eprintln!("token {} for {} (role {}) written to {}", info.id, info.name, info.role, path.display());
                    }
                    None => {
                        eprintln!("token {} for {} (role {}); it is shown once, keep it:", info.id, info.name, info.role);
                        println!("{}", r.token);
                    }
                }
            }
            TokenCmd::List { .. } => {
                let tokens = c.list_tokens(v1::ListTokensRequest {}).await.map_err(status)?.into_inner().tokens;
                match conn.output {
                    Output::Json => println!("{}", serde_json::Value::Array(tokens.iter().map(info_json).collect())),
                    Output::Text => tokens.iter().for_each(|t| println!("{}", info_line(t))),
                }
            }
            TokenCmd::Revoke { id, .. } => {
                let t = c.revoke_token(v1::RevokeTokenRequest { id: id.clone() }).await.map_err(status)?.into_inner();
                println!("{}", info_line(&t));
            }
        }
        Ok(())
    })
}
