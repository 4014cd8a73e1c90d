package controllers

import (
	"strings"
	"testing"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestCRDWants is a plain unit test (it runs under -short): what each state of
// the ClusterNetworkPolicy CRD object makes the agent read.
func TestCRDWants(t *testing.T) {
	crd := func(established bool, deleting bool, served ...string) *apiextensionsv1.CustomResourceDefinition {
		c := &apiextensionsv1.CustomResourceDefinition{ObjectMeta: metav1.ObjectMeta{Name: cnpCRDName}}
		for _, v := range []string{"v1alpha2", "v1beta1", "v1"} {
			c.Spec.Versions = append(c.Spec.Versions, apiextensionsv1.CustomResourceDefinitionVersion{
				Name: v, Served: strings.Contains(strings.Join(served, ","), v)})
		}
		status := apiextensionsv1.ConditionFalse
		if established {
			status = apiextensionsv1.ConditionTrue
		}
		c.Status.Conditions = []apiextensionsv1.CustomResourceDefinitionCondition{
			{Type: apiextensionsv1.NamesAccepted, Status: apiextensionsv1.ConditionTrue},
			{Type: apiextensionsv1.Established, Status: status},
		}
		if deleting {
			c.DeletionTimestamp = &metav1.Time{}
		}
		return c
	}
	for _, tc := range []struct {
		name    string
		crd     *apiextensionsv1.CustomResourceDefinition
		version string
		decided bool
		why     string
	}{
		{"absent: none", nil, "", true, "not installed"},
		{"v1beta1 first", crd(true, false, "v1alpha2", "v1beta1"), "v1beta1", true, "serves v1beta1"},
		{"v1alpha2 alone", crd(true, false, "v1alpha2"), "v1alpha2", true, "serves v1alpha2"},
		{"not established: what runs keeps running", crd(false, false, "v1beta1"), "", false, "not established"},
		{"being deleted: the informer sees its policies go", crd(true, true, "v1beta1"), "", false, "being deleted"},
		{"only a version the agent does not read: the policies read stay", crd(true, false, "v1"), "", false, "none of the versions this agent reads (v1beta1, v1alpha2), but [v1]"},
		{"nothing served", crd(true, false), "", false, "none of the versions"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, decided, why := crdWants(tc.crd)
			if v != tc.version || decided != tc.decided || !strings.Contains(why, tc.why) {
				t.Errorf("crdWants = %q, %v, %q; want %q, %v, containing %q", v, decided, why, tc.version, tc.decided, tc.why)
			}
		})
	}
}

// TestTrimCRD: the cache keeps what crdWants reads and drops the schemas.
func TestTrimCRD(t *testing.T) {
	in := &apiextensionsv1.CustomResourceDefinition{
		ObjectMeta: metav1.ObjectMeta{Name: cnpCRDName, ResourceVersion: "7", DeletionTimestamp: &metav1.Time{},
			Annotations: map[string]string{"kubectl.kubernetes.io/last-applied-configuration": "{...}"}},
		Spec: apiextensionsv1.CustomResourceDefinitionSpec{Group: cnpGroup, Versions: []apiextensionsv1.CustomResourceDefinitionVersion{{
			Name: "v1beta1", Served: true, Storage: true,
			Schema: &apiextensionsv1.CustomResourceValidation{OpenAPIV3Schema: &apiextensionsv1.JSONSchemaProps{Type: "object"}},
		}}},
		Status: apiextensionsv1.CustomResourceDefinitionStatus{Conditions: []apiextensionsv1.CustomResourceDefinitionCondition{
			{Type: apiextensionsv1.Established, Status: apiextensionsv1.ConditionTrue, Message: "the initial names have been accepted"}}},
	}
	out, err := trimCRD(in)
	if err != nil {
		t.Fatal(err)
	}
	c := out.(*apiextensionsv1.CustomResourceDefinition)
	if c.Annotations != nil || c.Spec.Versions[0].Schema != nil || c.Status.Conditions[0].Message != "" {
		t.Errorf("not trimmed: %+v", c)
	}
	v, decided, _ := crdWants(c)
	want, wantDecided, _ := crdWants(in)
	if v != want || decided != wantDecided || c.ResourceVersion != "7" {
		t.Errorf("the trimmed CRD says %q, %v (resourceVersion %q); the whole one %q, %v", v, decided, c.ResourceVersion, want, wantDecided)
	}
}
