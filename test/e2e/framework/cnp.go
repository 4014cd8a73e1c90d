package framework

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/kubernetes/scheme"
	cnpv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
)

// ClusterNetworkPolicy: the control plane serves the module's experimental CRD
// (every peer kind: nodes and domainNames too), so the agents enforce the Admin
// and Baseline tiers from the start; the admin client knows its v1beta1 types.

func init() {
	if err := cnpv1beta1.Install(scheme.Scheme); err != nil {
		panic(err)
	}
}

// ClusterPolicyCRDDir is config/crd/experimental of sigs.k8s.io/network-policy-api
// in the module cache (the version go.mod requires).
func ClusterPolicyCRDDir() (string, error) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/network-policy-api").Output()
	if err != nil {
		return "", fmt.Errorf("finding sigs.k8s.io/network-policy-api's CRDs: go list -m: %w", err)
	}
	return filepath.Join(strings.TrimSpace(string(out)), "config", "crd", "experimental"), nil
}

// DeleteAllClusterPolicies deletes every ClusterNetworkPolicy.
func (e *Env) DeleteAllClusterPolicies(ctx context.Context) error {
	var list cnpv1beta1.ClusterNetworkPolicyList
	if err := e.CP.Client.List(ctx, &list); err != nil {
		return err
	}
	var errs []error
	for i := range list.Items {
		if err := e.Delete(ctx, &list.Items[i]); err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
