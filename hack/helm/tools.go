//go:build tools

// Package tools records the command built from this module so `go mod tidy` keeps it.
package tools

import (
	_ "helm.sh/helm/v4/cmd/helm"
)
