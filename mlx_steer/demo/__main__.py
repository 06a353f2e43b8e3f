"""``python -m mlx_steer.demo``."""

from . import main

raise SystemExit(main())
