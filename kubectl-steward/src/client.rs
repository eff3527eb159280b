//! The plugin's I/O: a client from the kubeconfig (as kubectl finds it),
//! reads, the merge patch, the watch, and errors a person can act on.

use std::path::PathBuf;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Config};
use serde_json::Value;
use steward_operator::crd::{labels, InferenceService};

use crate::render::{PodLine, Pods, RolloutMemory};

/// Where to connect, as kubectl's flags say.
#[derive(Clone, Debug, Default)]
pub struct Target {
    /// `--kubeconfig`; else `$KUBECONFIG`, else `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// `--context`; else the kubeconfig's current context.
    pub context: Option<String>,
    /// `-n`; else the context's namespace, else `default`.
    pub namespace: Option<String>,
}

/// What can go wrong, worded for the person at the terminal.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// No usable kubeconfig.
    #[error("no usable kubeconfig: {0} (set KUBECONFIG or pass --kubeconfig)")]
    Kubeconfig(String),
    /// The object does not exist.
    #[error("inferenceservice {ns}/{name} not found")]
    NotFound {
        /// Namespace.
        ns: String,
        /// Name.
        name: String,
    },
    /// The CRD is not installed.
    #[error("this cluster does not know InferenceServices (is the steward CRD installed?)")]
    NoCrd,
    /// RBAC said no.
    #[error("no permission to {verb} {resource} in namespace {ns}: {message}")]
    Forbidden {
        /// `get`, `patch`, `list`, `watch`.
        verb: &'static str,
        /// The resource.
        resource: &'static str,
        /// Namespace.
        ns: String,
        /// The API server's message.
        message: String,
    },
    /// Not logged in.
    #[error(
        "the cluster refused the credentials ({0}); log in again or check the kubeconfig's user"
    )]
    Unauthorized(String),
    /// No connection.
    #[error("cannot reach the cluster at {url}: {cause}")]
    Unreachable {
        /// The API server address.
        url: String,
        /// Why.
        cause: String,
    },
    /// Any other API answer.
    #[error("{verb} {ns}/{name}: {message}")]
    Api {
        /// What was tried.
        verb: &'static str,
        /// Namespace.
        ns: String,
        /// Name.
        name: String,
        /// The API server's message.
        message: String,
    },
    /// The command does not apply to the object as it is.
    #[error(transparent)]
    NotApplicable(#[from] crate::actions::NotApplicable),
    /// The object could not be read as an InferenceService.
    #[error("inferenceservice {ns}/{name} is not readable: {message}")]
    Malformed {
        /// Namespace.
        ns: String,
        /// Name.
        name: String,
        /// The decode error.
        message: String,
    },
}

/// A connected client and the namespace to act in.
pub struct Session {
    /// The client.
    pub client: Client,
    /// The namespace.
    pub namespace: String,
    /// The API server address, for error messages.
    pub url: String,
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = inner.source();
    }
    s
}

impl Session {
    /// Connects as kubectl would.
    pub async fn connect(t: &Target) -> Result<Self, CliError> {
        let kubeconfig = match &t.kubeconfig {
            Some(p) => Kubeconfig::read_from(p),
            None => Kubeconfig::read(),
        }
        .map_err(|e| CliError::Kubeconfig(chain(&e)))?;
        let opts = KubeConfigOptions {
            context: t.context.clone(),
            ..KubeConfigOptions::default()
        };
        let mut config = Config::from_custom_kubeconfig(kubeconfig, &opts)
            .await
            .map_err(|e| CliError::Kubeconfig(chain(&e)))?;
        config.connect_timeout = Some(Duration::from_secs(10));
        config.read_timeout = Some(Duration::from_secs(30));
        let url = config.cluster_url.to_string();
        let namespace = t
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let client = Client::try_from(config).map_err(|e| CliError::Kubeconfig(chain(&e)))?;
        Ok(Self {
            client,
            namespace,
            url,
        })
    }

    fn api(&self) -> Api<InferenceService> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn map_err(&self, verb: &'static str, name: &str, e: kube::Error) -> CliError {
        let ns = self.namespace.clone();
        match e {
            kube::Error::Api(s) if s.code == 404 => {
                if s.message.contains("could not find the requested resource") {
                    CliError::NoCrd
                } else {
                    CliError::NotFound {
                        ns,
                        name: name.to_string(),
                    }
                }
            }
            kube::Error::Api(s) if s.code == 403 => CliError::Forbidden {
                verb,
                resource: "inferenceservices",
                ns,
                message: s.message,
            },
            kube::Error::Api(s) if s.code == 401 => CliError::Unauthorized(s.message),
            kube::Error::Api(s) => CliError::Api {
                verb,
                ns,
                name: name.to_string(),
                message: format!("{} ({})", s.message, s.code),
            },
            kube::Error::SerdeError(e) => CliError::Malformed {
                ns,
                name: name.to_string(),
                message: e.to_string(),
            },
            other => CliError::Unreachable {
                url: self.url.clone(),
                cause: chain(&other),
            },
        }
    }

    /// The object, typed and raw (the raw form carries status fields the
    /// typed one may not know).
    pub async fn get(&self, name: &str) -> Result<(InferenceService, RolloutMemory), CliError> {
        let raw: Value = {
            let api: Api<kube::api::DynamicObject> = Api::namespaced_with(
                self.client.clone(),
                &self.namespace,
                &kube::api::ApiResource::erase::<InferenceService>(&()),
            );
            let o = api
                .get(name)
                .await
                .map_err(|e| self.map_err("get", name, e))?;
            serde_json::to_value(o).map_err(|e| CliError::Malformed {
                ns: self.namespace.clone(),
                name: name.to_string(),
                message: e.to_string(),
            })?
        };
        self.decode(name, raw)
    }

    fn decode(
        &self,
        name: &str,
        raw: Value,
    ) -> Result<(InferenceService, RolloutMemory), CliError> {
        let memory = RolloutMemory::from_object(&raw);
        let svc = serde_json::from_value(raw).map_err(|e| CliError::Malformed {
            ns: self.namespace.clone(),
            name: name.to_string(),
            message: e.to_string(),
        })?;
        Ok((svc, memory))
    }

    /// Sends a JSON merge patch (the same as `kubectl patch --type merge`).
    pub async fn patch(&self, name: &str, patch: &Value) -> Result<(), CliError> {
        self.api()
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map_err(|e| self.map_err("patch", name, e))?;
        Ok(())
    }

    /// The service's pods, or why they are not shown.
    pub async fn pods(&self, name: &str) -> Pods {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let lp = ListParams::default().labels(&format!("{}={name}", labels::SERVICE));
        match api.list(&lp).await {
            Ok(list) => {
                let mut pods: Vec<PodLine> = list.items.iter().map(PodLine::from_pod).collect();
                pods.sort_by(|a, b| a.name.cmp(&b.name));
                Pods::Listed(pods)
            }
            Err(kube::Error::Api(s)) if s.code == 403 => {
                Pods::Unavailable("no permission to list pods".into())
            }
            Err(e) => Pods::Unavailable(chain(&e)),
        }
    }

    /// Calls `on_change` with the object after every change until it fails
    /// or `on_change` returns false. Pod changes are picked up by a 2 s tick.
    pub async fn watch<F>(&self, name: &str, mut on_change: F) -> Result<(), CliError>
    where
        F: FnMut(InferenceService, RolloutMemory, Pods) -> bool,
    {
        let (mut svc, mut mem) = self.get(name).await?;
        if !on_change(svc.clone(), mem.clone(), self.pods(name).await) {
            return Ok(());
        }
        let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let api: Api<kube::api::DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            &self.namespace,
            &kube::api::ApiResource::erase::<InferenceService>(&()),
        );
        let mut events = watcher(api, cfg)
            .default_backoff()
            .applied_objects()
            .boxed();
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            tokio::select! {
                ev = events.try_next() => match ev {
                    Ok(Some(o)) => {
                        let raw = serde_json::to_value(o).unwrap_or_default();
                        (svc, mem) = self.decode(name, raw)?;
                    }
                    Ok(None) => return Ok(()),
                    // Refusals end the watch; anything else is retried by
                    // the back-off and the last state stays on screen.
                    Err(
                        watcher::Error::InitialListFailed(kube::Error::Api(s))
                        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
                        | watcher::Error::WatchFailed(kube::Error::Api(s)),
                    ) if matches!(s.code, 401 | 403 | 404) => {
                        return Err(self.map_err("watch", name, kube::Error::Api(s)))
                    }
                    Err(_) => continue,
                },
                _ = tick.tick() => {}
            }
            if !on_change(svc.clone(), mem.clone(), self.pods(name).await) {
                return Ok(());
            }
        }
    }
}
