"""From translation to served snapshots: assembly, and the incremental engine that keeps both current."""
