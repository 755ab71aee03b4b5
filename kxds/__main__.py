"""Allow `python -m kxds`."""

from kxds.cli import main

raise SystemExit(main())
