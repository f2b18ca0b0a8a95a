#!/usr/bin/env bash
# A single-node Kubernetes cluster on this machine, for the tests in tests/cluster/.
#
#   scripts/cluster.sh up                 build (cached) and start everything; idempotent
#   scripts/cluster.sh down               stop everything `up` started and remove its state
#   scripts/cluster.sh load-image IMAGE   copy a podman image into containerd's k8s.io namespace
#   scripts/cluster.sh kubeconfig         print the admin kubeconfig's path (.cluster/kubeconfig)
#   scripts/cluster.sh status             what runs, one line per component
#
# Everything is built or installed here, as root, with no container registry:
#   - kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and kube-proxy: one
#     binary (tests/cluster/kube), built from the k8s.io/kubernetes Go module out of tree
#     (its go.mod pins every k8s.io staging module with a replace directive); it also holds
#     the cluster's DNS (cluster-dns) and a CRI clean-up used by `down` (cri-clean);
#   - etcd, containerd, runc and the CNI plugins from Debian (apt-get, when missing);
#   - the pause image: a static Go binary in a scratch image, built with podman.
# Pods use `imagePullPolicy: Never` with images put there by load-image.
#
# The node is named gpu-node-1, labelled nvidia.com/gpu.present=true, tainted
# nvidia.com/gpu=present:NoSchedule and advertises eight nvidia.com/gpu (an extended resource
# patched into its status, as a device plugin would): a GPU node without a GPU. Pods get
# 10.244.0.0/24 on the bridge kcbr0 (gateway 10.244.0.1, which is also the node's address, the
# kubelet's and the DNS server's); Services 10.96.0.0/16 through kube-proxy (iptables). Pod
# Security admission enforces `baseline` in namespaces without a label.
#
# Files: .cluster/ (gitignored): bin/ and go/ (the build and the Go caches: kept by `down`),
# state/ (certificates, etcd, kubelet, containerd: removed by `down`), run/ (pids, sockets),
# logs/ (one log per component; kept by `down` for a look, cleared by the next `up`).
#
# Env: CLUSTER_DIR (default <repo>/.cluster), CLUSTER_NODE=0 to start the control plane only.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${CLUSTER_DIR:-$repo_root/.cluster}"
src="$repo_root/tests/cluster/kube"
bin="$dir/bin/kube"
state="$dir/state"
run="$dir/run"
logs="$dir/logs"
pki="$state/pki"
kubeconfig="$dir/kubeconfig"
ctr_sock="$run/containerd.sock"

node=gpu-node-1
bridge=kcbr0
gateway=10.244.0.1
pod_cidr=10.244.0.0/24
service_cidr=10.96.0.0/16
api_port=16443
etcd_port=23790
etcd_peer_port=23800
pause_image=localhost/pause:cluster
host_dirs=(/run/containerd /run/netns /var/lib/cni /var/lib/kubelet /var/log/containers)

log() { echo "cluster: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# --- processes ----------------------------------------------------------------------------

pid_of() {  # the pid recorded for a component, if that process still runs
  local f="$run/$1.pid" pid
  [[ -f "$f" ]] || return 1
  pid="$(cat "$f")"
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

start() {  # start NAME CMD...: in its own session, logging to logs/NAME.log; no-op when running
  local name="$1"; shift
  if pid_of "$name" >/dev/null; then return 0; fi
  setsid "$@" >>"$logs/$name.log" 2>&1 < /dev/null &
  echo $! >"$run/$name.pid"
}

stop() {  # stop NAME: TERM, then KILL after 15 s
  local name="$1" pid i
  pid="$(pid_of "$name")" || { rm -f "$run/$name.pid"; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 150; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name ($pid) ignored TERM: KILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$run/$name.pid"
}

wait_for() {  # wait_for WHAT SECONDS COMPONENT CMD...: poll CMD; on timeout show the log's tail
  local what="$1" seconds="$2" name="$3" deadline; shift 3
  deadline=$(( $(date +%s) + seconds ))
  until "$@" >/dev/null 2>&1; do
    if ! pid_of "$name" >/dev/null; then
      tail -n 40 "$logs/$name.log" >&2 || true
      die "$name exited while waiting for $what (log: $logs/$name.log)"
    fi
    if (( $(date +%s) > deadline )); then
      tail -n 40 "$logs/$name.log" >&2 || true
      die "timed out after ${seconds}s waiting for $what (log: $logs/$name.log)"
    fi
    sleep 0.5
  done
}

kubectl_bin() {
  local tools
  tools="$(bash "$repo_root/scripts/install-helm.sh")" || die "no kubectl (scripts/install-helm.sh failed)"
  echo "$tools/kubectl"
}

kc() { "$kubectl" --kubeconfig "$kubeconfig" "$@"; }

# --- build --------------------------------------------------------------------------------

need_packages() {
  local missing=() tool pkg
  for pair in go:golang-go containerd:containerd runc:runc etcd:etcd-server openssl:openssl \
              iptables:iptables conntrack:conntrack podman:podman; do
    tool="${pair%%:*}"; pkg="${pair#*:}"
    if [[ "$tool" == go ]]; then
      command -v go >/dev/null 2>&1 || [[ -x /usr/local/go/bin/go ]] || die "Go is missing (need Go 1.26)"
      continue
    fi
    command -v "$tool" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [[ -x /usr/lib/cni/bridge ]] || missing+=(containernetworking-plugins)
  if ((${#missing[@]})); then
    log "installing ${missing[*]} with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

build() {
  # Rebuild only when the Go sources or the toolchain changed: linking the ~150 MB binary is
  # the only slow part of a cached build.
  local go stamp t0
  go="$(command -v go || echo /usr/local/go/bin/go)"
  stamp="$( { "$go" version; cat "$src"/go.mod "$src"/go.sum "$src"/*.go "$src"/pause/*.go; } | sha256sum | cut -c1-16)"
  mkdir -p "$dir/bin" "$dir/go"
  if [[ -x "$bin" && -x "$dir/bin/pause" && "$(cat "$dir/bin/stamp" 2>/dev/null)" == "$stamp" ]]; then
    log "build: up to date (tests/cluster/kube unchanged)"
    return 0
  fi
  t0="$(now)"
  # The release the module pins, stamped into the binary as Kubernetes' own build does (the
  # version the API server reports, the kubelet's node info, helm's kubeVersion check).
  local version major minor flags
  version="$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" { print $3 }' "$src/go.mod")"
  [[ -n "$version" ]] || version="$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ { print $2; exit }' "$src/go.mod")"
  [[ "$version" =~ ^v([0-9]+)\.([0-9]+)\. ]] || die "cannot read the k8s.io/kubernetes version from $src/go.mod"
  major="${BASH_REMATCH[1]}" minor="${BASH_REMATCH[2]}"
  flags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  log "build: go build tests/cluster/kube, Kubernetes $version (a cold build downloads the modules and compiles for a while)"
  (
    cd "$src"
    export GOMODCACHE="$dir/go/mod" GOCACHE="$dir/go/cache" CGO_ENABLED=0 GOFLAGS=-mod=readonly
    "$go" build -trimpath -ldflags="$flags" -o "$bin.tmp" .
    "$go" build -trimpath -ldflags='-s -w' -o "$dir/bin/pause" ./pause
  ) >"$dir/build.log" 2>&1 || { cat "$dir/build.log" >&2; die "go build failed"; }
  mv -f "$bin.tmp" "$bin"
  echo "$stamp" >"$dir/bin/stamp"
  log "build: took $(since "$t0")s"
}

# --- certificates and configuration --------------------------------------------------------

cert() {  # cert NAME CN [O] [SANs]: a key and a certificate signed by the cluster CA
  local name="$1" cn="$2" org="${3:-}" sans="${4:-}" subj="/CN=$2"
  [[ -n "$org" ]] && subj="/O=$org/CN=$cn"
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$pki/$name.key" 2>/dev/null
  openssl req -new -key "$pki/$name.key" -subj "$subj" -out "$pki/$name.csr" 2>/dev/null
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    if [[ -n "$sans" ]]; then
      echo "extendedKeyUsage=serverAuth,clientAuth"
      echo "subjectAltName=$sans"
    else
      echo "extendedKeyUsage=clientAuth"
    fi
  } >"$pki/$name.ext"
  openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 30 -extfile "$pki/$name.ext" -out "$pki/$name.crt" 2>/dev/null
  rm -f "$pki/$name.csr" "$pki/$name.ext"
}

write_kubeconfig() {  # write_kubeconfig FILE CERTNAME
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: model-cache-test
    cluster:
      server: https://$gateway:$api_port
      certificate-authority: $pki/ca.crt
users:
  - name: $2
    user:
      client-certificate: $pki/$2.crt
      client-key: $pki/$2.key
contexts:
  - name: model-cache-test
    context: {cluster: model-cache-test, user: $2}
current-context: model-cache-test
EOF
}

configure() {
  [[ -f "$pki/done" ]] && return 0
  mkdir -p "$pki"
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$pki/ca.key" 2>/dev/null
  openssl req -x509 -new -key "$pki/ca.key" -subj "/CN=model-cache-test-ca" -days 30 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$pki/ca.crt" 2>/dev/null
  cert apiserver kube-apiserver "" \
    "IP:127.0.0.1,IP:$gateway,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  cert admin admin system:masters
  cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters
  cert controller-manager system:kube-controller-manager
  cert scheduler system:kube-scheduler
  cert kubelet "system:node:$node" system:nodes
  cert kubelet-serving "system:node:$node" system:nodes "IP:$gateway,DNS:$node"
  cert kube-proxy system:kube-proxy
  cert cluster-dns system:cluster-dns
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$pki/sa.key" 2>/dev/null
  openssl pkey -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
  for who in controller-manager scheduler kubelet kube-proxy cluster-dns; do
    write_kubeconfig "$state/$who.kubeconfig" "$who"
  done
  write_kubeconfig "$kubeconfig" admin

  # Pod Security admission: `baseline` where a namespace has no label, as NOTES.txt assumes.
  cat >"$state/admission.yaml" <<'EOF'
apiVersion: apiserver.config.k8s.io/v1
kind: AdmissionConfiguration
plugins:
  - name: PodSecurity
    configuration:
      apiVersion: pod-security.admission.config.k8s.io/v1
      kind: PodSecurityConfiguration
      defaults: {enforce: baseline, enforce-version: latest, warn: baseline, warn-version: latest,
                 audit: baseline, audit-version: latest}
      exemptions: {usernames: [], runtimeClasses: [], namespaces: []}
EOF

  cat >"$state/containerd.toml" <<EOF
version = 2
root = "$state/containerd"
state = "$run/containerd"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]
[grpc]
  address = "$ctr_sock"
[ttrpc]
  address = "$ctr_sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$pause_image"
  # This sandbox withholds CAP_SYS_RESOURCE even from root, so no process may lower its
  # oom_score_adj; the kubelet asks -998 for every pod sandbox and runc then fails with
  # "nsexec: failed to update /proc/self/oom_score_adj: Permission denied" ("can't get final
  # child's PID from pipe: EOF"). Clamp each container's value to containerd's own instead.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$state/cni"
EOF

  mkdir -p "$state/cni"
  cat >"$state/cni/10-kcbr0.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "model-cache-test",
  "plugins": [
    {
      "type": "bridge", "bridge": "$bridge", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": {
        "type": "host-local", "dataDir": "$state/cni-ipam",
        "ranges": [[{"subnet": "$pod_cidr", "gateway": "$gateway"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF

  cat >"$state/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $gateway
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: $pki/kubelet-serving.crt
tlsPrivateKeyFile: $pki/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $pki/ca.crt}
authorization: {mode: AlwaysAllow}
containerRuntimeEndpoint: unix://$ctr_sock
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
clusterDomain: cluster.local
clusterDNS: [$gateway]
podLogsDir: $state/pod-logs
registerWithTaints:
  - {key: nvidia.com/gpu, value: present, effect: NoSchedule}
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
syncFrequency: 10s
fileCheckFrequency: 10s
maxPods: 30
EOF

  cat >"$state/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {kubeconfig: $state/kube-proxy.kubeconfig}
hostnameOverride: $node
clusterCIDR: $pod_cidr
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
iptables: {localhostNodePorts: false}
nodePortAddresses: [$gateway/32]
EOF
  touch "$pki/done"
}

# --- the host network ---------------------------------------------------------------------

sysctl_save() {  # sysctl_save KEY: remember its value once, for down to restore
  local key="$1" file="/proc/sys/${1//.//}"
  [[ -f "$file" ]] || return 0
  grep -qs "^$key=" "$run/sysctl.saved" || echo "$key=$(cat "$file")" >>"$run/sysctl.saved"
}

sysctl_set() {  # sysctl_set KEY VALUE: remember the old value (restored by down), then set
  local key="$1" value="$2" file="/proc/sys/${1//.//}"
  [[ -f "$file" ]] || { log "no $file: skipping $key"; return 0; }
  sysctl_save "$key"
  echo "$value" >"$file"
}

network_up() {
  sysctl_set net.ipv4.ip_forward 1
  sysctl_set net.bridge.bridge-nf-call-iptables 1
  if ! ip link show "$bridge" >/dev/null 2>&1; then
    ip link add "$bridge" type bridge
  fi
  ip addr replace "$gateway/24" dev "$bridge"
  ip link set "$bridge" up
}

# --- components -----------------------------------------------------------------------------

api_ready() { curl -sf --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
  "https://$gateway:$api_port/readyz" >/dev/null; }

control_plane_up() {
  mkdir -p "$state/etcd"
  start etcd etcd --name kc --data-dir "$state/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer_port" \
    --initial-cluster "kc=http://127.0.0.1:$etcd_peer_port" --listen-metrics-urls "" \
    --quota-backend-bytes 1073741824
  wait_for "etcd" 60 etcd curl -sf "http://127.0.0.1:$etcd_port/health"

  start kube-apiserver "$bin" kube-apiserver \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address "$gateway" --secure-port "$api_port" --advertise-address "$gateway" \
    --service-cluster-ip-range "$service_cidr" \
    --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --client-ca-file "$pki/ca.crt" \
    --kubelet-client-certificate "$pki/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$pki/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority "$pki/ca.crt" --kubelet-preferred-address-types InternalIP \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
    --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
    --admission-control-config-file "$state/admission.yaml" \
    --allow-privileged=true --profiling=false --event-ttl 30m
  wait_for "the API server's /readyz" 180 kube-apiserver api_ready

  start kube-controller-manager "$bin" kube-controller-manager \
    --kubeconfig "$state/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$state/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$state/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port 10257 --leader-elect=false \
    --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
    --use-service-account-credentials --service-cluster-ip-range "$service_cidr" \
    --cluster-cidr "$pod_cidr" --allocate-node-cidrs=false --profiling=false
  start kube-scheduler "$bin" kube-scheduler \
    --kubeconfig "$state/scheduler.kubeconfig" \
    --authentication-kubeconfig "$state/scheduler.kubeconfig" \
    --authorization-kubeconfig "$state/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port 10259 --leader-elect=false --profiling=false
  wait_for "the controller manager" 60 kube-controller-manager \
    curl -skf https://127.0.0.1:10257/healthz
  wait_for "the scheduler" 60 kube-scheduler curl -skf https://127.0.0.1:10259/healthz
}

ctr_() { ctr -a "$ctr_sock" -n k8s.io "$@"; }
# (not `ctr ... | grep -q`: with pipefail, grep's early exit fails the pipeline with SIGPIPE)
has_image() { local names; names="$(ctr_ images ls -q)"; grep -qxF "$1" <<<"$names"; }

containerd_up() {
  start containerd containerd --config "$state/containerd.toml"
  wait_for "containerd" 60 containerd ctr_ version
  if ! has_image "$pause_image"; then
    local ctx
    ctx="$(mktemp -d)"
    cp "$dir/bin/pause" "$ctx/pause"
    printf 'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n' >"$ctx/Containerfile"
    podman --runtime runc build -q -t "$pause_image" "$ctx" >/dev/null
    rm -rf "$ctx"
    load_image "$pause_image"
  fi
}

node_ready() {
  [[ "$(kc get node "$node" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]
}

node_up() {
  mkdir -p "$state/kubelet" "$state/pod-logs"
  # The kernel settings the kubelet sets for itself (protectKernelDefaults: false).
  local key
  for key in vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops \
             kernel.keys.root_maxkeys kernel.keys.root_maxbytes; do
    sysctl_save "$key"
  done
  start kubelet "$bin" kubelet --config "$state/kubelet.yaml" \
    --kubeconfig "$state/kubelet.kubeconfig" --root-dir "$state/kubelet" \
    --hostname-override "$node" --node-ip "$gateway" \
    --node-labels nvidia.com/gpu.present=true
  wait_for "node $node to be Ready" 180 kubelet node_ready

  start kube-proxy "$bin" kube-proxy --config "$state/kube-proxy.yaml"
  start cluster-dns "$bin" cluster-dns --kubeconfig "$state/cluster-dns.kubeconfig" --listen "$gateway:53"
  wait_for "kube-proxy" 60 kube-proxy curl -sf http://127.0.0.1:10256/healthz
  wait_for "cluster DNS" 30 cluster-dns grep -q "answering for" "$logs/cluster-dns.log"

  # A GPU node, as far as the scheduler can tell (the label is also set at registration).
  kc label node "$node" nvidia.com/gpu.present=true --overwrite >/dev/null
  kc taint node "$node" nvidia.com/gpu=present:NoSchedule --overwrite >/dev/null
  kc patch node "$node" --subresource=status --type=merge \
    -p '{"status":{"capacity":{"nvidia.com/gpu":"8"}}}' >/dev/null
}

rbac_up() {
  # cluster-dns reads Services and nothing else.
  kc apply -f - >/dev/null <<'EOF'
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:cluster-dns"}
rules:
  - {apiGroups: [""], resources: [services], verbs: [list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:cluster-dns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:cluster-dns"}
subjects:
  - {apiGroup: rbac.authorization.k8s.io, kind: User, name: "system:cluster-dns"}
EOF
}

load_image() {  # load_image IMAGE: podman's copy of IMAGE into containerd's k8s.io namespace
  pid_of containerd >/dev/null || die "containerd is not running (scripts/cluster.sh up)"
  podman --runtime runc image exists "$1" || die "podman has no image $1"
  podman --runtime runc save "$1" | ctr_ images import - >/dev/null
  has_image "$1" || die "containerd did not list $1 after the import"
}

up() {
  [[ $(id -u) -eq 0 ]] || die "needs root (it runs a kubelet, containerd and iptables)"
  local t0 t1
  t0="$(now)"
  mkdir -p "$run"
  take_lock
  need_packages
  build
  t1="$(now)"
  mkdir -p "$state" "$run" "$logs"
  # A fresh start: last run's logs go. Not when something still runs (up restarting a stopped
  # API server, as tests/cluster/test_node_labels.py does): those logs are still being written.
  local name running=""
  for name in etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy cluster-dns; do
    if pid_of "$name" >/dev/null; then running=1; fi
  done
  [[ -n "$running" ]] || rm -f "$logs"/*.log
  kubectl="$(kubectl_bin)"
  # Fixed host paths the components use whatever they are told: containerd's shim sockets and
  # runc state (/run/containerd), pods' network namespaces (/run/netns), the CNI result cache
  # (/var/lib/cni), the kubelet's device-plugin socket (/var/lib/kubelet) and container log
  # links (/var/log/containers). Those that do not exist yet are noted; down removes those.
  local path
  for path in "${host_dirs[@]}"; do
    [[ -e "$path" ]] || grep -qsxF "$path" "$run/created-host-dirs" || echo "$path" >>"$run/created-host-dirs"
  done
  configure
  network_up
  control_plane_up
  rbac_up
  if [[ "${CLUSTER_NODE:-1}" != 0 ]]; then
    containerd_up
    node_up
  fi
  log "build $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')s, start $(since "$t1")s; kubeconfig $kubeconfig"
}

# --- one cluster per machine ---------------------------------------------------------------
# The kubelet, kube-proxy and the CNI bridge use machine-wide things (ports, iptables chains,
# the kubepods cgroups, kcbr0, /var/lib/kubelet): two checkouts cannot each run a cluster. The
# lock file names the .cluster directory whose cluster owns them; up refuses while another
# live one holds it, and down cleans machine-wide state only when it holds it.

lock=/run/model-cache-test-cluster.owner

lock_owner() { cat "$lock" 2>/dev/null || true; }

owner_alive() {  # owner_alive DIR: does any component that DIR's cluster started still run?
  local f pid
  for f in "$1"/run/*.pid; do
    [[ -f "$f" ]] || continue
    pid="$(cat "$f")"
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && return 0
  done
  return 1
}

take_lock() {
  local owner
  owner="$(lock_owner)"
  if [[ -n "$owner" && "$owner" != "$dir" ]]; then
    if owner_alive "$owner"; then
      die "another test cluster runs on this machine (scripts/cluster.sh of $(dirname "$owner")): one per machine; stop it with its own 'scripts/cluster.sh down'"
    fi
    log "taking over the machine from a stopped cluster ($owner)"
  elif [[ -z "$owner" ]] && ip link show "$bridge" >/dev/null 2>&1 && ! owner_alive "$dir"; then
    die "$bridge exists but no cluster of this checkout runs: another test cluster may (if none does, 'scripts/cluster.sh down' cleans up)"
  fi
  echo "$dir" >"$lock"
}

# --- down -----------------------------------------------------------------------------------

iptables_clean() {  # remove the chains named KUBE-* and CNI-* and every jump to them
  local cmd table chain rule
  for cmd in iptables ip6tables; do
    command -v "$cmd" >/dev/null 2>&1 || continue
    for table in filter nat mangle raw; do
      "$cmd" -t "$table" -S >/dev/null 2>&1 || continue
      while IFS= read -r rule; do
        # shellcheck disable=SC2086  # the rule's words, as iptables -S printed them
        eval "$cmd -t $table -D ${rule#-A }" 2>/dev/null || true
      done < <("$cmd" -t "$table" -S | grep -E '^-A (INPUT|OUTPUT|FORWARD|PREROUTING|POSTROUTING) .*-j (KUBE|CNI)-' || true)
      for chain in $("$cmd" -t "$table" -S | awk '$1 == "-N" && $2 ~ /^(KUBE|CNI)-/ { print $2 }'); do
        "$cmd" -t "$table" -F "$chain" 2>/dev/null || true
      done
      for chain in $("$cmd" -t "$table" -S | awk '$1 == "-N" && $2 ~ /^(KUBE|CNI)-/ { print $2 }'); do
        "$cmd" -t "$table" -X "$chain" 2>/dev/null || true
      done
    done
  done
  if command -v nft >/dev/null 2>&1; then
    for table in "ip kube-proxy" "ip6 kube-proxy"; do
      nft delete table $table 2>/dev/null || true
    done
  fi
}

down() {
  [[ $(id -u) -eq 0 ]] || die "needs root"
  mkdir -p "$run"
  # Pods first, through the CRI while containerd still runs: each sandbox's containers are
  # killed, its network torn down (veth, IP lease) and its network namespace unmounted.
  stop kubelet
  if pid_of containerd >/dev/null && [[ -x "$bin" ]]; then
    "$bin" cri-clean --endpoint "$ctr_sock" 2>>"$logs/down.log" || log "cri-clean failed (see $logs/down.log)"
  fi
  stop cluster-dns
  if pid_of kube-proxy >/dev/null; then
    stop kube-proxy
    "$bin" kube-proxy --cleanup >>"$logs/down.log" 2>&1 || true
  fi
  stop kube-scheduler
  stop kube-controller-manager
  stop kube-apiserver
  stop etcd
  stop containerd
  local owner listener
  owner="$(lock_owner)"
  if [[ -z "$owner" ]]; then
    # No lock (a cluster started by an older script): an API server on our port is another's.
    listener="$(ss -ltnpH "sport = :$api_port" 2>/dev/null | grep -o 'pid=[0-9]*' | head -n 1 | cut -d= -f2 || true)"
    if [[ -n "$listener" ]]; then owner="the cluster whose API server is process $listener"; fi
  fi
  if [[ -n "$owner" && "$owner" != "$dir" ]]; then
    # Another checkout's cluster holds the machine: its bridge, chains and cgroups are not ours.
    rm -rf "$state" "$run" "$kubeconfig"
    log "down: stopped this checkout's processes; the machine-wide state belongs to $owner"
    return 0
  fi
  # containerd's shims outlive it: the ones serving this cluster's socket are ours.
  local pid
  for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $ctr_sock( |\$)" || true); do
    log "stopping leftover shim $pid"
    kill -KILL "$pid" 2>/dev/null || true
  done

  # Mounts under the cluster's directory (kubelet volumes, overlay rootfs, sandbox shm), the
  # deepest first.
  local target path
  while IFS= read -r target; do
    umount "$target" 2>/dev/null || umount -l "$target" 2>/dev/null || log "cannot unmount $target"
  done < <(awk -v d="$dir/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r)

  # cgroups the kubelet made (cgroupfs driver): kubepods in every hierarchy, empty by now.
  local hierarchy
  for hierarchy in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
    [[ -d "$hierarchy" ]] || continue
    find "$hierarchy" -depth -type d -exec rmdir {} \; 2>/dev/null || log "cannot remove $hierarchy"
  done

  if ip link show "$bridge" >/dev/null 2>&1; then ip link delete "$bridge"; fi
  iptables_clean
  if [[ -f "$run/sysctl.saved" ]]; then
    local key value
    while IFS='=' read -r key value; do
      echo "$value" >"/proc/sys/${key//.//}" 2>/dev/null || true
    done <"$run/sysctl.saved"
  fi
  if [[ -d /var/log/containers ]]; then
    find /var/log/containers -maxdepth 1 -type l -lname "$state/*" -delete 2>/dev/null || true
  fi
  if [[ -f "$run/created-host-dirs" ]]; then
    while IFS= read -r path; do
      [[ -e "$path" ]] || continue
      case "$path" in
        /var/lib/kubelet) rm -rf "$path" ;;   # only the device-plugin socket: nothing of anyone else's
        *) find "$path" -depth -type d -empty -delete 2>/dev/null || true ;;
      esac
      if [[ -e "$path" ]]; then log "left $path: not empty"; fi
    done <"$run/created-host-dirs"
  fi
  rm -rf "$state" "$run" "$kubeconfig"
  rm -f "$lock"
  log "down: stopped and removed (kept $dir/bin, $dir/go and $logs)"
}

status() {
  local name
  for name in etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy cluster-dns; do
    if pid_of "$name" >/dev/null; then echo "$name running ($(pid_of "$name"))"; else echo "$name stopped"; fi
  done
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  load-image) [[ -n "${2:-}" ]] || die "usage: $0 load-image IMAGE"; load_image "$2" ;;
  kubeconfig) [[ -f "$kubeconfig" ]] || die "no cluster (scripts/cluster.sh up)"; echo "$kubeconfig" ;;
  status) status ;;
  *) echo "usage: $0 up|down|load-image IMAGE|kubeconfig|status" >&2; exit 2 ;;
esac
