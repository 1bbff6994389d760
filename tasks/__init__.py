"""End-to-end jobs: one module per job, each a frozen config dataclass and
``run(config) -> result``."""
