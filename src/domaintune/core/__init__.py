"""Layer 0: what every other layer may use and that uses nothing of domaintune: user errors, chat
rendering and label masking, the entity-list answer format, and chart helpers."""
