"""Sources turn the outside world into the same stream of object changes."""
