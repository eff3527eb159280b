//! Pure computation of a pod's status from what the node knows about its
//! containers. No I/O: the pod worker gathers [`ContainerView`]s and posts
//! whatever this returns when it differs from what it posted last.

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

/// One container's runtime state, as the node sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum RunState {
    /// Not running; `reason` is a kubelet waiting reason.
    Waiting {
        reason: String,
        message: String,
    },
    Running {
        started_at: Timestamp,
    },
    Terminated(Exit),
}

/// How a container process ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Exit {
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub reason: String,
    pub started_at: Option<Timestamp>,
    pub finished_at: Timestamp,
}

/// What the status needs to know about one container.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerView {
    pub name: String,
    pub image: String,
    pub state: RunState,
    pub last: Option<Exit>,
    pub ready: bool,
    pub restart_count: i32,
    /// The container ran at least once (it left Pending).
    pub ever_started: bool,
    /// A restart is coming (restart policy says so).
    pub will_restart: bool,
    pub pid: Option<u32>,
}

fn exit_state(e: &Exit) -> ContainerState {
    ContainerState {
        terminated: Some(ContainerStateTerminated {
            exit_code: e.exit_code,
            signal: e.signal,
            reason: Some(e.reason.clone()),
            started_at: e.started_at.map(Time),
            finished_at: Some(Time(e.finished_at)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn condition(
    kind: &str,
    ok: bool,
    reason: Option<&str>,
    previous: Option<&PodStatus>,
    now: Timestamp,
) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    // Keep the transition time while the condition's value holds.
    let last = previous
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == kind))
        .filter(|c| c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    PodCondition {
        type_: kind.to_string(),
        status: status.to_string(),
        reason: reason.map(str::to_string),
        last_transition_time: Some(last),
        ..Default::default()
    }
}

/// The pod phase for these containers (kubelet rules, simplified to
/// regular containers).
pub fn phase(containers: &[ContainerView]) -> &'static str {
    if containers.iter().any(|c| !c.ever_started) {
        return "Pending";
    }
    let all_done = containers
        .iter()
        .all(|c| matches!(c.state, RunState::Terminated(_)) && !c.will_restart);
    if all_done {
        let all_ok = containers
            .iter()
            .all(|c| matches!(&c.state, RunState::Terminated(e) if e.exit_code == 0));
        return if all_ok { "Succeeded" } else { "Failed" };
    }
    "Running"
}

/// The full status to post for `pod`.
pub fn pod_status(
    pod: &Pod,
    containers: &[ContainerView],
    pod_ip: Option<&str>,
    start_time: Timestamp,
    now: Timestamp,
) -> PodStatus {
    let previous = pod.status.as_ref();
    let all_ready = !containers.is_empty() && containers.iter().all(|c| c.ready);
    let not_ready: Vec<&str> = containers
        .iter()
        .filter(|c| !c.ready)
        .map(|c| c.name.as_str())
        .collect();
    let not_ready_reason = (!all_ready).then_some("ContainersNotReady");
    let phase = phase(containers);
    let statuses = containers
        .iter()
        .map(|c| ContainerStatus {
            name: c.name.clone(),
            image: c.image.clone(),
            image_id: format!("local://{}", c.image),
            container_id: c.pid.map(|p| format!("local://{p}")),
            ready: c.ready,
            started: Some(matches!(c.state, RunState::Running { .. })),
            restart_count: c.restart_count,
            state: Some(match &c.state {
                RunState::Waiting { reason, message } => ContainerState {
                    waiting: Some(ContainerStateWaiting {
                        reason: Some(reason.clone()),
                        message: Some(message.clone()),
                    }),
                    ..Default::default()
                },
                RunState::Running { started_at } => ContainerState {
                    running: Some(ContainerStateRunning {
                        started_at: Some(Time(*started_at)),
                    }),
                    ..Default::default()
                },
                RunState::Terminated(e) => exit_state(e),
            }),
            last_state: c.last.as_ref().map(exit_state),
            ..Default::default()
        })
        .collect();
    let scheduled = previous
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled").cloned())
        .unwrap_or_else(|| condition("PodScheduled", true, None, None, now));
    let mut ready_cond = condition("Ready", all_ready, not_ready_reason, previous, now);
    let mut cr_cond = condition(
        "ContainersReady",
        all_ready,
        not_ready_reason,
        previous,
        now,
    );
    if !all_ready {
        let msg = format!("containers with unready status: [{}]", not_ready.join(" "));
        ready_cond.message = Some(msg.clone());
        cr_cond.message = Some(msg);
    }
    let host = "127.0.0.1".to_string();
    PodStatus {
        phase: Some(phase.to_string()),
        conditions: Some(vec![
            condition(
                "PodReadyToStartContainers",
                pod_ip.is_some(),
                None,
                previous,
                now,
            ),
            condition("Initialized", true, None, previous, now),
            ready_cond,
            cr_cond,
            scheduled,
        ]),
        container_statuses: Some(statuses),
        pod_ip: pod_ip.map(str::to_string),
        pod_ips: pod_ip.map(|ip| vec![PodIP { ip: ip.to_string() }]),
        host_ip: Some(host.clone()),
        host_ips: Some(vec![HostIP { ip: host }]),
        start_time: Some(Time(start_time)),
        qos_class: previous.and_then(|s| s.qos_class.clone()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(state: RunState, ready: bool, ever: bool) -> ContainerView {
        ContainerView {
            name: "c".into(),
            image: "img".into(),
            state,
            last: None,
            ready,
            restart_count: 0,
            ever_started: ever,
            will_restart: false,
            pid: None,
        }
    }

    fn exit(code: i32) -> RunState {
        RunState::Terminated(Exit {
            exit_code: code,
            signal: None,
            reason: if code == 0 { "Completed" } else { "Error" }.into(),
            started_at: None,
            finished_at: Timestamp::now(),
        })
    }

    #[test]
    fn image_errors_keep_the_pod_pending() {
        let w = RunState::Waiting {
            reason: "ErrImagePull".into(),
            message: "no".into(),
        };
        assert_eq!(phase(&[view(w, false, false)]), "Pending");
    }

    #[test]
    fn phases_follow_container_exits() {
        let now = Timestamp::now();
        assert_eq!(
            phase(&[view(RunState::Running { started_at: now }, true, true)]),
            "Running"
        );
        assert_eq!(phase(&[view(exit(0), false, true)]), "Succeeded");
        assert_eq!(phase(&[view(exit(1), false, true)]), "Failed");
        let mut restarting = view(exit(1), false, true);
        restarting.will_restart = true;
        assert_eq!(phase(&[restarting]), "Running");
    }

    #[test]
    fn ready_condition_tracks_containers_and_keeps_transition_time() {
        let pod = Pod::default();
        let t0 = Timestamp::from_second(1_000).expect("ts");
        let running = RunState::Running { started_at: t0 };
        let s1 = pod_status(
            &pod,
            &[view(running.clone(), true, true)],
            Some("127.16.0.2"),
            t0,
            t0,
        );
        let ready = |s: &PodStatus| {
            s.conditions
                .as_ref()
                .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready").cloned())
                .expect("ready condition")
        };
        assert_eq!(ready(&s1).status, "True");
        let pod2 = Pod {
            status: Some(s1.clone()),
            ..Default::default()
        };
        let t1 = Timestamp::from_second(2_000).expect("ts");
        let s2 = pod_status(
            &pod2,
            &[view(running.clone(), true, true)],
            Some("127.16.0.2"),
            t0,
            t1,
        );
        assert_eq!(ready(&s2).last_transition_time, Some(Time(t0)));
        let s3 = pod_status(
            &pod2,
            &[view(running, false, true)],
            Some("127.16.0.2"),
            t0,
            t1,
        );
        assert_eq!(ready(&s3).status, "False");
        assert_eq!(ready(&s3).last_transition_time, Some(Time(t1)));
    }
}
