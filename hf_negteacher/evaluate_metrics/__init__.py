"""`evaluate` modules shipped with hf-negteacher, loadable offline by path (`evaluate.load(metric_path(name))`)."""

from pathlib import Path

METRICS_DIR = Path(__file__).parent


def metric_path(name: str) -> str:
    """The folder of one of our `evaluate` modules, for `evaluate.load`."""
    path = METRICS_DIR / name
    if not (path / f"{name}.py").is_file():
        available = sorted(p.name for p in METRICS_DIR.iterdir() if (p / f"{p.name}.py").is_file())
        raise ValueError(f"no evaluate module {name!r}; available: {', '.join(available)}")
    return str(path)
