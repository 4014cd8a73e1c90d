#!/usr/bin/env bash
# make bench: every benchmark of test/bench (README.md), then the summary lines,
# last, in a fixed order. Needs root and KUBEBUILDER_ASSETS (the Makefile sets it).
#
# Environment: NFTPOLICY_BENCH_ROUNDS (datapath rounds, default 5: fewer are only
# for trying things out), NFTPOLICY_BENCH_DATAPATH_SECONDS (time budget for rounds
# beyond 5, default 420),
# NFTPOLICY_BENCH_PLOT (where the plot goes, default test/bench/conn-rate.png),
# NFTPOLICY_BENCH_100K=1 (also the control-plane benchmark at 100,000 pods),
# NFTPOLICY_BENCH_FANOUT=1 (also the apiserver fan-out benchmark, ~40 min).
set -uo pipefail
cd "$(dirname "$0")/../.."

summary=(
  b1_conn_ratio_typical b1_conn_ratio_adversarial b1_vs_peer_adversarial b6_ns_per_policy
  b11_conn_ratio_control b11_conn_ratio_ct b11_conn_ratio_typical b11_conn_ratio_typical_ci95 b11_conn_ratio_typical_vs_ct
  b11_conn_ratio_adversarial b11_rr_ratio_typical b11_rr_ratio_typical_vs_ct b11_bulk_ratio_typical b11_bulk_ratio_typical_vs_ct
  b11_flow_ns_added_ct b11_flow_ns_added_typical
  b1_rr_ratio b1_bulk_ratio b7_change_10k_commit_ms b7_change_10k_extra_cpu_ms b7_sweep_10k_ms
  b7_flow_ns_conntrack b7_flow_ns_chains
  b10_typical_ct_conn_ratio b10_typical_current_conn_ratio_vs_ct b10_adversarial_current_conn_ratio_vs_ct
  b10_typical_current_flow_ns_vs_ct b10_adversarial_current_flow_ns_vs_ct b10_adversarial_interval_flow_ns_vs_ct
  b2_policy_enforce_p50_ms b2_policy_enforce_p99_ms b2_pod_enforce_p50_ms b2_pod_enforce_p99_ms
  b3_restart_program_ms b3_restart_probe_errors b4_pod_add_bytes b4_full_rewrite_bytes
  b5_agent_rss_mib b5_rss_ratio_vs_bare b5_metric_series b5_policy_counter_series b5_metrics_scrape_kib b8_probe_errors b8_catchup_ms
  incremental_sync_p50_ms incremental_sync_p99_ms full_sync_periodic_ms full_sync_rebuild_ms
  full_sync_churn_wait_p99_ms_sync full_sync_churn_wait_p99_ms_ahead full_sync_churn_wait_p99_ratio
  startup_ms b9_startup_ms_watchlist b9_startup_ms_protobuf b9_apiserver_cpu_s_watchlist b9_apiserver_cpu_s_protobuf
  memlimit_shipped_mib memlimit_shipped_peak_ratio memlimit_smallest_kept_up_mib
  b12_explain_ms b12_explain_peak_rss_mib
)

if [ "$(id -u)" != 0 ]; then
  echo "make bench needs root (network namespaces, nftables, iptables)" >&2
  exit 1
fi
# The peer: iptables (for iptables-legacy) and ipset, from Debian.
if ! command -v iptables-legacy-restore >/dev/null || ! command -v ipset >/dev/null; then
  echo "installing the peer's tools: apt-get install iptables ipset"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q iptables ipset >/dev/null || exit 1
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
trap 'exit 130' INT TERM
export NFTPOLICY_BENCH=1 NFTPOLICY_BENCH_OUT="$out"
export NFTPOLICY_BENCH_PLOT="${NFTPOLICY_BENCH_PLOT:-$PWD/test/bench/conn-rate.png}"
start=$SECONDS
rc=0
go test -count=1 -timeout 12m -v -run 'TestDatapath|TestNetlinkCost|TestReplaceUnderTraffic|TestEstablished' ./test/bench/datapath/ || rc=1
go test -count=1 -timeout 10m -v -run TestShapes ./test/bench/datapath/ || rc=1
go test -count=1 -timeout 10m -v -run TestTwins ./test/bench/datapath/ || rc=1
go test -count=1 -timeout 15m -v -run TestControlPlane ./test/bench/controlplane/ || rc=1
go test -count=1 -timeout 5m -v -run TestPeriodicFullSyncUnderChurn ./controllers/ || rc=1
# The 100k-pod point takes most of an hour here (creating 100,000 pods): opt in.
if [ "${NFTPOLICY_BENCH_100K:-0}" = 1 ]; then
  NFTPOLICY_BENCH_SHAPE=100k go test -count=1 -timeout 120m -v -run TestControlPlane ./test/bench/controlplane/ || rc=1
  summary+=(startup_ms_100k incremental_sync_p50_ms_100k incremental_sync_p99_ms_100k full_sync_periodic_ms_100k full_sync_rebuild_ms_100k b2_policy_enforce_p50_ms_100k b2_policy_enforce_p99_ms_100k
    b2_pod_enforce_p50_ms_100k b2_pod_enforce_p99_ms_100k b5_agent_rss_mib_100k b5_metric_series_100k b5_policy_counter_series_100k b8_catchup_ms_100k
    b9_startup_ms_watchlist_100k b9_startup_ms_protobuf_100k b9_apiserver_cpu_s_watchlist_100k b9_apiserver_cpu_s_protobuf_100k
    memlimit_shipped_peak_ratio_100k memlimit_smallest_kept_up_mib_100k b12_explain_ms_100k b12_explain_peak_rss_mib_100k)
fi
# What N agents' watches cost the apiserver (test/bench/fanout): opt in.
if [ "${NFTPOLICY_BENCH_FANOUT:-0}" = 1 ]; then
  go test -count=1 -timeout 90m -v -run TestFanout ./test/bench/fanout/ || rc=1
  summary+=(fanout_wire_bytes_per_event_watcher_protobuf fanout_wire_bytes_per_event_watcher_json
    fanout_cpu_us_per_event_watcher_protobuf fanout_cpu_us_per_event_watcher_json
    fanout_heap_kib_per_watcher_protobuf fanout_endpointslice_wire_bytes_per_pod_event_watcher)
fi

echo
echo "--- make bench: $((SECONDS - start)) s; summary ---"
for name in "${summary[@]}"; do
  line=$(grep -h "^$name: " "$out"/*.txt 2>/dev/null | tail -n 1)
  if [ -z "$line" ]; then
    line="$name: missing"
    rc=1
  fi
  echo "$line"
done
exit $rc
