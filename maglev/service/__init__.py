"""Running maglev as a Linux service: host checks (``doctor``) and systemd's notify protocol."""
