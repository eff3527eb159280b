//! Writes the `PrometheusRule` (`monitoring.coreos.com/v1`) of each
//! InferenceService, where the prometheus-operator CRDs exist.
//!
//! The API is probed (a one-item list) before first use and again every
//! five minutes while it is missing, so installing prometheus-operator later
//! needs no operator restart. The object is applied server-side only when
//! its content hash differs from the one this replica last applied (a
//! converged object costs no write; a new leader re-applies once).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use kube::Client;
use sha2::{Digest, Sha256};
use tracing::{debug, info};

use crate::metrics::Metrics;
use crate::rules::{prometheus_rule, RuleFile};

const REPROBE: Duration = Duration::from_secs(300);

/// The PrometheusRule kind.
pub fn resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "PrometheusRule"),
        "prometheusrules",
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Probe {
    Unknown,
    Present,
    Missing(Instant),
}

/// Applies PrometheusRules, remembering what it applied.
pub struct RuleWriter {
    enabled: bool,
    probe: Mutex<Probe>,
    applied: Mutex<HashMap<(String, String), String>>,
}

impl RuleWriter {
    /// `enabled`: the operator may write PrometheusRules at all.
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            probe: Mutex::new(Probe::Unknown),
            applied: Mutex::new(HashMap::new()),
        }
    }

    async fn available(&self, client: &Client) -> bool {
        if !self.enabled {
            return false;
        }
        let now = Instant::now();
        let current = self.probe.lock().map(|p| *p).unwrap_or(Probe::Unknown);
        match current {
            Probe::Present => return true,
            Probe::Missing(at) if now.duration_since(at) < REPROBE => return false,
            _ => {}
        }
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource());
        let found = match api.list(&ListParams::default().limit(1)).await {
            Ok(_) => true,
            Err(kube::Error::Api(e)) if e.code == 404 => false,
            // Forbidden or a transient error: try again next time.
            Err(e) => {
                debug!(error = %e, "probing PrometheusRule");
                return false;
            }
        };
        if found != (current == Probe::Present) {
            info!(found, "prometheus-operator PrometheusRule API probed");
        }
        if let Ok(mut p) = self.probe.lock() {
            *p = if found {
                Probe::Present
            } else {
                Probe::Missing(now)
            };
        }
        found
    }

    /// Applies the PrometheusRule of one InferenceService when the API
    /// exists and its content changed. Returns whether it wrote.
    pub async fn sync(
        &self,
        client: &Client,
        metrics: &Metrics,
        target: RuleTarget<'_>,
    ) -> Result<bool, kube::Error> {
        if !self.available(client).await {
            return Ok(false);
        }
        let obj = prometheus_rule(target.name, target.namespace, target.owner, target.file);
        let text = serde_json::to_string(&obj).unwrap_or_default();
        let hash = hex::encode(&Sha256::digest(text.as_bytes())[..8]);
        let key = (target.namespace.to_string(), target.name.to_string());
        if self.applied.lock().ok().and_then(|m| m.get(&key).cloned()) == Some(hash.clone()) {
            return Ok(false);
        }
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), target.namespace, &resource());
        let name = format!("{}-slo", target.name);
        api.patch(
            &name,
            &PatchParams::apply(super::FIELD_MANAGER).force(),
            &Patch::Apply(&obj),
        )
        .await?;
        metrics.write("PrometheusRule", "apply");
        if let Ok(mut m) = self.applied.lock() {
            m.insert(key, hash);
        }
        Ok(true)
    }
}

/// What [`RuleWriter::sync`] writes.
#[derive(Clone, Copy, Debug)]
pub struct RuleTarget<'a> {
    /// The InferenceService's name.
    pub name: &'a str,
    /// Its namespace.
    pub namespace: &'a str,
    /// Its owner reference (the rule goes with it).
    pub owner: &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
    /// The rules.
    pub file: &'a RuleFile,
}
