"""``python -m mlx_steer.integrations.lm_eval [lm-eval's arguments]``: lm-eval's CLI with the
``mlx_steer`` model registered (lm-eval 0.4 discovers no models outside its package). A bad model
argument or vector file exits 2 with a one-line message, as mlx_steer's own commands do."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Register ``mlx_steer`` with lm-eval, then run lm-eval's CLI on ``argv`` (default: sys.argv[1:]).

    Returns:
        0 when lm-eval finished, 2 on a ValueError or FileNotFoundError (printed as one line).
    """
    from lm_eval.__main__ import cli_evaluate  # type: ignore[import-untyped]

    from . import SteeredLM  # noqa: F401  (registers the model)

    saved = sys.argv
    sys.argv = ["lm-eval", *(saved[1:] if argv is None else argv)]  # lm-eval's parser reads sys.argv
    try:
        cli_evaluate()
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        sys.argv = saved
    return 0


if __name__ == "__main__":
    sys.exit(main())
