//! The coordinator calls the sweep commands share: a job client with the environment's
//! token, and a sweep's jobs.

use ablate_proto::auth::Authed;
use ablate_proto::v1::{self, job_service_client::JobServiceClient};

/// A job client whose calls carry the token of the environment (`ABLATE_TOKEN`, `ABLATE_TOKEN_FILE`).
pub async fn client(url: &str) -> anyhow::Result<JobServiceClient<Authed>> {
    let token = crate::conn::token_from(None)?;
    Ok(JobServiceClient::new(crate::conn::channel(url, token.as_deref()).await?).max_decoding_message_size(ablate_proto::MAX_MESSAGE_BYTES))
}

/// Every job of sweep `id`, in submission order.
pub async fn sweep_jobs(c: &mut JobServiceClient<Authed>, id: &str) -> anyhow::Result<Vec<v1::Job>> {
    Ok(c.get_sweep_results(v1::GetSweepResultsRequest { sweep: id.into() }).await.map_err(|e| anyhow::anyhow!("{}", e.message()))?.into_inner().jobs)
}
