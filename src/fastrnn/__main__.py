"""``python -m fastrnn COMMAND ...``: the demos and the benchmark (:mod:`fastrnn.tools`)."""
from __future__ import annotations

import sys

USAGE = """usage: python -m fastrnn COMMAND [options]
       python -m fastrnn --version

commands:
  demo NAME   run a demo (python -m fastrnn demo --help lists them)
  bench       benchmark fastrnn against PyTorch, JAX and onnxruntime
              (python -m fastrnn bench --help)
"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0
    if argv[0] in ("-V", "--version"):
        from . import __version__, get_cpu_capability

        print(f"fastrnn {__version__} (kernels: {get_cpu_capability()}; Python "
              f"{sys.version.split()[0]})")
        return 0
    command, rest = argv[0], argv[1:]
    if command == "demo":
        from .tools.demos import main as run
    elif command == "bench":
        from .tools.bench import main as run
    else:
        print(f"unknown command {command!r}\n\n{USAGE}", end="", file=sys.stderr)
        return 2
    return run(rest)


if __name__ == "__main__":
    sys.exit(main())
