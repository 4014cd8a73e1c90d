#!/usr/bin/env bash
# A real two-node Kubernetes cluster on this machine, for the upstream
# NetworkPolicy conformance suite (see the README's "Conformance" section).
#
#   cluster.sh up     build what is missing, start the cluster, deploy nftpolicy
#   cluster.sh down   stop everything `up` started and undo what it changed
#   cluster.sh e2e    run e2e.test against the running cluster (FOCUS, SKIP)
#   cluster.sh cnp    run the upstream ClusterNetworkPolicy suite against the
#                     running cluster (test/conformance/cnp; installs the CRD)
#   cluster.sh gate   the CNI gate on a "rebooted" node2: a new pod waits for
#                     the node's table (test/conformance/gate_test.go)
#   cluster.sh rollout  roll the agent DaemonSet under probes
#                     (test/conformance/rollout_test.go)
#   cluster.sh uninstall  delete the agents and run config/cleanup: every
#                     node's CNI gate and table go, a pod starts on node2
#   cluster.sh run    up, then gate, e2e and/or cnp (SUITE), rollout,
#                     uninstall, down; down also runs on failure and Ctrl-C
#
# Topology (no Docker, no VMs):
#   node1  the machine's own network namespace. Bridge npc-br0 10.99.0.1/24
#          (and/or fd99::1/64). etcd, kube-apiserver, controller-manager and
#          scheduler run here too.
#   node2  network namespace npc-node2, eth0 10.99.0.2/24 (fd99::2/64) on a
#          veth into the bridge. Its containerd, kubelet and kube-proxy are
#          started with `nsenter --net=` (not `ip netns exec`, which remounts
#          /sys and so hides the cgroup v1 mounts the kubelet needs).
#   pods   host-local IPAM, 10.244.<N>.0/24 and/or fd99:244:0:<N>::/64 on node
#          N, static routes between the nodes. CNI ptp (routed: every packet
#          between pods crosses the forward hook) or bridge (bridge npc-cni0 per
#          node: same-node pods are bridged and reach the forward hook only
#          through br_netfilter). Services 10.96.0.0/16 and/or fd99:96::/112,
#          kube-proxy in nftables mode. Images are imported from archives
#          (test/conformance/imagepack): nothing is ever pulled.
#   CNI    each node's containerd reads $STATE/<node>/cni and runs plugins from
#          $STATE/<node>/cni-bin (links to /usr/lib/cni's), where the agents
#          install the CNI gate (config/cni-gate; test/conformance/
#          kustomization.yaml mounts the node's two directories).
#
# Shapes: IP_FAMILY ipv4 (default), ipv6 or dual (IPv4 primary: node IPs,
# pod IPs, Service ranges and cluster CIDRs of both families); CNI ptp
# (default) or bridge.
#
# Machine safety: the guard table `inet npc-guard` drops forwarding out of the
# uplink and anything for our ranges leaving by it, before any pod starts.
# Every process is started by this script and stopped by its PID (the pid
# files under $STATE/pids); the sysctls the kubelet, CNI and this script
# change are saved at `up` and restored at `down`; only the netns, bridges,
# cgroups and tables named npc-* (and inet nftpolicy, ip/ip6 kube-proxy) are
# touched.
#
# Environment: K8S_VERSION (1.37.2), STATE (/var/lib/nftpolicy-conformance),
# IP_FAMILY (ipv4), CNI (ptp), FOCUS (Netpol), SKIP (SCTP), PARALLEL (4
# ginkgo processes; 1 runs e2e.test alone), E2E_ARGS (extra e2e.test flags),
# NFTPOLICY_BIN (the agent binary to pack as the image; default bin/nftpolicy),
# AGENT_ARGS (extra agent flags, space-separated, appended to the
# DaemonSet's: e.g. --full-sync-period=10s to have periodic full syncs run
# during the suite), SUITE (what `run` runs: netpol, the default, cnp, or all: both),
# CNP_RUN (a go test -run pattern under TestClusterNetworkPolicyConformance,
# e.g. CNPAdminTierGress; default all) and CNP_SCTP (skip: skip the four
# SCTP-only tests instead of probing them with sctp-connect).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
K8S_VERSION=${K8S_VERSION:-1.37.2}
K8S="$root/bin/k8s/$K8S_VERSION"
STATE=${STATE:-/var/lib/nftpolicy-conformance}
FOCUS=${FOCUS:-Netpol}
SKIP=${SKIP:-SCTP}
E2E_ARGS=${E2E_ARGS:-}
PARALLEL=${PARALLEL:-4}
SUITE=${SUITE:-netpol}
CNP_RUN=${CNP_RUN:-}
CNP_SCTP=${CNP_SCTP:-}
case "$SUITE" in
  netpol | cnp | all) ;;
  *) echo "SUITE=$SUITE: want netpol, cnp or all" >&2; exit 2 ;;
esac
NFTPOLICY_BIN=${NFTPOLICY_BIN:-$root/bin/nftpolicy}

IP_FAMILY=${IP_FAMILY:-ipv4}
CNI=${CNI:-ptp}
case "$IP_FAMILY" in
  ipv4) FAMILIES=(4) ;;
  ipv6) FAMILIES=(6) ;;
  dual) FAMILIES=(4 6) ;; # IPv4 primary, as kubeadm and kind default to
  *) echo "IP_FAMILY=$IP_FAMILY: want ipv4, ipv6 or dual" >&2; exit 2 ;;
esac
case "$CNI" in
  ptp | bridge) ;;
  *) echo "CNI=$CNI: want ptp or bridge" >&2; exit 2 ;;
esac
has4() { [[ " ${FAMILIES[*]} " == *" 4 "* ]]; }
has6() { [[ " ${FAMILIES[*]} " == *" 6 "* ]]; }

BRIDGE=npc-br0
# The pods' bridge on each node with CNI=bridge (in node2's netns too).
POD_BRIDGE=npc-cni0
NS2=npc-node2
NODES=(node1 node2)
# Per family: the node link, node addresses, pod ranges, Services, cluster.
NODE_NET4=10.99.0.0/24 NODE_NET6=fd99::/64
declare -A NODE_IP4=([node1]=10.99.0.1 [node2]=10.99.0.2)
declare -A NODE_IP6=([node1]=fd99::1 [node2]=fd99::2)
declare -A POD_CIDR4=([node1]=10.244.1.0/24 [node2]=10.244.2.0/24)
declare -A POD_CIDR6=([node1]=fd99:244:0:1::/64 [node2]=fd99:244:0:2::/64)
SERVICE_CIDR4=10.96.0.0/16 SERVICE_CIDR6=fd99:96::/112
CLUSTER_CIDR4=10.244.0.0/16 CLUSTER_CIDR6=fd99:244::/56
# fam_list VAR [KEY]: VAR4 and/or VAR6 (VAR4[KEY]...) of the cluster's
# families, primary first, comma-separated: the form of every dual-stack flag.
fam_list() {
  local out=() f n
  for f in "${FAMILIES[@]}"; do
    n="$1$f"
    if [ $# -gt 1 ]; then n="${n}[$2]"; fi
    out+=("${!n}")
  done
  (IFS=,; echo "${out[*]}")
}
declare -A NODE_IP=([node1]="$(fam_list NODE_IP node1)" [node2]="$(fam_list NODE_IP node2)")
PRIMARY=${FAMILIES[0]}
# hostport HOST PORT: HOST:PORT, an IPv6 HOST in brackets.
hostport() { if [[ $1 == *:* ]]; then echo "[$1]:$2"; else echo "$1:$2"; fi; }
primary_ip() { local n="NODE_IP${PRIMARY}[$1]"; echo "${!n}"; }
APISERVER=$(primary_ip node1)
SERVICE_CIDR=$(fam_list SERVICE_CIDR)
CLUSTER_CIDR=$(fam_list CLUSTER_CIDR)
ETCD_PORT=12379
# The images the suite runs (k8s.io/kubernetes test/utils/image/manifest.go at
# v1.37.2) and ours; pods use IfNotPresent (ours: Never), so none is pulled.
AGNHOST_IMAGE=registry.k8s.io/e2e-test-images/agnhost:2.66.1
# The ClusterNetworkPolicy suite (sigs.k8s.io/network-policy-api conformance,
# `cluster.sh cnp`) pins agnhost 2.45 and starts its servers with /bin/bash -c:
# the same agnhost binary under that tag, with Debian's static bash, and
# /sctp-connect, the SCTP probe for a kernel without SCTP sockets
# (test/conformance/sctpconnect; test/conformance/cnp runs it in place of
# `agnhost connect --protocol=sctp`).
AGNHOST_CNP_IMAGE=registry.k8s.io/e2e-test-images/agnhost:2.45
PAUSE_IMAGE=registry.k8s.io/pause:3.10.2
NFTPOLICY_IMAGE=nftpolicy.local/nftpolicy:conformance
# Fixed paths the kubelet (device-plugin socket, container log links) and CNI
# (its result cache) use whatever their configuration; removed at `down` when
# `up` created them.
HOST_PATHS=(/var/lib/kubelet /var/lib/cni /var/log/containers)
# Sysctls that kubelet, CNI and this script write in the machine's namespace
# (writing all.forwarding of IPv6 also writes default.forwarding and every
# interface's, so both are saved; restoring all first puts the interfaces back).
SYSCTLS=(net.ipv4.ip_forward vm.overcommit_memory kernel.panic kernel.panic_on_oops net.ipv4.ip_local_reserved_ports)
# The ClusterNetworkPolicy suite's hostNetwork servers (test/conformance/cnp's
# hostNetworkPorts): kept out of the nodes' ephemeral ports, or a socket of
# any process on node1 (the machine's own namespace) can hold one when the
# server starts, and the server crash-loops (seen: UDP 34347, a node peer test
# failed with "connection refused").
HOST_NETWORK_PORTS=34345-34352
has6 && SYSCTLS+=(net.ipv6.conf.all.forwarding net.ipv6.conf.default.forwarding)
[ "$CNI" = bridge ] && SYSCTLS+=(net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables)

KUBECONFIG="$STATE/admin.kubeconfig"
export KUBECONFIG
kubectl() { "$K8S/kubectl" --kubeconfig "$KUBECONFIG" "$@"; }
log() { printf '%s conformance: %s\n' "$(date -u +%T)" "$*" >&2; }
die() { log "$*"; exit 1; }

# in_node NODE CMD...: run CMD in NODE's network namespace.
in_node() {
  local node=$1; shift
  if [ "$node" = node1 ]; then "$@"; else nsenter --net="/run/netns/$NS2" -- "$@"; fi
}

# start NAME NODE CMD...: start CMD in the background in NODE's network
# namespace, output to $STATE/logs/NAME.log, PID to $STATE/pids/NAME.
start() {
  local name=$1 node=$2; shift 2
  if [ "$node" = node1 ]; then
    setsid "$@" >"$STATE/logs/$name.log" 2>&1 </dev/null &
  else
    setsid nsenter --net="/run/netns/$NS2" -- "$@" >"$STATE/logs/$name.log" 2>&1 </dev/null &
  fi
  echo $! >"$STATE/pids/$name"
}

# wait_for WHAT SECONDS CMD...: poll CMD once a second until it succeeds.
wait_for() {
  local what=$1 secs=$2; shift 2
  local i
  for ((i = 0; i < secs; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  die "timed out after ${secs}s waiting for $what (logs: $STATE/logs)"
}

# write_if_changed FILE: stdin to FILE only when it differs. kube-proxy exits
# when its config file is rewritten, so configs are never touched needlessly.
write_if_changed() {
  local tmp
  tmp=$(mktemp)
  cat >"$tmp"
  if cmp -s "$tmp" "$1"; then rm -f "$tmp"; else mv "$tmp" "$1"; fi
}

uplink() { ip -o route show default | awk '{for (i = 1; i < NF; i++) if ($i == "dev") {print $(i+1); exit}}'; }

# ---------------------------------------------------------------- assets

assets() {
  [ -x "$NFTPOLICY_BIN" ] || die "$NFTPOLICY_BIN missing: run make build"
  K8S_VERSION=$K8S_VERSION nice -n 10 "$root/hack/conformance-assets.sh" >/dev/null
  local img="$root/bin/conformance/images"
  mkdir -p "$img"
  (cd "$root" && CGO_ENABLED=0 go build -o "$root/bin/conformance/imagepack" ./test/conformance/imagepack)
  local pack="$root/bin/conformance/imagepack"
  # agnhost's own image runs /agnhost with `pause` by default; the pause image
  # is agnhost's `pause` subcommand (it sleeps and reaps, as pause does).
  "$pack" -o "$img/agnhost.tar" -name "$AGNHOST_IMAGE" -entrypoint /agnhost -cmd pause "$K8S/agnhost:/agnhost"
  (cd "$root" && CGO_ENABLED=0 go build -o "$root/bin/conformance/sctp-connect" ./test/conformance/sctpconnect)
  "$pack" -o "$img/agnhost-cnp.tar" -name "$AGNHOST_CNP_IMAGE" -entrypoint /agnhost -cmd pause \
    "$K8S/agnhost:/agnhost" /bin/bash-static:/bin/bash "$root/bin/conformance/sctp-connect:/sctp-connect"
  "$pack" -o "$img/pause.tar" -name "$PAUSE_IMAGE" -entrypoint /pause,pause "$K8S/agnhost:/pause"
  "$pack" -o "$img/nftpolicy.tar" -name "$NFTPOLICY_IMAGE" -entrypoint /nftpolicy "$NFTPOLICY_BIN:/nftpolicy" \
    "$(dirname "$NFTPOLICY_BIN")/nftpolicy-cni-gate:/nftpolicy-cni-gate"
}

# ---------------------------------------------------------------- PKI

pki() {
  local p="$STATE/pki"
  [ -f "$p/admin.crt" ] && return 0
  mkdir -p "$p"
  (
    cd "$p"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj /CN=npc-ca 2>/dev/null
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    cert() { # cert NAME SUBJECT [SANS]
      openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
      local ext=/dev/null
      if [ -n "${3:-}" ]; then printf 'subjectAltName=%s\n' "$3" >"$1.ext"; ext="$1.ext"; fi
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -out "$1.crt" -extfile "$ext" 2>/dev/null
    }
    cert apiserver /CN=kube-apiserver \
      "IP:${NODE_IP4[node1]},IP:${NODE_IP6[node1]},IP:10.96.0.1,IP:fd99:96::1,IP:127.0.0.1,IP:::1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
    # One system:masters identity for every component and for the suite: this
    # cluster exists to test nftpolicy, whose own RBAC is what config/ grants.
    cert admin "/O=system:masters/CN=npc-admin"
  )
  cat >"$KUBECONFIG" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: npc
  cluster: {server: "https://$(hostport "$APISERVER" 6443)", certificate-authority: "$p/ca.crt"}
users:
- name: admin
  user: {client-certificate: "$p/admin.crt", client-key: "$p/admin.key"}
contexts:
- name: npc
  context: {cluster: npc, user: admin}
current-context: npc
EOF
}

# ---------------------------------------------------------------- network

network_up() {
  local up
  up=$(uplink)
  [ -n "$up" ] || die "no default route: cannot tell the uplink to guard"
  echo "$up" >"$STATE/uplink"
  [ -f "$STATE/tables.before" ] || nft list tables >"$STATE/tables.before"
  if [ ! -f "$STATE/paths.before" ]; then
    local p
    for p in "${HOST_PATHS[@]}"; do [ ! -e "$p" ] || echo "$p"; done >"$STATE/paths.before"
  fi
  # The guard first: nothing we create may send traffic out of the machine.
  nft -f - <<EOF
table inet npc-guard
delete table inet npc-guard
table inet npc-guard {
  chain forward {
    type filter hook forward priority -400; policy accept;
    oifname "$up" counter drop comment "conformance cluster: no forwarding out of the machine"
  }
  chain postrouting {
    type filter hook postrouting priority 400; policy accept;
    oifname "$up" ip daddr { $NODE_NET4, $CLUSTER_CIDR4, $SERVICE_CIDR4 } counter drop comment "conformance cluster ranges stay inside"
    oifname "$up" ip saddr { $NODE_NET4, $CLUSTER_CIDR4 } counter drop
    oifname "$up" ip6 daddr { $NODE_NET6, $CLUSTER_CIDR6, $SERVICE_CIDR6 } counter drop comment "conformance cluster ranges stay inside"
    oifname "$up" ip6 saddr { $NODE_NET6, $CLUSTER_CIDR6 } counter drop
  }
}
EOF
  if [ "$CNI" = bridge ] && [ ! -d /proc/sys/net/bridge ]; then
    # br_netfilter: the module that passes bridged frames through the
    # inet/ip/ip6 hooks (built in on some kernels, where this directory is
    # always there).
    modprobe br_netfilter || die "CNI=bridge needs br_netfilter (modprobe br_netfilter failed)"
  fi
  for s in "${SYSCTLS[@]}"; do
    [ -f "$STATE/sysctl.saved" ] && grep -q "^$s=" "$STATE/sysctl.saved" && continue
    echo "$s=$(sysctl -n "$s")" >>"$STATE/sysctl.saved"
  done
  ip link show "$BRIDGE" >/dev/null 2>&1 || {
    ip link add "$BRIDGE" type bridge
    # nodad: the apiserver binds the address at once.
    has4 && ip addr add "${NODE_IP4[node1]}/24" dev "$BRIDGE"
    has6 && ip addr add "${NODE_IP6[node1]}/64" dev "$BRIDGE" nodad
    ip link set "$BRIDGE" up
  }
  [ -e "/run/netns/$NS2" ] || {
    ip netns add "$NS2"
    ip link add "$NS2" type veth peer name eth0 netns "$NS2"
    ip link set "$NS2" master "$BRIDGE" up
    ip -n "$NS2" link set lo up
    has4 && ip -n "$NS2" addr add "${NODE_IP4[node2]}/24" dev eth0
    has6 && ip -n "$NS2" addr add "${NODE_IP6[node2]}/64" dev eth0 nodad
    ip -n "$NS2" link set eth0 up
    # node2's default route: Service addresses are routed before kube-proxy
    # rewrites them, so they need some route; the guard keeps them in.
    has4 && ip -n "$NS2" route add default via "${NODE_IP4[node1]}"
    has6 && ip -n "$NS2" -6 route add default via "${NODE_IP6[node1]}"
    has4 && ip netns exec "$NS2" sysctl -qw net.ipv4.ip_forward=1
    has6 && ip netns exec "$NS2" sysctl -qw net.ipv6.conf.all.forwarding=1
    ip netns exec "$NS2" sysctl -qw net.ipv4.ip_local_reserved_ports="$HOST_NETWORK_PORTS"
    true
  }
  local reserved
  reserved=$(sysctl -n net.ipv4.ip_local_reserved_ports)
  case ",$reserved," in
    *",$HOST_NETWORK_PORTS,"*) ;;
    ,,) sysctl -qw net.ipv4.ip_local_reserved_ports="$HOST_NETWORK_PORTS" ;;
    *) sysctl -qw net.ipv4.ip_local_reserved_ports="$reserved,$HOST_NETWORK_PORTS" ;;
  esac
  has4 && ip route replace "${POD_CIDR4[node2]}" via "${NODE_IP4[node2]}" dev "$BRIDGE"
  has6 && ip -6 route replace "${POD_CIDR6[node2]}" via "${NODE_IP6[node2]}" dev "$BRIDGE"
  has4 && sysctl -qw net.ipv4.ip_forward=1
  has6 && sysctl -qw net.ipv6.conf.all.forwarding=1
  if [ "$CNI" = bridge ]; then
    # Same-node pods talk across the bridge: without these the frames never
    # reach the forward hook, and no policy applies between them. Per network
    # namespace (node2's goes with it).
    local ns
    for ns in node1 node2; do
      in_node "$ns" sysctl -qw net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1
    done
  fi
}

network_down() {
  # Whatever shape `up` had: each step is a no-op when its object is absent.
  ip route del "${POD_CIDR4[node2]}" via "${NODE_IP4[node2]}" 2>/dev/null || true
  ip -6 route del "${POD_CIDR6[node2]}" via "${NODE_IP6[node2]}" 2>/dev/null || true
  ip link del "$NS2" 2>/dev/null || true
  [ -e "/run/netns/$NS2" ] && ip netns del "$NS2"
  ip link show "$BRIDGE" >/dev/null 2>&1 && ip link del "$BRIDGE"
  ip link show "$POD_BRIDGE" >/dev/null 2>&1 && ip link del "$POD_BRIDGE"
  # Tables the cluster made in the machine's namespace: kube-proxy's, the
  # agent's, and the kubelet's iptables-nft chains (KUBE-FIREWALL and canaries).
  # A table that was not there before `up` goes whole; in one that was, only
  # the KUBE-* chains and the rules jumping to them. node2's went with its netns.
  nft delete table ip kube-proxy 2>/dev/null || true
  nft delete table ip6 kube-proxy 2>/dev/null || true
  nft delete table inet nftpolicy 2>/dev/null || true
  local fam tbl ch h
  for fam in ip ip6; do
    for tbl in mangle nat filter; do
      nft list table "$fam" "$tbl" >/dev/null 2>&1 || continue
      if ! grep -qx "table $fam $tbl" "$STATE/tables.before" 2>/dev/null; then
        nft delete table "$fam" "$tbl"
        continue
      fi
      for ch in $(nft list table "$fam" "$tbl" | awk '$1 == "chain" {print $2}'); do
        for h in $(nft -a list chain "$fam" "$tbl" "$ch" | awk '/jump KUBE-/ {print $NF}'); do
          nft delete rule "$fam" "$tbl" "$ch" handle "$h"
        done
      done
      for ch in $(nft list table "$fam" "$tbl" | awk '$1 == "chain" && $2 ~ /^KUBE-/ {print $2}'); do
        nft flush chain "$fam" "$tbl" "$ch" && nft delete chain "$fam" "$tbl" "$ch"
      done
    done
  done
  if [ -f "$STATE/sysctl.saved" ]; then
    local kv
    while read -r kv; do sysctl -qw "$kv" || log "could not restore $kv"; done <"$STATE/sysctl.saved"
  fi
  # Last: the guard, once nothing of ours can forward any more.
  nft delete table inet npc-guard 2>/dev/null || true
}

# ---------------------------------------------------------------- cgroups

# The kubelet wants its cgroupRoot to exist in every cgroup v1 hierarchy.
cgroups_up() {
  local node=$1 m d
  for m in $(findmnt -rn -t cgroup,cgroup2 -o TARGET); do
    d="$m/npc-$node"
    [ -d "$d" ] && continue
    mkdir "$d"
    if [ -f "$m/cpuset.cpus" ]; then
      cat "$m/cpuset.cpus" >"$d/cpuset.cpus"
      cat "$m/cpuset.mems" >"$d/cpuset.mems"
    fi
  done
}

# cgroups_down NODE: kill what is left in NODE's cgroups (by PID), remove them.
cgroups_down() {
  local node=$1 m pid
  for m in $(findmnt -rn -t cgroup,cgroup2 -o TARGET); do
    [ -d "$m/npc-$node" ] || continue
    find "$m/npc-$node" -name cgroup.procs -exec cat {} + 2>/dev/null | while read -r pid; do
      kill -9 "$pid" 2>/dev/null || true
    done
  done
  sleep 0.5
  for m in $(findmnt -rn -t cgroup,cgroup2 -o TARGET); do
    [ -d "$m/npc-$node" ] || continue
    find "$m/npc-$node" -depth -type d -exec rmdir {} \; 2>/dev/null || log "could not remove $m/npc-$node"
  done
}

# ---------------------------------------------------------------- nodes

containerd_up() {
  local node=$1; local d="$STATE/$node"
  mkdir -p "$d/cni" "$d/cni-bin" "$d/containerd" "$d/pod-logs" "$d/kubelet"
  # The node's plugin directory: the system's plugins, linked, and the agent's
  # CNI gate once it installs itself (never in /usr/lib/cni).
  local p
  for p in /usr/lib/cni/*; do ln -sfn "$p" "$d/cni-bin/"; done
  # One range and one default route per family; the pod's first address is
  # of the primary family, and so is status.podIP.
  local f ranges=() routes=() cidr
  for f in "${FAMILIES[@]}"; do
    cidr="POD_CIDR${f}[$node]"
    ranges+=("[{\"subnet\": \"${!cidr}\"}]")
    if [ "$f" = 4 ]; then routes+=('{"dst": "0.0.0.0/0"}'); else routes+=('{"dst": "::/0"}'); fi
  done
  local plugin
  case "$CNI" in
    # Routed: a /32 (/128) route per pod on the node, a veth pair per pod.
    ptp) plugin='"type": "ptp",' ;;
    # Bridged, as flannel and kubeadm's bridge examples wire pods: the bridge
    # holds the gateway address; hairpin lets a pod reach itself by a Service.
    bridge) plugin="\"type\": \"bridge\", \"bridge\": \"$POD_BRIDGE\", \"isGateway\": true, \"hairpinMode\": true," ;;
  esac
  cat >"$d/cni/10-npc.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "npc",
  "plugins": [{
    $plugin
    "ipMasq": false,
    "ipam": {
      "type": "host-local",
      "ranges": [$(IFS=,; echo "${ranges[*]}")],
      "routes": [$(IFS=,; echo "${routes[*]}")],
      "dataDir": "$d/ipam"
    }
  }]
}
EOF
  cat >"$d/containerd.toml" <<EOF
version = 2
root = "$d/containerd/root"
state = "$d/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.internal.v1.opt", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "$d/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # runc cannot write oom_score_adj below its own without CAP_SYS_RESOURCE.
  restrict_oom_score_adj = true
  # Pod network namespaces under our state, not /run/netns.
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$d/cni-bin"
    conf_dir = "$d/cni"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$d/runc"
EOF
  start "containerd-$node" "$node" containerd --config "$d/containerd.toml"
  wait_for "containerd on $node" 30 ctr --address "$d/containerd.sock" version
  local t
  for t in agnhost agnhost-cnp pause nftpolicy; do
    ctr --address "$d/containerd.sock" -n k8s.io images import --no-unpack=false "$root/bin/conformance/images/$t.tar" >/dev/null
  done
}

kubelet_up() {
  local node=$1; local d="$STATE/$node"
  cgroups_up "$node"
  cat >"$d/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: "$(primary_ip "$node")"
port: 10250
readOnlyPort: 0
healthzPort: 0
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: "$STATE/pki/ca.crt"}
authorization: {mode: AlwaysAllow}
cgroupDriver: cgroupfs
cgroupRoot: /npc-$node
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$d/containerd.sock
podLogsDir: $d/pod-logs
resolvConf: /etc/resolv.conf
clusterDomain: cluster.local
# Never garbage-collect the imported images: they cannot be pulled back.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
serializeImagePulls: false
# As a large cluster's node pools would: the agent's startup taint, which it
# removes once the node's policies are in force, so that no pod lands on a node
# before its agent enforces (README, "New nodes"). deploy checks it went.
registerWithTaints:
- {key: nftpolicy.io/agent-not-ready, effect: NoSchedule}
EOF
  start "kubelet-$node" "$node" "$K8S/kubelet" --config="$d/kubelet.yaml" --kubeconfig="$KUBECONFIG" \
    --hostname-override="$node" --node-ip="${NODE_IP[$node]}" --root-dir="$d/kubelet" --cert-dir="$d/kubelet/pki" --v=1
}

proxy_up() {
  local node=$1; local d="$STATE/$node"
  write_if_changed "$d/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
clusterCIDR: $CLUSTER_CIDR
hostnameOverride: $node
clientConnection: {kubeconfig: "$KUBECONFIG"}
healthzBindAddress: "$(hostport "$(primary_ip "$node")" 10256)"
metricsBindAddress: 127.0.0.1:10249
# Leave the machine's conntrack sysctls alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
  start "kube-proxy-$node" "$node" "$K8S/kube-proxy" --config="$d/kube-proxy.yaml" --v=1
}

control_plane_up() {
  mkdir -p "$STATE/etcd"
  start etcd node1 "$K8S/etcd" --name npc --data-dir "$STATE/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
    --initial-cluster "npc=http://127.0.0.1:$((ETCD_PORT + 1))" --unsafe-no-fsync
  local p="$STATE/pki"
  start kube-apiserver node1 "$K8S/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --bind-address="$APISERVER" --advertise-address="$APISERVER" --secure-port=6443 \
    --tls-cert-file="$p/apiserver.crt" --tls-private-key-file="$p/apiserver.key" \
    --client-ca-file="$p/ca.crt" \
    --kubelet-client-certificate="$p/admin.crt" --kubelet-client-key="$p/admin.key" \
    --kubelet-preferred-address-types=InternalIP \
    --service-account-key-file="$p/sa.pub" --service-account-signing-key-file="$p/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --authorization-mode=Node,RBAC --allow-privileged=true
  wait_for "the apiserver" 90 kubectl get --raw /readyz
  start kube-controller-manager node1 "$K8S/kube-controller-manager" --kubeconfig="$KUBECONFIG" \
    --leader-elect=false --secure-port=0 \
    --service-account-private-key-file="$p/sa.key" --root-ca-file="$p/ca.crt" \
    --service-cluster-ip-range="$SERVICE_CIDR" --cluster-cidr="$CLUSTER_CIDR" --allocate-node-cidrs=false
  start kube-scheduler node1 "$K8S/kube-scheduler" --kubeconfig="$KUBECONFIG" --leader-elect=false --secure-port=0
}

# kustomize DIR: `kubectl kustomize DIR`, its hostPaths under $STATE (the
# kustomizations name the default state directory).
kustomize() {
  kubectl kustomize "$1" | sed "s#path: /var/lib/nftpolicy-conformance\$#path: $STATE#"
}

deploy() {
  log "deploying nftpolicy (kubectl apply -k test/conformance, hostPaths under $STATE)"
  kustomize "$root/test/conformance" | kubectl apply -f - >"$STATE/logs/deploy.log"
  local arg
  for arg in ${AGENT_ARGS:-}; do
    log "agent flag $arg (AGENT_ARGS)"
    kubectl -n nftpolicy-system patch daemonset nftpolicy-agent --type=json \
      -p "[{\"op\":\"add\",\"path\":\"/spec/template/spec/containers/0/args/-\",\"value\":\"$arg\"}]" >>"$STATE/logs/deploy.log"
  done
  kubectl -n nftpolicy-system rollout status daemonset/nftpolicy-agent --timeout=180s >&2
  local ready
  ready=$(kubectl -n nftpolicy-system get daemonset nftpolicy-agent -o jsonpath='{.status.numberReady}')
  [ "$ready" = 2 ] || die "nftpolicy agent ready on $ready of 2 nodes"
  # The kubelets registered the nodes with the startup taint; each agent removes
  # it from its own Node after its first full sync.
  local start=$SECONDS tainted
  while :; do
    tainted=$(kubectl get nodes -o jsonpath='{range .items[*]}{.metadata.name}{" "}{.spec.taints[*].key}{"\n"}{end}' | grep nftpolicy.io/agent-not-ready | cut -d' ' -f1 | tr '\n' ' ' || true)
    [ -z "$tainted" ] && break
    [ $((SECONDS - start)) -ge 60 ] && die "the agents did not remove the startup taint from: $tainted"
    sleep 0.5
  done
  log "startup taint removed from both nodes by their agents"
}

cluster_exists() { [ -d "$STATE/pids" ] && [ -n "$(ls "$STATE/pids")" ]; }

# system_tools installs, from Debian's packages, the node software this script
# runs and a fresh machine lacks (the project's own binaries are built by assets).
system_tools() {
  local -A pkgs=([containerd]=containerd [ctr]=containerd [runc]=runc [conntrack]=conntrack
    [nft]=nftables [iptables]=iptables [nsenter]=util-linux [/usr/lib/cni/ptp]=containernetworking-plugins
    [/bin/bash-static]=bash-static)
  local missing=() tool
  for tool in "${!pkgs[@]}"; do
    if [[ $tool == /* ]]; then [ -x "$tool" ] && continue; else command -v "$tool" >/dev/null 2>&1 && continue; fi
    missing+=("${pkgs[$tool]}")
  done
  [ ${#missing[@]} -eq 0 ] && return
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  log "installing ${missing[*]}"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}

up() {
  [ "$(id -u)" = 0 ] || die "must run as root"
  cluster_exists && die "a cluster is already up (state $STATE): run make cluster-down"
  local t0=$SECONDS
  system_tools
  log "building what is missing (bin/k8s/$K8S_VERSION, bin/conformance)"
  assets
  mkdir -p "$STATE/logs" "$STATE/pids"
  # The shape, for `e2e` and the kept logs (down needs none: it removes what
  # any shape makes).
  echo "IP_FAMILY=$IP_FAMILY CNI=$CNI" >"$STATE/logs/shape"
  pki
  network_up
  log "network up ($IP_FAMILY, CNI $CNI): $BRIDGE ${NODE_IP[node1]}, netns $NS2 ${NODE_IP[node2]}, guard table inet npc-guard on $(cat "$STATE/uplink")"
  control_plane_up
  local n
  for n in "${NODES[@]}"; do containerd_up "$n"; done
  for n in "${NODES[@]}"; do kubelet_up "$n"; done
  for n in "${NODES[@]}"; do proxy_up "$n"; done
  wait_for "both nodes Ready" 120 kubectl wait --for=condition=Ready node/node1 node/node2 --timeout=1s
  # Each Node's pod CIDRs, as the node IPAM controller assigns them on kubeadm
  # or kind clusters: the ranges its CNI config hands out, which the agent's
  # --unknown-pod-cidrs=node reads.
  local cidrs
  for n in "${NODES[@]}"; do
    cidrs=$(fam_list POD_CIDR "$n")
    kubectl patch node "$n" --type merge -p "{\"spec\":{\"podCIDR\":\"${cidrs%%,*}\",\"podCIDRs\":[\"${cidrs//,/\",\"}\"]}}" >/dev/null
  done
  wait_for "the default service account" 60 kubectl -n default get serviceaccount default
  log "cluster up in $((SECONDS - t0))s: KUBECONFIG=$KUBECONFIG"
  deploy
  log "nftpolicy ready on both nodes ($((SECONDS - t0))s)"
}

# stop NAME: SIGTERM the PID in $STATE/pids/NAME, SIGKILL after 10 s.
stop() {
  local f="$STATE/pids/$1" pid i
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if kill -TERM "$pid" 2>/dev/null; then
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

down() {
  [ -d "$STATE" ] || { log "nothing to tear down ($STATE absent)"; return 0; }
  # Best effort: one step failing must not leave the rest standing.
  set +e
  log "tearing down"
  local n d id
  for n in "${NODES[@]}"; do stop "kube-proxy-$n"; stop "kubelet-$n"; done
  # Pods: kill and delete every task through its containerd, so that the
  # shims exit, then anything left in the node's cgroups.
  for n in "${NODES[@]}"; do
    d="$STATE/$n"
    if [ -S "$d/containerd.sock" ] && [ -f "$STATE/pids/containerd-$n" ]; then
      for id in $(ctr --address "$d/containerd.sock" -n k8s.io tasks ls -q 2>/dev/null); do
        ctr --address "$d/containerd.sock" -n k8s.io tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
      done
      sleep 1
      for id in $(ctr --address "$d/containerd.sock" -n k8s.io tasks ls -q 2>/dev/null); do
        ctr --address "$d/containerd.sock" -n k8s.io tasks delete -f "$id" >/dev/null 2>&1 || true
      done
    fi
    cgroups_down "$n"
    stop "containerd-$n"
  done
  stop kube-scheduler
  stop kube-controller-manager
  stop kube-apiserver
  stop etcd
  # Mounts left under our state (container rootfs, shm, pod netns, volumes).
  local m
  for m in $(findmnt -rn -o TARGET | grep "^$STATE/" | sort -r); do umount -l "$m" 2>/dev/null || true; done
  network_down
  # What the kubelet and CNI left at fixed paths: the whole path if `up`
  # made it, else only what points into our state.
  local p
  for p in "${HOST_PATHS[@]}"; do
    if [ -f "$STATE/paths.before" ] && ! grep -qx "$p" "$STATE/paths.before"; then rm -rf "$p"; fi
  done
  find /var/log/containers -maxdepth 1 -type l -lname "$STATE/*" -delete 2>/dev/null || true
  { grep -rl --null "$STATE/" /var/lib/cni/results 2>/dev/null || true; } | xargs -0r rm -f
  # The shims' socket directory (containerd 1.6 puts it there whatever its
  # state directory), when nothing else uses it.
  rmdir /run/containerd/s /run/containerd 2>/dev/null || true
  rm -rf "$STATE"
  log "down"
}

e2e() {
  local report="$STATE/e2e"
  mkdir -p "$report"
  log "e2e.test --ginkgo.focus='$FOCUS' --ginkgo.skip='$SKIP', $PARALLEL processes, cluster $(cat "$STATE/logs/shape" 2>/dev/null) (log: $report/e2e.log)"
  local rc=0 args=(--provider=local --kubeconfig="$KUBECONFIG" --report-dir="$report" --dump-logs-on-failure=false)
  # shellcheck disable=SC2206 # E2E_ARGS is split on purpose
  args+=($E2E_ARGS)
  (
    cd "$report"
    if [ "$PARALLEL" -gt 1 ]; then
      # The specs spend their time waiting on probe timeouts, not on CPU, and
      # upstream runs them in parallel (each spec has its own namespaces).
      # ginkgo compares its version with the go.mod it finds above the test
      # binary: run a link of it outside this repository (whose go.mod has
      # nothing to do with e2e.test's ginkgo) to avoid a false warning.
      ln -f "$K8S/e2e.test" "$STATE/e2e.test" 2>/dev/null || cp "$K8S/e2e.test" "$STATE/e2e.test"
      "$K8S/ginkgo" --procs="$PARALLEL" --focus="$FOCUS" --skip="$SKIP" --timeout=4h --no-color \
        --junit-report=junit.xml "$STATE/e2e.test" -- "${args[@]}"
    else
      "$K8S/e2e.test" --ginkgo.focus="$FOCUS" --ginkgo.skip="$SKIP" --ginkgo.timeout=4h --ginkgo.no-color \
        --ginkgo.junit-report=junit.xml "${args[@]}"
    fi
  ) >"$report/e2e.log" 2>&1 || rc=$?
  # The ginkgo summary: the failures list and the "Ran N of M Specs" block.
  sed -n '/^Summarizing [0-9]* Failure/,$p; /^Ran [0-9]* of [0-9]* Specs/,$p' "$report/e2e.log" | awk '!seen[$0]++'
  return $rc
}

# cnp runs the upstream ClusterNetworkPolicy conformance suite (the
# conformance package of sigs.k8s.io/network-policy-api, the version go.mod
# pins) through our test/conformance/cnp against the running cluster, after
# applying that module's experimental CRD (standard plus nodes, named ports
# and domainNames; idempotent). The agent watches for the CRD, so the cluster
# needs no restart. Each step returns on failure itself: `run` calls this
# where errexit does not apply.
cnp() {
  local report="$STATE/cnp" rc=0 dir
  mkdir -p "$report"
  dir=$(cd "$root" && go list -m -f '{{.Dir}}' sigs.k8s.io/network-policy-api) || return
  kubectl apply --server-side -f "$dir/config/crd/experimental/policy.networking.k8s.io_clusternetworkpolicies.yaml" >&2 || return
  kubectl wait --for=condition=Established crd/clusternetworkpolicies.policy.networking.k8s.io --timeout=60s >&2 || return
  (cd "$root" && go test -c -o "$STATE/cnp.test" ./test/conformance/cnp) || return
  cnp_enforced || return
  log "ClusterNetworkPolicy suite ($(basename "$dir")), cluster $(cat "$STATE/logs/shape" 2>/dev/null) (log: $report/cnp.log)"
  (
    cd "$report"
    NFTPOLICY_CONFORMANCE_KUBECONFIG="$KUBECONFIG" NFTPOLICY_CNP_REPORT="$report/report.yaml" \
      NFTPOLICY_CNP_SCTP="$CNP_SCTP" NFTPOLICY_VERSION="${NFTPOLICY_VERSION:-dev}" \
      "$STATE/cnp.test" -test.v -test.timeout 2h -test.run "^TestClusterNetworkPolicyConformance\$${CNP_RUN:+/$CNP_RUN}"
  ) >"$report/cnp.log" 2>&1 || rc=$?
  # The test's own summary (one line per upstream test) and go test's verdict.
  sed -n '/upstream ClusterNetworkPolicy suite:/,/SCTP probes run/p' "$report/cnp.log"
  grep -E '^(--- |PASS$|FAIL$|ok |FAIL\s)' "$report/cnp.log" || true
  return $rc
}

# rollout restarts the agent DaemonSet while probing allowed and denied
# connections on both nodes (test/conformance/rollout_test.go): policy must
# hold through a rolling update; it reports each node's step.
rollout() {
  local report="$STATE/rollout" rc=0
  mkdir -p "$report"
  (cd "$root" && go test -c -o "$STATE/rollout.test" ./test/conformance) || return
  log "rolling update of the agents under probes (log: $report/rollout.log)"
  CONFORMANCE_KUBECONFIG="$KUBECONFIG" "$STATE/rollout.test" -test.v -test.timeout 20m \
    -test.run '^TestRollingUpdate$' >"$report/rollout.log" 2>&1 || rc=$?
  grep -E 'rollout_|^(--- |PASS$|FAIL$|ok |FAIL\s)' "$report/rollout.log" | grep -v inconclusive || true
  grep -E 'want allowed' "$report/rollout.log" | head -20 || true
  return $rc
}

# gate proves the CNI gate on the running cluster
# (test/conformance/gate_test.go): node2 loses its agent and its table, as at a
# reboot, and a pod created there waits until the agent is back and the table
# is in force. It puts node2's agent back.
gate() {
  local report="$STATE/gate" rc=0
  mkdir -p "$report"
  (cd "$root" && go test -c -o "$STATE/conformance.test" ./test/conformance) || return
  log "the CNI gate on a rebooted node (log: $report/gate.log)"
  CONFORMANCE_KUBECONFIG="$KUBECONFIG" CONFORMANCE_NODE_NETNS="node2=/run/netns/$NS2" \
    "$STATE/conformance.test" -test.v -test.timeout 10m \
    -test.run '^TestRebootedNodeWaitsForTable$' >"$report/gate.log" 2>&1 || rc=$?
  grep -E 'cni_gate_|^(--- |PASS$|FAIL$|ok |FAIL\s)' "$report/gate.log" || true
  return $rc
}

# uninstall removes nftpolicy as the README's uninstall does: the agents
# deleted, then config/cleanup (test/conformance/cleanup) on every node. Each
# node must be left without the gate's conflist entry and the table, and a pod
# on node2 must start (a gate left behind would hold it for good). The gate's
# plugin binary must be gone too, unless the cleanup said it kept it: it must
# while a pod set up with the gate lives (libcni's cache names it, and CRI-O
# tears such a pod down with that configuration; README, "Uninstall"). The
# agents' logs are kept first. Each step returns on failure.
uninstall() {
  local report="$STATE/uninstall" n pod
  mkdir -p "$report"
  keep_logs
  log "uninstalling: the agent DaemonSet deleted, then config/cleanup (log: $report/uninstall.log)"
  {
    kubectl -n nftpolicy-system delete daemonset nftpolicy-agent --cascade=foreground --timeout=60s &&
      kustomize "$root/test/conformance/cleanup" | kubectl apply -f - &&
      kubectl -n nftpolicy-system rollout status daemonset/nftpolicy-cleanup --timeout=120s
  } >"$report/uninstall.log" 2>&1 || { log "config/cleanup did not finish (log: $report/uninstall.log)"; return 1; }
  local left=()
  for n in "${NODES[@]}"; do
    grep -qs '"type": *"nftpolicy"' "$STATE/$n/cni/"* && left+=("$n: the gate's entry in $(grep -ls '"type": *"nftpolicy"' "$STATE/$n/cni/"*)")
    if [ -e "$STATE/$n/cni-bin/nftpolicy" ]; then
      local kept cpod
      cpod=$(kubectl -n nftpolicy-system get pods -l app.kubernetes.io/component=cleanup \
        --field-selector "spec.nodeName=$n" -o name 2>/dev/null | head -n 1)
      kept=$([ -n "$cpod" ] && kubectl -n nftpolicy-system logs "$cpod" -c cleanup 2>/dev/null | grep -m 1 'plugin .* kept' || true)
      if [ -n "$kept" ]; then
        log "config/cleanup kept $n's plugin, as it must while pods set up with the gate live: $kept"
      else
        left+=("$n: $STATE/$n/cni-bin/nftpolicy")
      fi
    fi
    in_node "$n" nft list table inet nftpolicy >/dev/null 2>&1 && left+=("$n: table inet nftpolicy")
  done
  if [ ${#left[@]} -gt 0 ]; then
    log "config/cleanup left: ${left[*]}"
    return 1
  fi
  pod=uninstalled-node2
  kubectl run "$pod" --image="$AGNHOST_IMAGE" --image-pull-policy=Never --restart=Never \
    --overrides='{"spec": {"nodeName": "node2", "terminationGracePeriodSeconds": 0}}' -- pause >>"$report/uninstall.log" 2>&1 || return
  if ! kubectl wait --for=condition=Ready "pod/$pod" --timeout=60s >>"$report/uninstall.log" 2>&1; then
    kubectl describe pod "$pod" >>"$report/uninstall.log" 2>&1
    log "after config/cleanup a pod on node2 did not start within 60s (log: $report/uninstall.log)"
    return 1
  fi
  kubectl delete pod "$pod" --wait=false >>"$report/uninstall.log" 2>&1
  kubectl delete --wait=false -f <(kustomize "$root/test/conformance/cleanup") >>"$report/uninstall.log" 2>&1
  log "config/cleanup removed the CNI gate and the table from every node; a pod started on node2"
}

# cnp_enforced waits until every agent enforces ClusterNetworkPolicy. An agent
# started before the CRD learns of it from its watch of the CRD object, within
# seconds (controllers/crdwatch.go); until then a suite would judge
# ClusterNetworkPolicies no agent reads yet (its first test failed so, 10 s in,
# on 2026-12-03, when agents asked discovery every 30 s).
cnp_enforced() {
  local start=$SECONDS pod pods missing
  pods=$(kubectl -n nftpolicy-system get pods -o name) || return
  while :; do
    missing=""
    for pod in $pods; do
      kubectl -n nftpolicy-system logs "$pod" 2>/dev/null | grep -q '"msg":"enforcing ClusterNetworkPolicy"' || missing+=" $pod"
    done
    if [ -z "$missing" ]; then
      log "every agent enforces ClusterNetworkPolicy ($((SECONDS - start))s after the CRD)"
      return 0
    fi
    if [ $((SECONDS - start)) -ge 120 ]; then
      log "after $((SECONDS - start))s these agents do not enforce ClusterNetworkPolicy yet:$missing"
      return 1
    fi
    sleep 2
  done
}

# finish: keep the suite's log and the component logs (the state directory
# goes with `down`), then tear down. The EXIT trap of `run`.
# keep_logs: the agents' logs and each node's ruleset, in $STATE/logs.
keep_logs() {
  local n pod
  for n in "${NODES[@]}"; do
    in_node "$n" nft list ruleset >"$STATE/logs/ruleset-$n.nft" 2>&1 || true
    pod=$(kubectl -n nftpolicy-system get pods -o name --field-selector "spec.nodeName=$n" 2>/dev/null | head -1) || true
    [ -z "$pod" ] || kubectl -n nftpolicy-system logs "$pod" >"$STATE/logs/agent-$n.log" 2>&1 || true
  done
}

finish() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -d "$STATE/logs" ]; then
    # As the suites left them; uninstall kept them before it removed the agents.
    [ -d "$STATE/uninstall" ] || keep_logs
    rm -rf "$root/bin/conformance/last-run" && mkdir -p "$root/bin/conformance/last-run"
    cp -r "$STATE/logs" "$root/bin/conformance/last-run/"
    [ -d "$STATE/e2e" ] && cp -r "$STATE/e2e" "$root/bin/conformance/last-run/"
    [ -d "$STATE/cnp" ] && cp -r "$STATE/cnp" "$root/bin/conformance/last-run/"
    [ -d "$STATE/rollout" ] && cp -r "$STATE/rollout" "$root/bin/conformance/last-run/"
    [ -d "$STATE/gate" ] && cp -r "$STATE/gate" "$root/bin/conformance/last-run/"
    [ -d "$STATE/uninstall" ] && cp -r "$STATE/uninstall" "$root/bin/conformance/last-run/"
  fi
  down
  log "total $((SECONDS - T0))s, exit $rc, IP_FAMILY=$IP_FAMILY CNI=$CNI (logs: bin/conformance/last-run)"
  exit $rc
}

run() {
  T0=$SECONDS
  # Never tear down a cluster that `make cluster-up` keeps.
  cluster_exists && die "a cluster is already up (state $STATE): run make cluster-down first"
  trap finish EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  up
  local rc=0
  # First: the suites run on the nodes it hands back.
  gate || rc=$?
  if [ "$SUITE" != cnp ]; then e2e || rc=$?; fi
  if [ "$SUITE" != netpol ]; then cnp || rc=$?; fi
  # It replaces the agents the suites ran against.
  rollout || rc=$?
  # Last: nftpolicy goes.
  uninstall || rc=$?
  return $rc
}

case "${1:-}" in
  up) trap 'rc=$?; [ $rc = 0 ] || log "up failed: run make cluster-down to clean up"' EXIT; up ;;
  down) down ;;
  e2e) trap 'exit 130' INT; e2e ;;
  cnp) trap 'exit 130' INT; cnp ;;
  rollout) trap 'exit 130' INT; rollout ;;
  gate) trap 'exit 130' INT; gate ;;
  uninstall) trap 'exit 130' INT; uninstall ;;
  run) run ;;
  *) echo "usage: $0 up|down|e2e|cnp|rollout|gate|uninstall|run" >&2; exit 2 ;;
esac
