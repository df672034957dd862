"""The command line, exfab."""
