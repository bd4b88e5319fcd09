//go:build tools

// Package tools records the command built from this module (the `weed` server) so `go mod tidy` keeps it.
package tools

import (
	_ "github.com/seaweedfs/seaweedfs/weed"
)
