//! Observed children as plain values.
//!
//! The decision code never looks at `Pod` or `Deployment` objects: this
//! module turns them into [`PodView`] and [`DeploymentView`] (what revision,
//! ready or not and since when, in rotation or not, terminating or not, and
//! why a pod is stuck, in the words the kubelet used), so rollout, pool,
//! status and write-plan logic can be tested with small builders. The
//! stored status is observed too: it holds the rollout's memory.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::jiff::Timestamp;

use crate::children::applied_hash;
use crate::crd::{labels, InferenceServiceStatus};
use crate::pool::Rotation;
use crate::route::RouteView;

/// Container waiting reasons that mean the pod will not become ready
/// without a change (as opposed to `ContainerCreating`, `PodInitializing`).
const STUCK_WAITING: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CrashLoopBackOff",
    "CreateContainerError",
    "CreateContainerConfigError",
    "RunContainerError",
];

/// Why a pod cannot serve, as the kubelet or scheduler said it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodProblem {
    /// A stable reason string (`Unschedulable`, `ErrImagePull`, ...).
    pub reason: String,
    /// The human message.
    pub message: String,
}

/// A pod of some revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodView {
    /// Pod name.
    pub name: String,
    /// `serving.steward.dev/revision` label.
    pub revision: String,
    /// `serving.steward.dev/rotation` label; `None` when missing or unknown.
    pub rotation: Option<Rotation>,
    /// The Ready condition is true.
    pub ready: bool,
    /// When the Ready condition last turned true (the kubelet's clock).
    pub ready_since: Option<Timestamp>,
    /// Has a deletion timestamp.
    pub terminating: bool,
    /// Why it is stuck, if it is.
    pub problem: Option<PodProblem>,
    /// When it was labelled draining (its `serving.steward.dev/draining-since`
    /// annotation), if it was and the time parses.
    pub draining_since: Option<Timestamp>,
}

/// A revision's Deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeploymentView {
    /// `serving.steward.dev/revision` label.
    pub revision: String,
    /// `spec.replicas`.
    pub replicas: i32,
    /// The [`crate::children::APPLIED_HASH`] annotation.
    pub applied_hash: Option<String>,
    /// `metadata.creationTimestamp`; orders retired revisions (none sorts
    /// first, as the oldest).
    pub created: Option<Timestamp>,
    /// The message of a `Progressing=False, ProgressDeadlineExceeded` condition.
    pub deadline_exceeded: Option<String>,
}

/// The Service, when it exists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceView {
    /// The [`crate::children::APPLIED_HASH`] annotation (none on a Service
    /// someone else wrote).
    pub applied_hash: Option<String>,
}

/// Everything observed about one InferenceService.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    /// Deployments by revision.
    pub deployments: BTreeMap<String, DeploymentView>,
    /// Pods of every revision, sorted by name.
    pub pods: Vec<PodView>,
    /// The Service; `None` when it is missing.
    pub service: Option<ServiceView>,
    /// The revisions' own Services (this object's), by revision.
    pub revision_services: BTreeMap<String, ServiceView>,
    /// The HTTPRoute named like the object, where the Gateway API is served.
    pub route: RouteView,
    /// The status as stored: the rollout's and the autoscaler's memory.
    pub status: InferenceServiceStatus,
}

impl Observed {
    /// Builds the view from the children in the stores and the stored
    /// status. Objects without a revision label are ignored (not ours).
    pub fn from_objects<'a>(
        deployments: impl IntoIterator<Item = &'a Deployment>,
        pods: impl IntoIterator<Item = &'a Pod>,
        service: Option<&Service>,
        status: Option<&InferenceServiceStatus>,
    ) -> Self {
        let deployments = deployments
            .into_iter()
            .filter_map(deployment_view)
            .map(|d| (d.revision.clone(), d))
            .collect();
        let mut pods: Vec<PodView> = pods.into_iter().filter_map(pod_view).collect();
        pods.sort_by(|a, b| a.name.cmp(&b.name));
        let service = service.map(|s| ServiceView {
            applied_hash: applied_hash(&s.metadata).map(str::to_owned),
        });
        Self {
            deployments,
            pods,
            service,
            revision_services: BTreeMap::new(),
            route: RouteView::Unavailable,
            status: status.cloned().unwrap_or_default(),
        }
    }

    /// Adds the revisions' Services (those with a revision label; the
    /// caller passes only this object's).
    pub fn with_revision_services<'a>(
        mut self,
        services: impl IntoIterator<Item = &'a Service>,
    ) -> Self {
        self.revision_services = services
            .into_iter()
            .filter_map(|s| {
                let revision = label(&s.metadata, labels::REVISION)?.to_owned();
                let view = ServiceView {
                    applied_hash: applied_hash(&s.metadata).map(str::to_owned),
                };
                Some((revision, view))
            })
            .collect();
        self
    }

    /// Pods of one revision.
    pub fn pods_of<'a>(&'a self, revision: &'a str) -> impl Iterator<Item = &'a PodView> + 'a {
        self.pods.iter().filter(move |p| p.revision == revision)
    }

    /// Ready, non-terminating pods of one revision.
    pub fn ready_of(&self, revision: &str) -> i32 {
        count(self.pods_of(revision).filter(|p| p.ready && !p.terminating))
    }

    /// Pods of one revision that still exist, terminating ones included.
    pub fn existing_of(&self, revision: &str) -> i32 {
        count(self.pods_of(revision))
    }
}

/// Counts into the i32 Kubernetes uses for replica numbers.
pub fn count<T>(it: impl Iterator<Item = T>) -> i32 {
    i32::try_from(it.count()).unwrap_or(i32::MAX)
}

fn label<'a>(
    meta: &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    key: &str,
) -> Option<&'a str> {
    meta.labels.as_ref()?.get(key).map(String::as_str)
}

fn deployment_view(d: &Deployment) -> Option<DeploymentView> {
    let revision = label(&d.metadata, labels::REVISION)?.to_owned();
    let spec = d.spec.as_ref();
    let deadline_exceeded = d
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| {
            cs.iter().find(|c| {
                c.type_ == "Progressing"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
            })
        })
        .map(|c| c.message.clone().unwrap_or_default());
    Some(DeploymentView {
        revision,
        replicas: spec.and_then(|s| s.replicas).unwrap_or(1),
        applied_hash: applied_hash(&d.metadata).map(str::to_owned),
        created: d.metadata.creation_timestamp.as_ref().map(|t| t.0),
        deadline_exceeded,
    })
}

fn pod_view(p: &Pod) -> Option<PodView> {
    let revision = label(&p.metadata, labels::REVISION)?.to_owned();
    let rotation = label(&p.metadata, labels::ROTATION).and_then(Rotation::from_label);
    let status = p.status.as_ref();
    let conditions = status.and_then(|s| s.conditions.as_deref()).unwrap_or(&[]);
    let ready_cond = conditions
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True");
    let ready = ready_cond.is_some();
    Some(PodView {
        name: p.metadata.name.clone().unwrap_or_default(),
        revision,
        rotation,
        ready,
        ready_since: ready_cond.and_then(|c| c.last_transition_time.as_ref().map(|t| t.0)),
        terminating: p.metadata.deletion_timestamp.is_some(),
        problem: if ready { None } else { pod_problem(p) },
        draining_since: p
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(labels::DRAINING_SINCE))
            .and_then(|t| t.parse().ok()),
    })
}

/// The first reason a not-ready pod is stuck, scheduler first, then
/// containers in order.
pub fn pod_problem(p: &Pod) -> Option<PodProblem> {
    let status = p.status.as_ref()?;
    if let Some(c) = status.conditions.iter().flatten().find(|c| {
        c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
    }) {
        return Some(PodProblem {
            reason: "Unschedulable".into(),
            message: c.message.clone().unwrap_or_default(),
        });
    }
    for cs in status.container_statuses.iter().flatten() {
        let last_failure = cs
            .last_state
            .as_ref()
            .and_then(|l| l.terminated.as_ref())
            .filter(|t| t.exit_code != 0);
        // One stable message for a crash loop, whether the container is
        // waiting out its back-off or briefly running again, so status does
        // not flap (and get rewritten) with every restart.
        let crash_loop = |code: i32| PodProblem {
            reason: "CrashLoopBackOff".into(),
            message: format!(
                "container {} keeps failing (last exit code {code})",
                cs.name
            ),
        };
        let Some(state) = &cs.state else { continue };
        if let Some(w) = &state.waiting {
            let reason = w.reason.clone().unwrap_or_default();
            if reason == "CrashLoopBackOff" {
                return Some(crash_loop(last_failure.map_or(0, |t| t.exit_code)));
            }
            if STUCK_WAITING.contains(&reason.as_str()) {
                return Some(PodProblem {
                    reason,
                    message: w.message.clone().unwrap_or_default(),
                });
            }
        }
        if state.running.is_some() && !cs.ready && cs.restart_count > 0 {
            if let Some(t) = last_failure {
                return Some(crash_loop(t.exit_code));
            }
        }
    }
    if status.phase.as_deref() == Some("Failed") {
        return Some(PodProblem {
            reason: status.reason.clone().unwrap_or_else(|| "PodFailed".into()),
            message: status.message.clone().unwrap_or_default(),
        });
    }
    None
}

#[cfg(test)]
pub(crate) mod build {
    //! Small builders for views, shared by the decision tests.
    use super::*;

    /// A serving pod view, ready (since long ago) or not.
    pub fn pod(name: &str, revision: &str, ready: bool) -> PodView {
        PodView {
            name: name.into(),
            revision: revision.into(),
            rotation: Some(Rotation::Serving),
            ready,
            ready_since: ready.then_some(Timestamp::UNIX_EPOCH),
            terminating: false,
            problem: None,
            draining_since: None,
        }
    }

    /// A deployment view created `created` seconds after the epoch.
    pub fn deployment(revision: &str, replicas: i32, created: i64) -> DeploymentView {
        DeploymentView {
            revision: revision.into(),
            replicas,
            applied_hash: Some("h".into()),
            created: Timestamp::from_second(created).ok(),
            deadline_exceeded: None,
        }
    }

    /// An observed set with a Service and an empty stored status.
    pub fn observed(deployments: Vec<DeploymentView>, pods: Vec<PodView>) -> Observed {
        Observed {
            deployments: deployments
                .into_iter()
                .map(|d| (d.revision.clone(), d))
                .collect(),
            pods,
            service: Some(ServiceView {
                applied_hash: Some("s".into()),
            }),
            revision_services: BTreeMap::new(),
            route: RouteView::Unavailable,
            status: InferenceServiceStatus::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus,
        PodCondition, PodStatus,
    };

    fn pod_with(status: PodStatus) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some("p".into());
        p.metadata.labels = Some(
            [(labels::REVISION.to_owned(), "r1".to_owned())]
                .into_iter()
                .collect(),
        );
        p.status = Some(status);
        p
    }

    #[test]
    fn unschedulable_pod_reports_the_scheduler_message() {
        let p = pod_with(PodStatus {
            conditions: Some(vec![PodCondition {
                type_: "PodScheduled".into(),
                status: "False".into(),
                reason: Some("Unschedulable".into()),
                message: Some("0/1 nodes are available: 1 Insufficient nvidia.com/gpu.".into()),
                ..PodCondition::default()
            }]),
            ..PodStatus::default()
        });
        let v = pod_view(&p).unwrap();
        let problem = v.problem.unwrap();
        assert_eq!(problem.reason, "Unschedulable");
        assert!(problem.message.contains("nvidia.com/gpu"));
    }

    #[test]
    fn crash_loop_reports_last_exit_code() {
        let p = pod_with(PodStatus {
            container_statuses: Some(vec![ContainerStatus {
                name: "engine".into(),
                state: Some(ContainerState {
                    waiting: Some(ContainerStateWaiting {
                        reason: Some("CrashLoopBackOff".into()),
                        message: Some("back-off 10s".into()),
                    }),
                    ..ContainerState::default()
                }),
                last_state: Some(ContainerState {
                    terminated: Some(ContainerStateTerminated {
                        exit_code: 2,
                        ..ContainerStateTerminated::default()
                    }),
                    ..ContainerState::default()
                }),
                ..ContainerStatus::default()
            }]),
            ..PodStatus::default()
        });
        let problem = pod_view(&p).unwrap().problem.unwrap();
        assert_eq!(problem.reason, "CrashLoopBackOff");
        assert!(
            problem.message.contains("last exit code 2"),
            "{}",
            problem.message
        );
    }

    #[test]
    fn creating_container_is_not_a_problem() {
        let p = pod_with(PodStatus {
            container_statuses: Some(vec![ContainerStatus {
                name: "engine".into(),
                state: Some(ContainerState {
                    waiting: Some(ContainerStateWaiting {
                        reason: Some("ContainerCreating".into()),
                        message: None,
                    }),
                    ..ContainerState::default()
                }),
                ..ContainerStatus::default()
            }]),
            ..PodStatus::default()
        });
        assert_eq!(pod_view(&p).unwrap().problem, None);
    }

    #[test]
    fn objects_without_a_revision_label_are_ignored() {
        let mut p = Pod::default();
        p.metadata.name = Some("stranger".into());
        let o = Observed::from_objects([], [&p], None, None);
        assert!(o.pods.is_empty());
        assert_eq!(o.service, None);
    }
}
