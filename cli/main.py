"""The ``genq`` command (placeholder until the CLI lands)."""


def main() -> None:
    raise SystemExit("genq: not built yet")
