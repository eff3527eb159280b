#!/usr/bin/env bash
# Steward's set-up: installs every outside part the project needs into a cache
# folder outside the repo, idempotently, each step timed. Versions come from
# tools/versions.env only.
#
#   tools/setup.sh [all|kube|libtorch|prometheus|promcrds|gatewaycrds|keda|python]...
#
# `keda` is not in `all` (`./dev up` does not need it); `./dev test` asks for
# it. When asked for, it builds in the background while the other steps run
# (most of them wait on the network) and the script waits for it at the end.
#
# Prints `export` lines for the environment on the last lines when called with
# --print-env. The cache root is $STEWARD_CACHE, else $XDG_CACHE_HOME/steward,
# else ~/.cache/steward. A second clone on the same machine reuses it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=versions.env
source "$ROOT/tools/versions.env"
CACHE="${STEWARD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/steward}"
mkdir -p "$CACHE"

KUBE_DIR="$CACHE/kube-$KUBERNETES_VERSION-etcd-$ETCD_VERSION-helm-$HELM_VERSION"
LIBTORCH_DIR="$CACHE/libtorch-$TORCH_VERSION-cpu"
PY_DIR="$CACHE/py-torch-$TORCH_VERSION-tf-$TRANSFORMERS_VERSION"
PROMCRD_DIR="$CACHE/prometheus-operator-crds-$PROMETHEUS_OPERATOR_VERSION"
GATEWAYCRD_DIR="$CACHE/gateway-api-crds-$GATEWAY_API_VERSION"
KEDA_DIR="$CACHE/keda-$KEDA_VERSION"
DL_DIR="$CACHE/downloads"

say() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] MISSING: %s\n' "$*" >&2; exit 2; }

need() { # need CMD HOWTO
  command -v "$1" >/dev/null 2>&1 || die "'$1' is not installed; $2"
}

timed() { # timed NAME CMD... : runs a step and prints how long it took
  local name=$1; shift
  local t0; t0=$(date +%s)
  "$@"
  say "step $name took $(( $(date +%s) - t0 ))s"
}

# ---------------------------------------------------------------- kube ------
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl and
# helm, built with this machine's Go from their own Go modules.
build_kube() {
  if [[ -x "$KUBE_DIR/bin/kube-apiserver" && -x "$KUBE_DIR/bin/etcd" && -x "$KUBE_DIR/bin/helm" \
     && -x "$KUBE_DIR/bin/kubectl" && -x "$KUBE_DIR/bin/kube-scheduler" \
     && -x "$KUBE_DIR/bin/kube-controller-manager" ]]; then
    say "kube: cached in $KUBE_DIR"; return
  fi
  need go "install Go 1.24 or newer (https://go.dev/doc/install or 'apt-get install golang')"
  local mod="$KUBE_DIR/mod"
  mkdir -p "$mod" "$KUBE_DIR/bin"
  export GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0
  # k8s.io/kubernetes replaces every staging module with a local path; a tools
  # module must point each one at the published module of the same release.
  go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" >"$mod/dl.json"
  local kmod
  kmod=$(python3 -c 'import json,sys;print(json.load(open(sys.argv[1]))["GoMod"])' "$mod/dl.json")
  {
    echo "module steward.dev/kubetools"
    echo
    echo "go 1.24"
    echo
    echo "require k8s.io/kubernetes $KUBERNETES_VERSION"
    echo
    echo "replace ("
    sed -n '/^replace (/,/^)/p' "$kmod" | grep '=> ./staging/src/' \
      | awk -v v="$KUBERNETES_STAGING" '{print "\t" $1 " => " $1 " " v}'
    echo ")"
  } >"$mod/go.mod"
  cat >"$mod/tools.go" <<'EOF'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
EOF
  say "kube: building Kubernetes $KUBERNETES_VERSION control plane and kubectl (takes a while the first time)"
  (cd "$mod" && go mod tidy -e >/dev/null 2>&1 || true)
  (cd "$mod" && go build -trimpath -ldflags "-s -w \
      -X k8s.io/component-base/version.gitVersion=$KUBERNETES_VERSION \
      -X k8s.io/client-go/pkg/version.gitVersion=$KUBERNETES_VERSION" \
      -o "$KUBE_DIR/bin/" \
      k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl)
  say "kube: building etcd $ETCD_VERSION"
  # etcd's server module replaces its sibling modules with local paths too.
  local emod="$KUBE_DIR/etcd-mod"
  mkdir -p "$emod"
  cat >"$emod/go.mod" <<GOMOD
module steward.dev/etcdtools

go 1.24

require go.etcd.io/etcd/server/v3 $ETCD_VERSION

replace (
	go.etcd.io/etcd/api/v3 => go.etcd.io/etcd/api/v3 $ETCD_VERSION
	go.etcd.io/etcd/client/pkg/v3 => go.etcd.io/etcd/client/pkg/v3 $ETCD_VERSION
	go.etcd.io/etcd/client/v3 => go.etcd.io/etcd/client/v3 $ETCD_VERSION
	go.etcd.io/etcd/pkg/v3 => go.etcd.io/etcd/pkg/v3 $ETCD_VERSION
)
GOMOD
  printf '//go:build tools\n\npackage tools\n\nimport _ "go.etcd.io/etcd/server/v3"\n' >"$emod/tools.go"
  (cd "$emod" && go mod tidy -e >/dev/null 2>&1 || true)
  (cd "$emod" && go build -trimpath -ldflags "-s -w" -o "$KUBE_DIR/bin/etcd" go.etcd.io/etcd/server/v3)
  say "kube: building helm $HELM_VERSION"
  GOBIN="$KUBE_DIR/bin" go install -trimpath -ldflags "-s -w" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  rm -rf "$KUBE_DIR/gobin"
}

# ------------------------------------------------------------ libtorch ------
# A CPU libtorch cut from the torch wheel: headers plus the CPU libraries.
# libtorch_cpu.so also links libcudart/libcupti at load time, which come from
# two small NVIDIA wheels. torch-sys asks for -ltorch too; an empty stub does.
build_libtorch() {
  if [[ -f "$LIBTORCH_DIR/lib/libtorch_cpu.so" && -f "$LIBTORCH_DIR/.complete" ]]; then
    say "libtorch: cached in $LIBTORCH_DIR"; return
  fi
  need python3 "install Python 3.10+ with pip ('apt-get install python3 python3-pip')"
  need cc "install a C compiler ('apt-get install gcc')"
  python3 -m pip --version >/dev/null 2>&1 || die "python3 has no pip; 'apt-get install python3-pip'"
  mkdir -p "$DL_DIR"
  local whl
  whl=$(ls "$DL_DIR"/torch-"$TORCH_VERSION"-*.whl 2>/dev/null | head -n1 || true)
  if [[ -z "$whl" ]]; then
    say "libtorch: downloading torch==$TORCH_VERSION wheel (about 530 MB)"
    python3 -m pip download -q --no-deps --only-binary=:all: -d "$DL_DIR" "torch==$TORCH_VERSION"
    whl=$(ls "$DL_DIR"/torch-"$TORCH_VERSION"-*.whl | head -n1)
  fi
  if ! ls "$DL_DIR"/nvidia_cuda_runtime*.whl >/dev/null 2>&1 || ! ls "$DL_DIR"/nvidia_cuda_cupti*.whl >/dev/null 2>&1; then
    say "libtorch: downloading cuda-toolkit[cudart,cupti]==$CUDA_RT_VERSION runtime wheels"
    python3 -m pip download -q --only-binary=:all: -d "$DL_DIR" "cuda-toolkit[cudart,cupti]==$CUDA_RT_VERSION"
  fi
  local tmp="$LIBTORCH_DIR.tmp"
  rm -rf "$tmp"; mkdir -p "$tmp/lib"
  python3 - "$whl" "$tmp" <<'EOF'
import sys, zipfile, os, shutil
whl, out = sys.argv[1], sys.argv[2]
keep_libs = {"libtorch_cpu.so", "libc10.so", "libgomp.so.1"}
with zipfile.ZipFile(whl) as z:
    for info in z.infolist():
        n = info.filename
        if n.startswith("torch/include/"):
            dest = os.path.join(out, "include", n[len("torch/include/"):])
        elif n.startswith("torch/lib/") and os.path.basename(n) in keep_libs:
            dest = os.path.join(out, "lib", os.path.basename(n))
        elif n == "torch/version.py":
            dest = os.path.join(out, "version.py")
        else:
            continue
        if n.endswith("/"):
            continue
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with z.open(info) as src, open(dest, "wb") as dst:
            shutil.copyfileobj(src, dst)
EOF
  for w in "$DL_DIR"/nvidia_cuda_runtime*.whl "$DL_DIR"/nvidia_cuda_cupti*.whl; do
    python3 - "$w" "$tmp/lib" <<'EOF'
import sys, zipfile, os, re, shutil
whl, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    for n in z.namelist():
        b = os.path.basename(n)
        if re.fullmatch(r"lib(cudart|cupti)\.so\.\d+", b):
            with z.open(n) as src, open(os.path.join(out, b), "wb") as dst:
                shutil.copyfileobj(src, dst)
EOF
  done
  ls "$tmp"/lib/libcudart.so.* >/dev/null 2>&1 || die "libcudart.so was not found in the cuda runtime wheel"
  echo "" | cc -shared -x c - -o "$tmp/lib/libtorch.so"
  echo "$TORCH_VERSION" >"$tmp/build-version"
  rm -rf "$LIBTORCH_DIR"; mv "$tmp" "$LIBTORCH_DIR"
  touch "$LIBTORCH_DIR/.complete"
  say "libtorch: $(du -sh "$LIBTORCH_DIR" | cut -f1) in $LIBTORCH_DIR"
}

# ---------------------------------------------------------- prometheus ------
install_prometheus() {
  if command -v prometheus >/dev/null 2>&1; then
    say "prometheus: $(command -v prometheus)"; return
  fi
  if [[ $(id -u) -ne 0 ]] && ! command -v sudo >/dev/null; then
    die "prometheus is not installed; run 'apt-get install prometheus' as root"
  fi
  local SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO=sudo
  say "prometheus: installing Debian's $PROMETHEUS_DEBIAN package"
  $SUDO apt-get update -qq >/dev/null 2>&1 || true
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$PROMETHEUS_DEBIAN" >/dev/null \
    || die "could not 'apt-get install $PROMETHEUS_DEBIAN'; install Prometheus 2.x and put it on PATH"
  # The package may start a service on :9090 where an init system exists; we run our own.
  ($SUDO service prometheus stop >/dev/null 2>&1 || true)
}

# ------------------------------------------------- promcrds, gatewaycrds ------
# CRD YAML copied from a Go module that the Go module proxy serves:
#   copy_module_crds STEP DIR MODULE SUBDIR FILE_PREFIX KIND...
# copies SUBDIR/FILE_PREFIX<KIND>.yaml of MODULE into DIR (once; DIR/.complete
# marks a finished copy).
copy_module_crds() {
  local step=$1 dir=$2 mod=$3 sub=$4 prefix=$5; shift 5
  if [[ -f "$dir/.complete" ]]; then
    say "$step: cached in $dir"; return
  fi
  need go "install Go 1.24 or newer (https://go.dev/doc/install or 'apt-get install golang')"
  say "$step: downloading $mod"
  local json; json=$(cd /tmp && GOFLAGS=-mod=mod GOTOOLCHAIN=local go mod download -json "$mod")
  local src; src=$(python3 -c 'import json,sys;d=json.loads(sys.stdin.read());print(d.get("Dir",""))' <<<"$json")
  [[ -d "$src/$sub" ]] || die "the $mod module has no $sub"
  local tmp="$dir.tmp"
  rm -rf "$tmp"; mkdir -p "$tmp"
  local k
  for k in "$@"; do
    cp "$src/$sub/$prefix$k.yaml" "$tmp/"
  done
  chmod u+w "$tmp"/*.yaml
  rm -rf "$dir"; mv "$tmp" "$dir"
  touch "$dir/.complete"
}

# The prometheus-operator CRDs (PrometheusRule, PodMonitor, ServiceMonitor)
# for the local cluster. Tests install them to prove the operator's
# PrometheusRule and the chart's monitors against the real schemas.
fetch_promcrds() {
  copy_module_crds promcrds "$PROMCRD_DIR" \
    "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION" \
    example/prometheus-operator-crd monitoring.coreos.com_ \
    prometheusrules podmonitors servicemonitors
}

# The Gateway API's standard-channel CRDs (GatewayClass, Gateway, HTTPRoute,
# GRPCRoute, ReferenceGrant). The operator's cluster test installs them to
# prove its HTTPRoutes against the real schema.
fetch_gatewaycrds() {
  copy_module_crds gatewaycrds "$GATEWAYCRD_DIR" \
    "sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION" \
    config/crd/standard gateway.networking.k8s.io_ \
    gatewayclasses gateways httproutes grpcroutes referencegrants
}

# ---------------------------------------------------------------- keda ------
# KEDA's operator (cmd/operator) and metrics API server (cmd/adapter), built
# from the github.com/kedacore/keda/v2 module with its own go.mod and go.sum
# (the module has a replace directive, so `go install mod@version` refuses
# it), and its CRDs. The admission webhooks (cmd/webhooks) are not built.
# The module download (about 1.7 GB) and the build cache (about 3 GB) go to
# a scratch folder that is removed afterwards: the cache keeps the two
# binaries (about 300 MB) and the CRD YAML.
build_keda() {
  if [[ -x "$KEDA_DIR/bin/keda-operator" && -x "$KEDA_DIR/bin/keda-adapter" && -f "$KEDA_DIR/.complete" ]]; then
    say "keda: cached in $KEDA_DIR"; return
  fi
  need go "install Go 1.26 or newer (https://go.dev/doc/install); KEDA $KEDA_VERSION's go.mod asks for go 1.26"
  local gov; gov=$(go env GOVERSION)
  [[ "$(printf '%s\n' go1.26 "$gov" | sort -V | head -n1)" == go1.26 ]] \
    || die "KEDA $KEDA_VERSION needs Go 1.26 or newer (its go.mod says 'go 1.26.0'); this machine has $gov"
  local tmp="$KEDA_DIR.tmp"
  # The module cache is read-only by design; make it removable first.
  [[ -d "$tmp" ]] && chmod -R u+w "$tmp" && rm -rf "$tmp"
  mkdir -p "$tmp/bin" "$tmp/crds"
  export GOTOOLCHAIN=local CGO_ENABLED=0 GOMODCACHE="$tmp/gomod" GOCACHE="$tmp/gocache" GOFLAGS=-mod=readonly
  local mod="github.com/kedacore/keda/v2@$KEDA_VERSION" t0
  t0=$(date +%s)
  say "keda: downloading $mod"
  local json; json=$(cd "$tmp" && go mod download -json "$mod")
  local src; src=$(python3 -c 'import json,sys;print(json.loads(sys.stdin.read()).get("Dir",""))' <<<"$json")
  [[ -f "$src/go.mod" ]] || die "the $mod module did not download (go mod download said: $json)"
  cp -r "$src" "$tmp/src"; chmod -R u+w "$tmp/src"
  say "keda: downloading what the operator and the metrics API server import (about 1.7 GB) and building them (about 600 CPU-seconds: ~5 min on 2 idle cores)"
  (cd "$tmp/src" && go build -trimpath \
      -ldflags "-s -w -X github.com/kedacore/keda/v2/version.Version=$KEDA_VERSION" \
      -o "$tmp/out/" ./cmd/operator ./cmd/adapter)
  say "keda: downloaded and built in $(( $(date +%s) - t0 ))s"
  mv "$tmp/out/operator" "$tmp/bin/keda-operator"
  mv "$tmp/out/adapter" "$tmp/bin/keda-adapter"
  cp "$tmp/src"/config/crd/bases/*.yaml "$tmp/crds/"
  t0=$(date +%s)
  chmod -R u+w "$tmp"
  rm -rf "$tmp/gomod" "$tmp/gocache" "$tmp/src" "$tmp/out"
  say "keda: module and build caches removed in $(( $(date +%s) - t0 ))s"
  echo "$KEDA_VERSION" >"$tmp/build-version"
  rm -rf "$KEDA_DIR"; mv "$tmp" "$KEDA_DIR"
  touch "$KEDA_DIR/.complete"
  say "keda: $(du -sh "$KEDA_DIR" | cut -f1) in $KEDA_DIR"
}

# -------------------------------------------------------------- python ------
# Hugging Face transformers on the same torch, for the engine's correctness
# test and the benchmark baseline. The venv reuses the downloaded torch wheel.
build_python() {
  if [[ -x "$PY_DIR/bin/python" && -f "$PY_DIR/.complete" ]]; then
    say "python: cached in $PY_DIR"; return
  fi
  build_libtorch
  local whl; whl=$(ls "$DL_DIR"/torch-"$TORCH_VERSION"-*.whl | head -n1)
  rm -rf "$PY_DIR"
  if ! python3 -m venv "$PY_DIR" >/dev/null 2>&1; then
    # Debian's python3 splits venv/ensurepip into python3-venv.
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
      say "python: installing Debian's python3-venv"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null 2>&1 || true
    fi
    rm -rf "$PY_DIR"
    python3 -m venv "$PY_DIR" || die "python3 cannot make a venv; 'apt-get install python3-venv'"
  fi
  "$PY_DIR/bin/pip" install -q --no-deps "$whl"
  "$PY_DIR/bin/pip" install -q "transformers==$TRANSFORMERS_VERSION" safetensors numpy \
    filelock sympy networkx jinja2 fsspec typing-extensions "$DL_DIR"/nvidia_cuda_runtime*.whl "$DL_DIR"/nvidia_cuda_cupti*.whl
  # PyPI's Linux torch wheel is the CUDA build: its libraries link cuDNN,
  # cuBLAS, NCCL, ... (about 3 GB of wheels) that a CPU machine never calls.
  # Instead of downloading them, put small stub libraries with the same
  # sonames, symbol versions and symbol names next to torch's libraries
  # ($ORIGIN is on their RPATH); torch then imports and runs on CPU, and
  # torch.cuda.is_available() is False.
  local tlib; tlib=$("$PY_DIR/bin/python" -c 'import sysconfig;print(sysconfig.get_paths()["purelib"])')/torch/lib
  if ! "$PY_DIR/bin/python" -c 'import torch' >/dev/null 2>&1; then
    say "python: torch needs CUDA libraries this CPU machine lacks; writing stubs into $tlib"
    need cc "install a C compiler ('apt-get install gcc')"
    python3 - "$tlib" <<'EOF'
import collections, glob, os, re, subprocess, sys
tl = sys.argv[1]
libs = glob.glob(os.path.join(tl, "*.so*"))
missing = {}
for f in libs:
    ldd = subprocess.run(["ldd", f], capture_output=True, text=True).stdout
    for m in re.finditer(r"^\s*(\S+) => not found", ldd, re.M):
        missing.setdefault(m.group(1), set())
undef = collections.defaultdict(set)  # version node -> undefined symbols
for f in libs:
    cur = None
    for line in subprocess.run(["readelf", "-V", f], capture_output=True, text=True).stdout.splitlines():
        m = re.search(r"File: (\S+)", line)
        if m:
            cur = m.group(1)
            continue
        m = re.search(r"Name: (\S+)", line)
        if m and cur in missing:
            missing[cur].add(m.group(1))
    for line in subprocess.run(["objdump", "-T", f], capture_output=True, text=True).stdout.splitlines():
        if "*UND*" in line:
            parts = line.split()
            undef[parts[-2].strip("()")].add(parts[-1])
# Libraries without symbol versions: assign undefined symbols by name.
prefix = [(r"^nccl", "libnccl.so.2"), (r"^cuFile", "libcufile.so.0"), (r"^cusparseLt", "libcusparseLt.so.0"),
          (r"^curand", "libcurand.so.10"), (r"^cu[A-Z]", "libcuda.so.1")]
for lib, vers in missing.items():
    nodes = {v: sorted(undef.get(v, ())) for v in vers}
    if not vers:
        nodes[""] = sorted({s for ss in undef.values() for s in ss
                            if any(re.match(p, s) and l == lib for p, l in prefix)})
    src, vmap, so = (os.path.join(tl, lib + ext) for ext in (".c", ".map", ""))
    with open(src, "w") as c, open(vmap, "w") as mp:
        for s in sorted({s for ss in nodes.values() for s in ss}):
            c.write("void %s(void) {}\n" % s)
        c.write("int steward_cpu_stub(void) { return 0; }\n")
        for v, ss in nodes.items():
            body = " ".join(s + ";" for s in ss)
            mp.write("%s { global: %s steward_cpu_stub; };\n" % (v, body) if v else "{ global: %s steward_cpu_stub; local: *; };\n" % body)
    subprocess.run(["cc", "-shared", "-fPIC", "-o", so, src, "-Wl,-soname," + lib, "-Wl,--version-script=" + vmap], check=True)
    os.remove(src)
    os.remove(vmap)
    print("[setup] python: stub", lib, file=sys.stderr)
EOF
  fi
  "$PY_DIR/bin/python" -c 'import torch, transformers; assert not torch.cuda.is_available(); torch.ones(2, 2) @ torch.ones(2, 2)' \
    || die "torch does not import in $PY_DIR"
  touch "$PY_DIR/.complete"
}

print_env() {
  echo "export STEWARD_CACHE='$CACHE'"
  echo "export PATH='$KUBE_DIR/bin':\"\$PATH\""
  echo "export LIBTORCH='$LIBTORCH_DIR'"
  echo "export LIBTORCH_BYPASS_VERSION_CHECK=1"
  echo "export LD_LIBRARY_PATH='$LIBTORCH_DIR/lib':\"\${LD_LIBRARY_PATH:-}\""
  echo "export STEWARD_PYTHON='$PY_DIR/bin/python'"
  echo "export STEWARD_PROMETHEUS_CRDS='$PROMCRD_DIR'"
  echo "export STEWARD_GATEWAY_CRDS='$GATEWAYCRD_DIR'"
  echo "export STEWARD_KEDA='$KEDA_DIR'"
}

main() {
  local steps=("$@")
  [[ ${#steps[@]} -eq 0 ]] && steps=(all)
  # KEDA's Go build is long and mostly CPU; the other steps mostly wait on
  # the network. Asked for together, it runs beside them.
  local keda_pid="" rest=()
  for s in "${steps[@]}"; do
    case "$s" in
      all|kube|libtorch|prometheus|promcrds|gatewaycrds|python|--print-env) rest+=("$s") ;;
      keda) ;;
      *) die "unknown set-up step '$s' (all|kube|libtorch|prometheus|promcrds|gatewaycrds|keda|python|--print-env)" ;;
    esac
  done
  if [[ ${#rest[@]} -lt ${#steps[@]} ]]; then
    if [[ ${#rest[@]} -eq 0 ]]; then
      timed keda build_keda; return
    fi
    (timed keda build_keda) &
    keda_pid=$!
  fi
  for s in "${rest[@]}"; do
    case "$s" in
      all) timed kube build_kube; timed libtorch build_libtorch; timed prometheus install_prometheus; timed promcrds fetch_promcrds; timed gatewaycrds fetch_gatewaycrds ;;
      kube) timed kube build_kube ;;
      libtorch) timed libtorch build_libtorch ;;
      prometheus) timed prometheus install_prometheus ;;
      promcrds) timed promcrds fetch_promcrds ;;
      gatewaycrds) timed gatewaycrds fetch_gatewaycrds ;;
      python) timed python build_python ;;
      --print-env) print_env ;;
    esac
  done
  if [[ -n "$keda_pid" ]]; then
    wait "$keda_pid" || die "the KEDA build failed (see the lines above); run 'tools/setup.sh keda' again"
  fi
}

main "$@"
