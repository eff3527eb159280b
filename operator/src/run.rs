//! Running the whole operator: HTTP endpoints, leader election, then the
//! controller until shutdown or loss of the lease. `main` parses flags and
//! calls [`run`]; tests call it too, with their own client and address.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures::Future;
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use tracing::{info, warn};

use crate::controller::{self, OperatorConfig};
use crate::http::{self, HttpState};
use crate::leader::{Elector, LeaseConfig};
use crate::metrics::Metrics;

/// Errors that end the operator.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The HTTP endpoints could not bind.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Another replica took over, or the election settings are unsafe.
    #[error(transparent)]
    LostLease(#[from] crate::leader::LeaderError),
}

/// Everything [`run`] needs.
pub struct RunConfig {
    /// The controller settings.
    pub operator: OperatorConfig,
    /// Where the HTTP endpoints listen.
    pub listen: SocketAddr,
    /// Leader election, or `None` to act at once (one replica only).
    pub lease: Option<(String, LeaseConfig)>,
}

/// Runs until `shutdown` resolves (Ok) or the lease is lost (Err).
pub async fn run(
    client: Client,
    cfg: RunConfig,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), RunError> {
    let ready = Arc::new(AtomicBool::new(false));
    let (addr, http_task) = http::serve(
        cfg.listen,
        HttpState {
            metrics: metrics.clone(),
            ready: ready.clone(),
        },
    )
    .await
    .map_err(|source| RunError::Bind {
        addr: cfg.listen,
        source,
    })?;
    info!(%addr, "serving /healthz /readyz /metrics");
    ready.store(true, Ordering::Relaxed);

    let shutdown = futures::FutureExt::shared(Box::pin(shutdown));
    let result = match cfg.lease {
        None => {
            metrics.set_leader(true);
            controller::run(client, cfg.operator, metrics.clone(), shutdown).await;
            Ok(())
        }
        Some((namespace, lease)) => {
            let elector =
                match Elector::new(Api::<Lease>::namespaced(client.clone(), &namespace), lease) {
                    Ok(e) => e,
                    Err(e) => {
                        http_task.abort();
                        return Err(e.into());
                    }
                };
            let tenure = tokio::select! {
                t = elector.acquire() => t,
                () = shutdown.clone() => {
                    http_task.abort();
                    return Ok(());
                }
            };
            metrics.set_leader(true);
            // hold() returns at the latest when the tenure ends; dropping
            // the controller future then stops every reconcile at once.
            let lost = tokio::select! {
                () = controller::run(client, cfg.operator, metrics.clone(), shutdown) => None,
                e = elector.hold(tenure) => Some(e),
            };
            metrics.set_leader(false);
            match lost {
                None => Ok(()),
                Some(e) => {
                    warn!(error = %e, "stopping: leadership lost");
                    Err(e.into())
                }
            }
        }
    };
    http_task.abort();
    result
}
