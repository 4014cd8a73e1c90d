package nfttest

import (
	"fmt"
	"os"
	"regexp"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
	"sigs.k8s.io/yaml"
)

// Objects is a world of Kubernetes objects read from a test's YAML file.
type Objects struct {
	Namespaces      []*corev1.Namespace
	Nodes           []*corev1.Node
	Pods            []*corev1.Pod
	Policies        []*networkingv1.NetworkPolicy
	ClusterPolicies []*cnpv1.ClusterNetworkPolicy
}

var (
	docSep   = regexp.MustCompile(`(?m)^---\s*$`)
	yamlBool = regexp.MustCompile(`(?im)(?:[:\[,]|^\s*-\s)\s*(y|n|yes|no|on|off)\s*([,}\]]|$)`)
)

// LoadObjects decodes a multi-document YAML file of Namespaces, Nodes, Pods,
// NetworkPolicies and ClusterNetworkPolicies. Unknown fields, a document with no
// kind and an unquoted YAML 1.1 boolean are errors: they are typos in test data.
func LoadObjects(path string) (Objects, error) {
	var o Objects
	data, err := os.ReadFile(path)
	if err != nil {
		return o, err
	}
	if m := yamlBool.FindString(stripComments(string(data))); m != "" {
		// sigs.k8s.io/yaml reads YAML 1.1: an unquoted y is true, and turns into the
		// string "true" in a string field. Quote it.
		return o, fmt.Errorf("%s: unquoted YAML 1.1 boolean in %q", path, m)
	}
	for i, doc := range docSep.Split(string(data), -1) {
		var head struct {
			Kind string `json:"kind"`
		}
		if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
			return o, fmt.Errorf("%s document %d: %w", path, i, err)
		}
		var obj any
		switch head.Kind {
		case "":
			if strings.TrimSpace(stripComments(doc)) != "" {
				return o, fmt.Errorf("%s document %d: no kind", path, i)
			}
			continue
		case "Namespace":
			ns := &corev1.Namespace{}
			o.Namespaces, obj = append(o.Namespaces, ns), ns
		case "Node":
			n := &corev1.Node{}
			o.Nodes, obj = append(o.Nodes, n), n
		case "Pod":
			p := &corev1.Pod{}
			o.Pods, obj = append(o.Pods, p), p
		case "NetworkPolicy":
			np := &networkingv1.NetworkPolicy{}
			o.Policies, obj = append(o.Policies, np), np
		case "ClusterNetworkPolicy":
			c := &cnpv1.ClusterNetworkPolicy{}
			o.ClusterPolicies, obj = append(o.ClusterPolicies, c), c
		default:
			return o, fmt.Errorf("%s document %d: unexpected kind %q", path, i, head.Kind)
		}
		if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
			return o, fmt.Errorf("%s document %d: %w", path, i, err)
		}
	}
	return o, nil
}

func stripComments(doc string) string {
	var out []string
	for _, l := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
