//! Routes from a file instead of the API server, for running the router
//! without a cluster (benchmarks, local demos). The file is read once at
//! start-up; the same index and routing code then run unchanged.
//!
//! ```json
//! {"services": [{"namespace": "bench", "name": "stub", "model": "bench",
//!                "traffic": [{"revision": "r1", "weight": 100}]}],
//!  "endpoints": [{"namespace": "bench", "service": "stub", "revision": "r1",
//!                 "addr": "127.0.0.1:9001"}]}
//! ```

use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

use crate::index::{ObjKey, PodView, ServiceView, SharedIndex, TrafficWeight};

/// Why the file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StaticRoutesError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing static routes: {0}")]
    Parse(#[source] serde_json::Error),
}

#[derive(Deserialize)]
struct File {
    services: Vec<Service>,
    endpoints: Vec<Endpoint>,
}

#[derive(Deserialize)]
struct Service {
    namespace: String,
    name: String,
    model: String,
    traffic: Vec<Traffic>,
}

#[derive(Deserialize)]
struct Traffic {
    revision: String,
    weight: u32,
}

#[derive(Deserialize)]
struct Endpoint {
    namespace: String,
    service: String,
    revision: String,
    addr: SocketAddr,
}

/// Parses the file's JSON into index views.
pub fn parse(text: &str) -> Result<(Vec<ServiceView>, Vec<PodView>), StaticRoutesError> {
    let f: File = serde_json::from_str(text).map_err(StaticRoutesError::Parse)?;
    let services = f
        .services
        .into_iter()
        .map(|s| ServiceView {
            key: ObjKey::new(s.namespace, s.name),
            // No creation time: static claims sort after real ones, then by namespace/name.
            created: None,
            model: s.model,
            traffic: s
                .traffic
                .into_iter()
                .map(|t| TrafficWeight {
                    revision: t.revision,
                    weight: t.weight,
                })
                .collect(),
            tenant_limits: None,
        })
        .collect();
    let pods = f
        .endpoints
        .into_iter()
        .map(|e| PodView {
            key: ObjKey::new(
                e.namespace.clone(),
                format!("{}-{}-{}", e.service, e.revision, e.addr),
            ),
            uid: format!(
                "static:{}/{}/{}/{}",
                e.namespace, e.service, e.revision, e.addr
            ),
            service: e.service,
            revision: e.revision,
            serving: true,
            ready: true,
            terminating: false,
            addr: Some(e.addr),
        })
        .collect();
    Ok((services, pods))
}

/// Loads `path` into `index`.
pub fn load(path: &Path, index: &SharedIndex) -> Result<(), StaticRoutesError> {
    let text = std::fs::read_to_string(path).map_err(|source| StaticRoutesError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let (services, pods) = parse(&text)?;
    index.reset_services(services);
    index.reset_pods(pods);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_file_builds_a_routing_table() {
        let (s, p) = parse(
            r#"{"services":[{"namespace":"b","name":"stub","model":"bench","traffic":[{"revision":"r1","weight":100}]}],
                "endpoints":[{"namespace":"b","service":"stub","revision":"r1","addr":"127.0.0.1:9001"}]}"#,
        )
        .expect("valid");
        let idx = SharedIndex::new();
        idx.reset_services(s);
        idx.reset_pods(p);
        assert_eq!(
            idx.table()
                .lookup("bench")
                .map(|r| r.revisions[0].endpoints.len()),
            Some(1)
        );
    }

    #[test]
    fn bad_static_file_is_an_error() {
        assert!(parse("{}").is_err());
    }
}
