"""Life under systemd: readiness and watchdog notifications, and the first-boot activation."""
