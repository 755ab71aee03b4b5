"""xDS serving: content-versioned snapshots, the sans-IO stream state machine, the gRPC servers."""
