"""The command groups; each module adds its commands with `register(subparsers)`."""
