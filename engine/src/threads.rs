//! How many CPU threads the engine gives libtorch, and how idle OpenMP
//! threads wait.
//!
//! A pod's CPU allotment is its cgroup quota (cgroup v2 `cpu.max`, v1
//! `cpu.cfs_quota_us / cpu.cfs_period_us`, the smallest along the cgroup's
//! path) or the `resources.cpu` limit the operator passes through the
//! downward API (`--cpu-limit` / `STEWARD_CPU_LIMIT`), whichever is smaller;
//! without either, the cores the process may run on (its affinity mask).
//! `--torch-threads` overrides all of them. The intra-op pool gets
//! `floor(allotment)` threads (at least 1, at most the visible cores): a
//! thread more than the quota pays for is throttled at every CFS period,
//! which stalls the whole parallel region. The inter-op pool gets 1 thread:
//! the engine runs one step at a time and has no inter-op parallelism.
//!
//! OpenMP's wait policy decides whether a thread that finished its share of
//! a parallel region spins or sleeps. Threads that spin without bound steal
//! the time of other processes on the same cores (a 9x collapse was
//! measured with two pods on one 2-core node and libtorch's defaults);
//! threads that sleep at once pay a wake-up at every one of the few hundred
//! parallel regions of a decode step (on a 2-vCPU VM a batch-1 step took
//! 14.2 ms passive vs 6.7 ms spinning). The default, `bounded`, spins for a
//! short, fixed count (`GOMP_SPINCOUNT`, about a hundred microseconds) and
//! then sleeps: the regions of one step find their threads awake, an idle
//! engine's threads sleep. libgomp reads its environment once, when it is
//! loaded, so the only way to set it from a flag is to re-execute the
//! process with the variables set ([`reexec_for_wait_policy`], called first
//! thing in `main`).
//!
//! The decision ([`plan`]) is pure; reading cgroup files and applying the
//! plan are thin wrappers around it.

use std::path::{Path, PathBuf};

/// Where the thread count came from (logged and exported).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `--torch-threads`.
    Flag,
    /// A cgroup v2 `cpu.max` quota.
    CgroupV2,
    /// A cgroup v1 CFS quota.
    CgroupV1,
    /// `--cpu-limit` (the pod's `resources.cpu` via the downward API).
    DownwardApi,
    /// No quota or limit: the cores in the affinity mask.
    VisibleCores,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Flag => "flag",
            Source::CgroupV2 => "cgroup_v2_quota",
            Source::CgroupV1 => "cgroup_v1_quota",
            Source::DownwardApi => "cpu_limit",
            Source::VisibleCores => "visible_cores",
        }
    }
}

/// What the process can find out about its CPU allotment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CpuFacts {
    /// `--torch-threads`.
    pub flag: Option<usize>,
    /// Cores the cgroup quota pays for, and which cgroup version said so.
    pub quota: Option<(f64, Source)>,
    /// Cores of `--cpu-limit`.
    pub limit: Option<f64>,
    /// Cores in the affinity mask (at least 1).
    pub visible: usize,
}

/// The pools the engine will use.
#[derive(Debug, Clone, PartialEq)]
pub struct ThreadPlan {
    pub intra_op: usize,
    pub inter_op: usize,
    pub source: Source,
    /// The allotment in cores the count was derived from.
    pub allotment: f64,
}

/// Decides the pool sizes from what is known about the allotment.
pub fn plan(f: &CpuFacts) -> ThreadPlan {
    let visible = f.visible.max(1);
    if let Some(n) = f.flag.filter(|&n| n > 0) {
        return ThreadPlan {
            intra_op: n,
            inter_op: 1,
            source: Source::Flag,
            allotment: n as f64,
        };
    }
    let from_limit = f.limit.map(|c| (c, Source::DownwardApi));
    let chosen = match (f.quota, from_limit) {
        (Some(q), Some(l)) => Some(if l.0 < q.0 { l } else { q }),
        (q, l) => q.or(l),
    };
    let (allotment, source) = chosen.unwrap_or((visible as f64, Source::VisibleCores));
    // floor: a fraction of a core cannot carry a whole thread without being
    // throttled; never zero, never more than the cores we can run on.
    let intra = (allotment.floor() as usize).clamp(1, visible);
    ThreadPlan {
        intra_op: intra,
        inter_op: 1,
        source,
        allotment,
    }
}

/// Parses a Kubernetes CPU quantity: `2`, `1.5`, `500m`, `2000000u`...
/// Returns cores; `None` for zero, negative or malformed values (the
/// downward API reports `0` when no limit is set on some nodes).
pub fn parse_cpu_quantity(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix('m') {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('u') {
        (n, 1e-6)
    } else if let Some(n) = s.strip_suffix('n') {
        (n, 1e-9)
    } else {
        (s, 1.0)
    };
    let v: f64 = num.parse().ok()?;
    let cores = v * scale;
    (cores.is_finite() && cores > 0.0).then_some(cores)
}

/// Parses cgroup v2 `cpu.max` (`"max 100000"` or `"150000 100000"`).
pub fn parse_cpu_max(s: &str) -> Option<f64> {
    let mut it = s.split_whitespace();
    let quota = it.next()?;
    let period: f64 = it.next().unwrap_or("100000").parse().ok()?;
    if quota == "max" || period <= 0.0 {
        return None;
    }
    let q: f64 = quota.parse().ok()?;
    (q > 0.0).then(|| q / period)
}

/// Parses cgroup v1 `cpu.cfs_quota_us` and `cpu.cfs_period_us` (`-1` = none).
pub fn parse_cfs(quota: &str, period: &str) -> Option<f64> {
    let q: f64 = quota.trim().parse().ok()?;
    let p: f64 = period.trim().parse().ok()?;
    (q > 0.0 && p > 0.0).then(|| q / p)
}

/// The smallest quota along the process's cgroup path. `proc_cgroup` is the
/// text of `/proc/self/cgroup`; `root` is where cgroupfs is mounted
/// (`/sys/fs/cgroup`).
pub fn cgroup_quota(proc_cgroup: &str, root: &Path) -> Option<(f64, Source)> {
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_id), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if ctrls.is_empty() {
            let q = min_along(root, path, |dir| {
                std::fs::read_to_string(dir.join("cpu.max"))
                    .ok()
                    .and_then(|s| parse_cpu_max(&s))
            });
            if let Some(q) = q {
                return Some((q, Source::CgroupV2));
            }
        } else if ctrls.split(',').any(|c| c == "cpu") {
            for mount in [ctrls, "cpu,cpuacct", "cpu"] {
                let base = root.join(mount);
                if !base.is_dir() {
                    continue;
                }
                let q = min_along(&base, path, |dir| {
                    let quota = std::fs::read_to_string(dir.join("cpu.cfs_quota_us")).ok()?;
                    let period = std::fs::read_to_string(dir.join("cpu.cfs_period_us")).ok()?;
                    parse_cfs(&quota, &period)
                });
                if let Some(q) = q {
                    return Some((q, Source::CgroupV1));
                }
            }
        }
    }
    None
}

/// Walks from `root/path` up to `root`, taking the smallest value `read`
/// finds. Inside a cgroup namespace the process's path is `/` and the
/// files sit at the root itself.
fn min_along(root: &Path, path: &str, read: impl Fn(&Path) -> Option<f64>) -> Option<f64> {
    let mut dir: PathBuf = root.join(path.trim_start_matches('/'));
    let mut best: Option<f64> = None;
    loop {
        if let Some(v) = read(&dir) {
            best = Some(best.map_or(v, |b: f64| b.min(v)));
        }
        if dir == root || !dir.starts_with(root) || !dir.pop() {
            break;
        }
    }
    best
}

/// Cores in this process's affinity mask.
pub fn visible_cores() -> usize {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most
    // size_of::<cpu_set_t>() bytes into it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            let n = libc::CPU_COUNT(&set);
            if n > 0 {
                return n as usize;
            }
        }
    }
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Reads the facts of this process.
pub fn facts(flag: Option<usize>, cpu_limit: Option<&str>) -> CpuFacts {
    let quota = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|s| cgroup_quota(&s, Path::new("/sys/fs/cgroup")));
    CpuFacts {
        flag,
        quota,
        limit: cpu_limit.and_then(parse_cpu_quantity),
        visible: visible_cores(),
    }
}

/// Sizes libtorch's pools. Call before the first tensor operation: the
/// inter-op pool can only be sized before it starts.
pub fn apply(p: &ThreadPlan) {
    tch::set_num_threads(p.intra_op as i32);
    tch::set_num_interop_threads(p.inter_op as i32);
}

/// OpenMP's wait policy for idle threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WaitPolicy {
    /// Sleep at once (no spinning): the least CPU on shared cores, a
    /// wake-up per parallel region.
    Passive,
    /// Spin without bound: lowest latency when the engine has its cores to
    /// itself, ruinous when it does not.
    Active,
    /// Spin `GOMP_SPINCOUNT` = [`BOUNDED_SPIN_COUNT`] iterations, then sleep.
    Bounded,
}

/// libgomp spin iterations before a waiting thread sleeps under
/// [`WaitPolicy::Bounded`] (libgomp's own default is 300,000).
pub const BOUNDED_SPIN_COUNT: &str = "10000";

impl WaitPolicy {
    /// `OMP_WAIT_POLICY` and `GOMP_SPINCOUNT` as the OpenMP runtime must
    /// see them (`None`: unset).
    pub fn env(self) -> (Option<&'static str>, Option<&'static str>) {
        match self {
            WaitPolicy::Passive => (Some("PASSIVE"), None),
            WaitPolicy::Active => (Some("ACTIVE"), None),
            WaitPolicy::Bounded => (None, Some(BOUNDED_SPIN_COUNT)),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            WaitPolicy::Passive => "passive",
            WaitPolicy::Active => "active",
            WaitPolicy::Bounded => "bounded",
        }
    }

    /// True when the environment already gives this policy.
    pub fn satisfied_by(self, omp_wait_policy: Option<&str>, spin_count: Option<&str>) -> bool {
        match self {
            WaitPolicy::Passive | WaitPolicy::Active => {
                omp_wait_policy.is_some_and(|c| c.eq_ignore_ascii_case(self.env().0.unwrap_or("")))
            }
            WaitPolicy::Bounded => {
                omp_wait_policy.is_none() && spin_count == Some(BOUNDED_SPIN_COUNT)
            }
        }
    }
}

/// Set in the environment of the re-executed process so it never loops.
const REEXEC_GUARD: &str = "STEWARD_ENGINE_REEXECUTED";
/// When the first image started (ns since the epoch), so the cold start
/// counts the re-exec too.
const STARTED_AT: &str = "STEWARD_ENGINE_STARTED_AT_NS";

fn epoch_ns() -> Option<u128> {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_nanos())
}

/// The process's start as seen before any re-exec (`now` when there was
/// none).
pub fn process_start(now: std::time::Instant) -> std::time::Instant {
    let Some(then) = std::env::var(STARTED_AT)
        .ok()
        .and_then(|s| s.parse::<u128>().ok())
    else {
        return now;
    };
    let ago = epoch_ns().unwrap_or(then).saturating_sub(then);
    // A start more than a minute ago is not ours: ignore it.
    let ago = std::time::Duration::from_nanos(ago.min(60_000_000_000) as u64);
    now.checked_sub(ago).unwrap_or(now)
}

/// The wait policy when nobody chose one: `bounded` when the pool was sized
/// from a CPU allotment the pod owns (a cgroup quota or the downward-API
/// limit) and has more than one thread; `passive` otherwise. Without a
/// known allotment other processes may share the same cores, and two
/// engines that both spin on them collapse (two engines of 2 threads on a
/// 2-core machine: 666 output tokens/s with a bounded spin vs 4,843
/// passive, bench/two-engines.sh).
pub fn default_wait_policy(p: &ThreadPlan) -> WaitPolicy {
    match p.source {
        Source::CgroupV2 | Source::CgroupV1 | Source::DownwardApi if p.intra_op > 1 => {
            WaitPolicy::Bounded
        }
        _ => WaitPolicy::Passive,
    }
}

/// The wait policy to run with: the flag's, else whatever an
/// `OMP_WAIT_POLICY` or `GOMP_SPINCOUNT` already in the environment says
/// (`None`: leave it), else `default`.
pub fn wanted_wait_policy(
    flag: Option<WaitPolicy>,
    omp_wait_policy: Option<&str>,
    spin_count: Option<&str>,
    default: WaitPolicy,
) -> Option<WaitPolicy> {
    match (flag, omp_wait_policy, spin_count) {
        (Some(p), _, _) => Some(p),
        // The operator or the user chose; leave it.
        (None, Some(_), _) | (None, None, Some(_)) => None,
        (None, None, None) => Some(default),
    }
}

/// An environment variable's value; empty counts as unset (it chooses
/// nothing).
fn env_nonempty(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.is_empty())
}

/// The policy in effect, as logged: `OMP_WAIT_POLICY`, else
/// `spin GOMP_SPINCOUNT`, else `unset`.
pub fn wait_policy_in_effect() -> String {
    match (
        env_nonempty("OMP_WAIT_POLICY"),
        env_nonempty("GOMP_SPINCOUNT"),
    ) {
        (Some(p), _) => p,
        (None, Some(n)) => format!("spin {n}"),
        (None, None) => "unset".into(),
    }
}

/// Re-executes this process with `OMP_WAIT_POLICY` / `GOMP_SPINCOUNT` set
/// when they differ from what is wanted. Returns only when no re-exec was
/// needed or it failed (the error is returned for the caller to log once
/// logging is up).
pub fn reexec_for_wait_policy(
    flag: Option<WaitPolicy>,
    default: WaitPolicy,
) -> Option<std::io::Error> {
    use std::os::unix::process::CommandExt;
    let (policy, spin) = (
        env_nonempty("OMP_WAIT_POLICY"),
        env_nonempty("GOMP_SPINCOUNT"),
    );
    let want = wanted_wait_policy(flag, policy.as_deref(), spin.as_deref(), default)?;
    if want.satisfied_by(policy.as_deref(), spin.as_deref())
        || std::env::var_os(REEXEC_GUARD).is_some()
    {
        return None;
    }
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_default();
    let mut cmd = std::process::Command::new("/proc/self/exe");
    cmd.arg0(arg0).args(args);
    for (key, value) in [
        ("OMP_WAIT_POLICY", want.env().0),
        ("GOMP_SPINCOUNT", want.env().1),
    ] {
        match value {
            Some(v) => cmd.env(key, v),
            None => cmd.env_remove(key),
        };
    }
    let err = cmd
        .env(REEXEC_GUARD, "1")
        .env(STARTED_AT, epoch_ns().unwrap_or(0).to_string())
        .exec();
    Some(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(quota: Option<(f64, Source)>, limit: Option<f64>, visible: usize) -> CpuFacts {
        CpuFacts {
            flag: None,
            quota,
            limit,
            visible,
        }
    }

    #[test]
    fn flag_wins_over_every_allotment() {
        let mut f = facts(Some((1.0, Source::CgroupV2)), Some(1.0), 8);
        f.flag = Some(3);
        let p = plan(&f);
        assert_eq!((p.intra_op, p.source), (3, Source::Flag));
    }

    #[test]
    fn smaller_of_quota_and_limit_sizes_the_pool() {
        let p = plan(&facts(Some((4.0, Source::CgroupV2)), Some(2.0), 16));
        assert_eq!((p.intra_op, p.source), (2, Source::DownwardApi));
        let p = plan(&facts(Some((1.0, Source::CgroupV1)), Some(2.0), 16));
        assert_eq!((p.intra_op, p.source), (1, Source::CgroupV1));
    }

    #[test]
    fn fractional_allotment_rounds_down_but_never_to_zero() {
        assert_eq!(plan(&facts(None, Some(1.5), 8)).intra_op, 1);
        assert_eq!(plan(&facts(None, Some(0.25), 8)).intra_op, 1);
        assert_eq!(
            plan(&facts(Some((3.9, Source::CgroupV2)), None, 8)).intra_op,
            3
        );
    }

    #[test]
    fn allotment_above_visible_cores_is_capped_and_nothing_known_means_visible() {
        let p = plan(&facts(None, Some(64.0), 2));
        assert_eq!(p.intra_op, 2);
        let p = plan(&facts(None, None, 6));
        assert_eq!(
            (p.intra_op, p.source, p.inter_op),
            (6, Source::VisibleCores, 1)
        );
    }

    #[test]
    fn cpu_quantities_parse_like_kubernetes() {
        assert_eq!(parse_cpu_quantity("2"), Some(2.0));
        assert_eq!(parse_cpu_quantity("500m"), Some(0.5));
        assert_eq!(parse_cpu_quantity("1.5"), Some(1.5));
        assert_eq!(parse_cpu_quantity(" 250000u "), Some(0.25));
        assert_eq!(parse_cpu_quantity("0"), None);
        assert_eq!(parse_cpu_quantity(""), None);
        assert_eq!(parse_cpu_quantity("two"), None);
        assert_eq!(parse_cpu_quantity("-1"), None);
    }

    #[test]
    fn cgroup_files_parse() {
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("150000 100000\n"), Some(1.5));
        assert_eq!(parse_cfs("-1\n", "100000\n"), None);
        assert_eq!(parse_cfs("200000\n", "100000\n"), Some(2.0));
    }

    #[test]
    fn v2_quota_is_the_smallest_along_the_path() {
        let root = tempfile::tempdir().unwrap();
        let pod = root.path().join("kubepods/pod1");
        let ctr = pod.join("ctr");
        std::fs::create_dir_all(&ctr).unwrap();
        std::fs::write(root.path().join("kubepods/cpu.max"), "max 100000").unwrap();
        std::fs::write(pod.join("cpu.max"), "100000 100000").unwrap();
        std::fs::write(ctr.join("cpu.max"), "300000 100000").unwrap();
        let q = cgroup_quota("0::/kubepods/pod1/ctr\n", root.path());
        assert_eq!(q, Some((1.0, Source::CgroupV2)));
        // no file anywhere: no quota
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(cgroup_quota("0::/\n", empty.path()), None);
    }

    #[test]
    fn v1_quota_is_read_from_the_cpu_controller() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("cpu,cpuacct/kubepods/pod2");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cpu.cfs_quota_us"), "50000\n").unwrap();
        std::fs::write(dir.join("cpu.cfs_period_us"), "100000\n").unwrap();
        let text = "12:memory:/kubepods/pod2\n4:cpu,cpuacct:/kubepods/pod2\n";
        assert_eq!(
            cgroup_quota(text, root.path()),
            Some((0.5, Source::CgroupV1))
        );
    }

    #[test]
    fn wait_policy_flag_beats_environment_which_beats_default() {
        use WaitPolicy::*;
        assert_eq!(
            wanted_wait_policy(Some(Active), Some("PASSIVE"), None, Passive),
            Some(Active)
        );
        assert_eq!(
            wanted_wait_policy(Some(Bounded), Some("PASSIVE"), None, Passive),
            Some(Bounded)
        );
        assert_eq!(
            wanted_wait_policy(None, Some("ACTIVE"), None, Bounded),
            None
        );
        assert_eq!(wanted_wait_policy(None, None, Some("500"), Bounded), None);
        assert_eq!(wanted_wait_policy(None, None, None, Bounded), Some(Bounded));
        assert_eq!(wanted_wait_policy(None, None, None, Passive), Some(Passive));
    }

    #[test]
    fn spinning_is_the_default_only_on_an_owned_allotment_of_several_cores() {
        let with =
            |quota, limit, visible| default_wait_policy(&plan(&facts(quota, limit, visible)));
        assert_eq!(
            with(Some((2.0, Source::CgroupV2)), None, 4),
            WaitPolicy::Bounded
        );
        assert_eq!(with(None, Some(3.0), 4), WaitPolicy::Bounded);
        // One thread: no team to keep awake.
        assert_eq!(with(None, Some(1.5), 4), WaitPolicy::Passive);
        // Nothing known: the cores may be shared.
        assert_eq!(with(None, None, 4), WaitPolicy::Passive);
        let mut f = facts(Some((4.0, Source::CgroupV1)), None, 4);
        f.flag = Some(4);
        assert_eq!(default_wait_policy(&plan(&f)), WaitPolicy::Passive);
    }

    #[test]
    fn a_policy_is_satisfied_only_by_its_own_environment() {
        use WaitPolicy::*;
        assert!(Passive.satisfied_by(Some("passive"), None));
        assert!(!Passive.satisfied_by(Some("ACTIVE"), None));
        assert!(!Passive.satisfied_by(None, Some(BOUNDED_SPIN_COUNT)));
        assert!(Active.satisfied_by(Some("ACTIVE"), Some("1")));
        assert!(Bounded.satisfied_by(None, Some(BOUNDED_SPIN_COUNT)));
        // A wait policy in the environment would override the spin count.
        assert!(!Bounded.satisfied_by(Some("PASSIVE"), Some(BOUNDED_SPIN_COUNT)));
        assert!(!Bounded.satisfied_by(None, Some("300000")));
        assert!(!Bounded.satisfied_by(None, None));
    }
}
