//! `kubectl steward status`: one InferenceService drawn as a header and a
//! tree (revisions with their pods, alarms, the quality gate, conditions).
//!
//! Pure: the object, its pods and the clock in, text out, so the drawing is
//! pinned by a golden test (tests/golden/status.txt). Reads only what the
//! operator writes in status; fields a newer or older operator does not
//! write are left out rather than shown as zero.

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;
use steward_operator::crd::{
    AlarmState, InferenceService, QualityState, QualityStatus, RevisionRole,
};

/// Labels the operator puts on engine pods.
const LABEL_REVISION: &str = steward_operator::crd::labels::REVISION;
const LABEL_ROLE: &str = steward_operator::crd::labels::ROTATION;

/// One pod, as drawn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodLine {
    /// Pod name.
    pub name: String,
    /// Its revision label.
    pub revision: String,
    /// Its rotation label (`serving`, `warm`, `draining`), if any.
    pub role: Option<String>,
    /// Ready condition true.
    pub ready: bool,
    /// Has a deletion timestamp.
    pub terminating: bool,
}

impl PodLine {
    /// The drawn facts of a pod.
    pub fn from_pod(p: &Pod) -> Self {
        let labels = p.metadata.labels.clone().unwrap_or_default();
        let ready = p
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        Self {
            name: p.metadata.name.clone().unwrap_or_default(),
            revision: labels.get(LABEL_REVISION).cloned().unwrap_or_default(),
            role: labels.get(LABEL_ROLE).cloned(),
            ready,
            terminating: p.metadata.deletion_timestamp.is_some(),
        }
    }
}

/// The pods of the service, or why they could not be listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pods {
    /// Listed.
    Listed(Vec<PodLine>),
    /// Not listed (e.g. no permission); said once in the tree.
    Unavailable(String),
}

/// Rollout memory from `status.rollout`, read leniently from the raw
/// object so the plugin works with operators that do not write it yet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RolloutMemory {
    /// When the current step started.
    pub step_started_at: Option<DateTime<Utc>>,
    /// The revision last rolled back.
    pub rolled_back_revision: Option<String>,
}

impl RolloutMemory {
    /// Reads `status.rollout` of a raw object.
    pub fn from_object(raw: &Value) -> Self {
        let r = raw.pointer("/status/rollout");
        let s = |k: &str| {
            r.and_then(|r| r.get(k))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        Self {
            step_started_at: s("stepStartedAt")
                .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
                .map(|t| t.with_timezone(&Utc)),
            rolled_back_revision: s("rolledBackRevision").filter(|r| !r.is_empty()),
        }
    }
}

/// A node of the drawn tree.
struct Node {
    label: String,
    children: Vec<Node>,
}

impl Node {
    fn leaf(label: impl Into<String>) -> Self {
        Self {
            label: label.into(),
            children: Vec::new(),
        }
    }

    fn draw(&self, out: &mut String, prefix: &str) {
        for (i, c) in self.children.iter().enumerate() {
            let last = i + 1 == self.children.len();
            out.push_str(prefix);
            out.push_str(if last { "└── " } else { "├── " });
            out.push_str(&c.label);
            out.push('\n');
            let deeper = format!("{prefix}{}", if last { "    " } else { "│   " });
            c.draw(out, &deeper);
        }
    }
}

const OK: &str = "✔";
const BAD: &str = "✖";
const WAIT: &str = "◌";

/// Pads each row's columns to the widest cell of that column. The first
/// cell of a row is its symbol, joined to the second by one space.
fn columns(rows: Vec<Vec<String>>) -> Vec<String> {
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|mut r| {
            if r.len() >= 2 {
                let sym = r.remove(0);
                r[0] = format!("{sym} {}", r[0]);
            }
            r
        })
        .collect();
    let n = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.into_iter()
        .map(|r| {
            let last = r.len().saturating_sub(1);
            r.iter()
                .enumerate()
                .map(|(i, c)| {
                    if i == last {
                        c.clone()
                    } else {
                        format!("{c:<w$}", w = widths[i])
                    }
                })
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        })
        .collect()
}

fn short_duration(d: chrono::Duration) -> String {
    let secs = d.num_seconds().max(0) as u64;
    humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
}

/// Draws `svc`.
pub fn render(
    svc: &InferenceService,
    memory: &RolloutMemory,
    pods: &Pods,
    now: DateTime<Utc>,
) -> String {
    let name = svc.metadata.name.as_deref().unwrap_or("?");
    let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
    let default_status = Default::default();
    let st = svc.status.as_ref().unwrap_or(&default_status);
    let steps = &svc.spec.rollout.steps;
    let dash = || "-".to_string();

    let mut head: Vec<(&str, String)> = vec![
        ("Name", name.to_string()),
        ("Namespace", ns.to_string()),
        ("Phase", st.phase.as_str().to_string()),
    ];
    let mut step = match st.rollout.step {
        Some(s) => format!(
            "{s}/{}  weight {}%",
            steps.len(),
            st.canary_weight.unwrap_or(0)
        ),
        None => dash(),
    };
    if let (Some(s), Some(started)) = (st.rollout.step, memory.step_started_at) {
        let pause = usize::try_from(s - 1)
            .ok()
            .and_then(|i| steps.get(i))
            .map(|p| p.pause.get());
        if let (Some(pause), false) = (pause, svc.spec.rollout.paused) {
            let left = chrono::Duration::from_std(pause).unwrap_or_default() - (now - started);
            step.push_str(&format!(
                "  ({} of {} pause left)",
                short_duration(left),
                humantime::format_duration(pause)
            ));
        }
    }
    if svc.spec.rollout.paused {
        step.push_str("  PAUSED");
    }
    head.push(("Step", step));
    head.push(("Stable", st.stable_revision.clone().unwrap_or_else(dash)));
    head.push(("Canary", st.canary_revision.clone().unwrap_or_else(dash)));
    if let Some(r) = &memory.rolled_back_revision {
        head.push(("Rolled back", r.clone()));
    }
    head.push((
        "Traffic",
        if st.traffic.is_empty() {
            dash()
        } else {
            st.traffic
                .iter()
                .map(|t| format!("{} {}%", t.revision, t.weight))
                .collect::<Vec<_>>()
                .join(", ")
        },
    ));
    head.push((
        "Pods",
        format!(
            "{}/{} ready, {} serving, {} warm",
            st.replicas.ready, st.replicas.desired, st.replicas.serving, st.replicas.warm
        ),
    ));

    if let Some(u) = &st.utilization {
        head.push((
            "Utilisation",
            format!("{u} (target {}%)", svc.spec.autoscaling.target_utilization),
        ));
    }
    if let Some(reason) = &st.autoscaling.last_scale_reason {
        let when = st
            .autoscaling
            .last_scale_at
            .as_ref()
            .and_then(|t| DateTime::<Utc>::from_timestamp(t.0.as_second(), 0))
            .map(|t| format!(" ({} ago)", short_duration(now - t)))
            .unwrap_or_default();
        head.push(("Last scale", format!("{reason}{when}")));
    }
    if let Some(c) = &st.capacity {
        head.push(("Capacity", c.message.clone()));
    }

    let mut out = String::new();
    // Fixed width (the longest label, "Rolled back:"), so lines keep their
    // shape from one frame to the next and for grep.
    let w = 12;
    for (k, v) in &head {
        out.push_str(&format!("{:<w$}  {v}\n", format!("{k}:")));
    }
    out.push('\n');

    let mut root = Node {
        label: format!("{name} (InferenceService)"),
        children: Vec::new(),
    };
    root.children.push(revisions_node(st, pods));
    root.children.push(alarms_node(&st.alarms));
    if let Some(q) = &st.quality {
        root.children.push(quality_node(q));
    }
    root.children.push(conditions_node(&st.conditions));
    out.push_str(&root.label);
    out.push('\n');
    root.draw(&mut out, "");
    out
}

fn revisions_node(st: &steward_operator::crd::InferenceServiceStatus, pods: &Pods) -> Node {
    let weight = |rev: &str| {
        st.traffic
            .iter()
            .find(|t| t.revision == rev)
            .map_or(0, |t| t.weight)
    };
    let rows: Vec<Vec<String>> = st
        .revisions
        .iter()
        .map(|r| {
            let role = match r.role {
                RevisionRole::Starting => "starting",
                RevisionRole::Stable => "stable",
                RevisionRole::Canary => "canary",
                RevisionRole::Retiring => "retiring",
                RevisionRole::Retired => "retired",
            };
            let sym = if r.ready >= r.desired && r.pods == r.ready {
                OK
            } else {
                WAIT
            };
            vec![
                sym.to_string(),
                format!("revision {}", r.name),
                role.to_string(),
                format!("{}%", weight(&r.name)),
                format!("{}/{} ready", r.ready, r.desired),
                if r.pods > r.ready {
                    format!("{} pods", r.pods)
                } else {
                    String::new()
                },
            ]
        })
        .collect();
    let mut node = Node::leaf("revisions");
    if st.revisions.is_empty() {
        node.children.push(Node::leaf("(none yet)"));
    }
    for (r, line) in st.revisions.iter().zip(columns(rows)) {
        let mut rn = Node::leaf(line);
        if let Pods::Listed(list) = pods {
            let mine: Vec<&PodLine> = list.iter().filter(|p| p.revision == r.name).collect();
            let rows = mine
                .iter()
                .map(|p| {
                    let state = if p.terminating {
                        "terminating"
                    } else if p.ready {
                        "ready"
                    } else {
                        "not ready"
                    };
                    vec![
                        if p.ready && !p.terminating { OK } else { WAIT }.to_string(),
                        format!("pod {}", p.name),
                        p.role.clone().unwrap_or_else(|| "-".into()),
                        state.to_string(),
                    ]
                })
                .collect();
            rn.children = columns(rows).into_iter().map(Node::leaf).collect();
        }
        node.children.push(rn);
    }
    if let Pods::Unavailable(why) = pods {
        node.children
            .push(Node::leaf(format!("(pods not shown: {why})")));
    }
    node
}

fn alarms_node(alarms: &[steward_operator::crd::AlarmStatus]) -> Node {
    let mut node = Node::leaf("alarms");
    if alarms.is_empty() {
        node.children.push(Node::leaf("(none evaluated)"));
        return node;
    }
    let rows = alarms
        .iter()
        .map(|a| {
            let (sym, state) = match a.state {
                AlarmState::Ok => (OK, "Ok"),
                AlarmState::Pending => (WAIT, "Pending"),
                AlarmState::Firing => (BAD, "Firing"),
                AlarmState::NoData => (WAIT, "NoData"),
                AlarmState::Inconclusive => (WAIT, "Inconclusive"),
            };
            let undecided = matches!(a.state, AlarmState::NoData | AlarmState::Inconclusive);
            vec![
                sym.to_string(),
                a.name.clone(),
                a.revision.clone(),
                state.to_string(),
                a.value.clone().unwrap_or_default(),
                a.stable_value
                    .as_ref()
                    .map(|v| format!("stable {v}"))
                    .unwrap_or_default(),
                if undecided {
                    a.message.clone().unwrap_or_default()
                } else {
                    a.threshold
                        .as_ref()
                        .map(|t| format!("fires {t}"))
                        .unwrap_or_default()
                },
            ]
        })
        .collect();
    node.children = columns(rows).into_iter().map(Node::leaf).collect();
    node
}

fn quality_sym(s: QualityState) -> (&'static str, &'static str) {
    match s {
        QualityState::Pass => (OK, "Pass"),
        QualityState::Fail => (BAD, "Fail"),
        QualityState::Unknown => (WAIT, "Unknown"),
    }
}

fn quality_node(q: &QualityStatus) -> Node {
    let (sym, state) = quality_sym(q.state);
    let mut node = Node::leaf(format!(
        "quality  {sym} {state}  step {}  canary {} vs stable {}",
        q.step, q.canary_revision, q.stable_revision
    ));
    let mut rows: Vec<Vec<String>> = q
        .categories
        .iter()
        .map(|c| {
            let (sym, _) = quality_sym(c.state);
            vec![
                sym.to_string(),
                c.name.clone(),
                format!("canary {:.2}", c.canary),
                format!("stable {:.2}", c.stable),
                format!("{} entries", c.entries),
            ]
        })
        .collect();
    if let Some(p) = &q.perplexity {
        let (sym, _) = quality_sym(p.state);
        let num = |x: Option<f64>| x.map_or_else(|| "-".to_string(), |x| format!("{x:.3}"));
        rows.push(vec![
            sym.to_string(),
            "perplexity".into(),
            format!("canary {}", num(p.canary)),
            format!("stable {}", num(p.stable)),
            match p.drift {
                Some(d) => format!("drift {:+.1}%", d * 100.0),
                None => p.message.clone().unwrap_or_default(),
            },
        ]);
    }
    node.children = columns(rows).into_iter().map(Node::leaf).collect();
    if let Some(m) = &q.message {
        node.children.push(Node::leaf(m.clone()));
    }
    node
}

fn conditions_node(conds: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]) -> Node {
    let mut node = Node::leaf("conditions");
    let rows = conds
        .iter()
        .map(|c| {
            // Degraded and RolledBack are bad news when true; the others
            // when false.
            let bad_when_true = matches!(c.type_.as_str(), "Degraded" | "RolledBack");
            let truth = c.status == "True";
            let sym = match (c.status.as_str(), bad_when_true == truth) {
                ("Unknown", _) => WAIT,
                (_, true) => BAD,
                (_, false) => OK,
            };
            vec![
                sym.to_string(),
                c.type_.clone(),
                c.status.clone(),
                c.reason.clone(),
                c.message.clone(),
            ]
        })
        .collect();
    node.children = columns(rows).into_iter().map(Node::leaf).collect();
    node
}
