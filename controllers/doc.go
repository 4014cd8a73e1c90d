// Package controllers is nftpolicy's only controller-runtime code: the node
// agent. RunAgent builds a manager that caches Pods, Namespaces and
// networking/v1 NetworkPolicies (managedFields stripped, nothing else
// cached), serves metrics and the /healthz and /readyz probes, and turns
// every relevant event into one sync of this node's nftables table.
//
// Readiness: /readyz answers 200 only once the informer caches have synced
// and the first full sync of the node's table has succeeded, so a node's
// agent is not reported ready before it enforces policy.
//
// Errors go up: this package logs once, with logr key/values ("node",
// "policy"), and returns what it cannot handle to cmd/nftpolicy, which
// turns it into an exit code. The agent only reads the API; the
// +kubebuilder:rbac markers in agent.go are its whole RBAC.
package controllers
