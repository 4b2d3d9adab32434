from __future__ import annotations

from covseg.cli import main

raise SystemExit(main())
