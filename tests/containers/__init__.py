"""Container backends against real managers (podman, LXC, nested nspawn) and a pct(1) stand-in."""
