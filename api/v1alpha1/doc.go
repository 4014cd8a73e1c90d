// Package v1alpha1 holds nftpolicy's own CRD types, when we have one; none yet.
//
// Only k8s.io/apimachinery (and controller-runtime's scheme builder) may be
// imported here, so that any client can use these types; .golangci.yml's
// depguard rule "api" enforces it.
package v1alpha1
