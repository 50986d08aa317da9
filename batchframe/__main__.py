from __future__ import annotations

from batchframe._cli import main

raise SystemExit(main())
