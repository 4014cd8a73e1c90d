# nftpolicy — `make help` lists the targets. CI runs `make test` (see .ci/run).

SHELL := /usr/bin/env bash -o pipefail
.SHELLFLAGS := -ec
.DEFAULT_GOAL := help

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
BIN := $(CURDIR)/bin
K8S_VERSION ?= 1.37.2
KUBECTL := $(BIN)/k8s/$(K8S_VERSION)/kubectl
# The envtest binaries (kube-apiserver, etcd) are built, not downloaded: see the script.
ENVTEST_ASSETS = $(shell K8S_VERSION=$(K8S_VERSION) hack/envtest-assets.sh)

GOLANGCI_LINT_VERSION ?= v2.15.0
GOLANGCI_LINT := $(BIN)/golangci-lint-$(GOLANGCI_LINT_VERSION)
CONTROLLER_GEN_VERSION ?= v0.23.0
CONTROLLER_GEN := $(BIN)/controller-gen-$(CONTROLLER_GEN_VERSION)
# promtool tests config/prometheus's alerts (test/deploy TestAlerts); the
# Prometheus module's v0.316.0 is Prometheus 3.x's promtool (~3 min to build cold).
PROMTOOL_VERSION ?= v0.316.0
PROMTOOL := $(BIN)/promtool-$(PROMTOOL_VERSION)
# config/rbac/role.yaml from the +kubebuilder:rbac markers; config/default prefixes it nftpolicy-.
RBAC_GEN = rbac:roleName=agent paths=./controllers/...

# The image docker-build tags and deploy runs.
IMG ?= ghcr.io/nftpolicy/nftpolicy:latest
CONTAINER_TOOL ?= docker

# Extra flags for every go test run, e.g. GOTESTFLAGS=-v or GOTESTFLAGS='-run TestFoo'.
GOTESTFLAGS ?=
TEST_TIMEOUT ?= 60m

##@ General

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"; printf "\nUsage:\n  make \033[36m<target>\033[0m\n"} \
	  /^[a-zA-Z_0-9-]+:.*?##/ { printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2 } \
	  /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)

##@ Development

.PHONY: build
build: ## Build bin/nftpolicy and the CNI gate's plugin bin/nftpolicy-cni-gate (static, version from git).
	CGO_ENABLED=0 go build -ldflags "-X main.version=$(VERSION)" -o $(BIN)/nftpolicy ./cmd/nftpolicy
	CGO_ENABLED=0 go build -ldflags "-s -w" -o $(BIN)/nftpolicy-cni-gate ./cmd/nftpolicy-cni-gate

.PHONY: test
test: build envtest-assets $(PROMTOOL) ## Run every test CI runs: unit, envtest, and (as root) real-kernel tests.
	KUBEBUILDER_ASSETS="$(ENVTEST_ASSETS)" NFTPOLICY_PROMTOOL=$(PROMTOOL) go test -count=1 -timeout $(TEST_TIMEOUT) $(GOTESTFLAGS) ./...

.PHONY: test-unit
test-unit: ## Run the fast tests only: no root, no apiserver (go test -short).
	go test -short -count=1 $(GOTESTFLAGS) ./...

.PHONY: test-e2e
test-e2e: build envtest-assets ## Run the end-to-end tests (real apiserver, agents, pods as netns; root).
	KUBEBUILDER_ASSETS="$(ENVTEST_ASSETS)" go test -count=1 -timeout $(TEST_TIMEOUT) $(GOTESTFLAGS) ./test/e2e/...

.PHONY: bench
bench: envtest-assets ## As root: datapath vs an iptables+ipset peer, netlink cost, control plane; summary lines last (~16 min).
	KUBEBUILDER_ASSETS="$(ENVTEST_ASSETS)" test/bench/run.sh

.PHONY: bench-go
bench-go: ## Run the Go micro-benchmarks (go test -bench) of every package.
	go test -run '^$$' -bench . $(GOTESTFLAGS) ./...

.PHONY: bench-fanout
bench-fanout: envtest-assets ## What N agents' watches cost the apiserver under pod churn, JSON and protobuf (test/bench/fanout; ~40 min).
	KUBEBUILDER_ASSETS="$(ENVTEST_ASSETS)" NFTPOLICY_BENCH=1 go test -count=1 -timeout 90m -v -run TestFanout ./test/bench/fanout/

.PHONY: bench-controlplane
bench-controlplane: envtest-assets ## As root: agent latency and memory against 10k pods / 1k policies (test/bench/controlplane).
	KUBEBUILDER_ASSETS="$(ENVTEST_ASSETS)" NFTPOLICY_BENCH=1 go test -count=1 -timeout 20m -v -run TestControlPlane ./test/bench/controlplane/

.PHONY: lint
lint: $(GOLANGCI_LINT) ## Run golangci-lint (incl. the depguard layering rules) on the whole tree.
	$(GOLANGCI_LINT) run ./...

.PHONY: verify
verify: $(GOLANGCI_LINT) $(CONTROLLER_GEN) ## Fail if code is not gofmt'ed, go.mod/go.sum are not tidy, or generated files are stale.
	@files=$$(gofmt -l $$(git ls-files --cached --others --exclude-standard '*.go')); \
	  if [ -n "$$files" ]; then echo "not gofmt'ed (run gofmt -w):"; echo "$$files"; exit 1; fi
	go mod tidy -diff
	GOLANGCI_LINT=$(GOLANGCI_LINT) hack/verify-depguard.sh
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	  $(CONTROLLER_GEN) $(RBAC_GEN) output:rbac:artifacts:config="$$tmp"; \
	  diff -u config/rbac/role.yaml "$$tmp/role.yaml" || { echo "config/rbac/role.yaml is stale: run make manifests"; exit 1; }

.PHONY: manifests
manifests: $(CONTROLLER_GEN) ## Generate config/rbac/role.yaml from the +kubebuilder:rbac markers.
	$(CONTROLLER_GEN) $(RBAC_GEN) output:rbac:artifacts:config=config/rbac

.PHONY: envtest-assets
envtest-assets: ## Build kube-apiserver, etcd and kubectl into bin/k8s/<version> (~5 min cold).
	@K8S_VERSION=$(K8S_VERSION) hack/envtest-assets.sh >/dev/null

##@ Running

.PHONY: run
run: ## Run the agent from source against $KUBECONFIG as node $NODE_NAME (ARGS=... for more flags).
	go run ./cmd/nftpolicy agent $(ARGS)

.PHONY: demo
demo: build envtest-assets ## Local demo: control plane, pods as netns, example policies, connectivity matrix (root; ARGS=--keep).
	KUBEBUILDER_ASSETS="$(ENVTEST_ASSETS)" go run ./test/e2e/demo $(ARGS)

##@ Conformance

# The upstream NetworkPolicy suite on a real two-node cluster on this machine
# (root; see test/conformance/cluster.sh and the README). FOCUS/SKIP are ginkgo
# regexps; the cluster's binaries are built once into bin/k8s (~12 min cold).
# The cluster's shape: IP_FAMILY=ipv4|ipv6|dual, CNI=ptp (routed)|bridge.
# SUITE=netpol|cnp|all: what `make conformance` runs; CNP_RUN= narrows the
# ClusterNetworkPolicy suite to some of its tests (a go test -run pattern).
FOCUS ?= Netpol
SKIP ?= SCTP
PARALLEL ?= 4
IP_FAMILY ?= ipv4
CNI ?= ptp
SUITE ?= netpol
CNP_RUN ?=
CONFORMANCE := FOCUS='$(FOCUS)' SKIP='$(SKIP)' PARALLEL=$(PARALLEL) K8S_VERSION=$(K8S_VERSION) \
  IP_FAMILY=$(IP_FAMILY) CNI=$(CNI) CNP_RUN='$(CNP_RUN)' NFTPOLICY_VERSION=$(VERSION) test/conformance/cluster.sh

.PHONY: conformance
conformance: build ## As root: cluster up, deploy nftpolicy, run e2e.test Netpol specs (FOCUS=, SKIP=, IP_FAMILY=, CNI=, SUITE=all adds the CNP suite), tear down.
	SUITE=$(SUITE) $(CONFORMANCE) run

.PHONY: conformance-cnp
conformance-cnp: build ## As root: cluster up, run the upstream ClusterNetworkPolicy suite (network-policy-api conformance; IP_FAMILY=, CNI=, CNP_RUN=), tear down.
	SUITE=cnp $(CONFORMANCE) run

.PHONY: window
window: ## As root, with the cluster up (make cluster-up): the first-packet window, --unknown-pod-cidrs off and node (FIRST_PACKET_PODS=50).
	CONFORMANCE_KUBECONFIG=$${STATE:-/var/lib/nftpolicy-conformance}/admin.kubeconfig \
	  go test -count=1 -v -timeout 45m -run TestFirstPacketWindow ./test/conformance/

.PHONY: rollout
rollout: ## As root, with the cluster up (make cluster-up): roll the agent DaemonSet under probes (make conformance runs it too).
	$(CONFORMANCE) rollout

.PHONY: cni-gate
cni-gate: ## As root, with the cluster up (make cluster-up): a pod on a "rebooted" node waits for its table (make conformance runs it too).
	$(CONFORMANCE) gate

.PHONY: cluster-up
cluster-up: build ## As root: bring the conformance cluster up with nftpolicy deployed, and keep it.
	$(CONFORMANCE) up

.PHONY: cluster-down
cluster-down: ## Tear the conformance cluster down (processes, netns, bridge, tables, sysctls).
	$(CONFORMANCE) down

##@ Deployment

.PHONY: docker-build
docker-build: ## Build the image IMG with docker (CONTAINER_TOOL=podman to change; see Dockerfile).
	$(CONTAINER_TOOL) build --build-arg VERSION=$(VERSION) -t $(IMG) .

.PHONY: deploy
deploy: envtest-assets ## Deploy the agent to the current kubeconfig's cluster (config/default, image IMG).
	KUBECTL=$(KUBECTL) hack/kustomize-image.sh config/default $(IMG) | $(KUBECTL) apply -f -

.PHONY: undeploy
undeploy: envtest-assets ## Remove what deploy created; nodes keep their tables (see config/cleanup).
	$(KUBECTL) delete --ignore-not-found -k config/default

.PHONY: cleanup
cleanup: envtest-assets ## After undeploy: run config/cleanup (image IMG) on every node, wait for it, delete it.
	KUBECTL=$(KUBECTL) hack/kustomize-image.sh config/cleanup $(IMG) | $(KUBECTL) apply -f -
	$(KUBECTL) -n nftpolicy-system rollout status ds/nftpolicy-cleanup --timeout=5m && $(KUBECTL) delete -k config/cleanup

##@ Tools

.PHONY: controller-gen
controller-gen: $(CONTROLLER_GEN) ## Install the pinned controller-gen as bin/controller-gen.

$(PROMTOOL):
	mkdir -p $(BIN)
	rm -f $(BIN)/promtool
	GOBIN=$(BIN) GOFLAGS=-mod=mod go install github.com/prometheus/prometheus/cmd/promtool@$(PROMTOOL_VERSION)
	mv $(BIN)/promtool $@

$(CONTROLLER_GEN):
	mkdir -p $(BIN)
	rm -f $(BIN)/controller-gen
	GOBIN=$(BIN) go install sigs.k8s.io/controller-tools/cmd/controller-gen@$(CONTROLLER_GEN_VERSION)
	mv $(BIN)/controller-gen $@
	ln -sf $(notdir $@) $(BIN)/controller-gen

.PHONY: golangci-lint
golangci-lint: $(GOLANGCI_LINT) ## Install the pinned golangci-lint as bin/golangci-lint.

$(GOLANGCI_LINT):
	mkdir -p $(BIN)
	rm -f $(BIN)/golangci-lint
	GOBIN=$(BIN) go install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
	mv $(BIN)/golangci-lint $@
	ln -sf $(notdir $@) $(BIN)/golangci-lint
