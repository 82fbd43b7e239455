from __future__ import annotations

from ocrwatch.cli import main

raise SystemExit(main())
