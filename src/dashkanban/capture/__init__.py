"""Frame sources: capture files and live raw sockets."""
