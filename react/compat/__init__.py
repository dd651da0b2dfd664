"""Work-arounds for the pinned third-party set; each one a no-op where unneeded."""
