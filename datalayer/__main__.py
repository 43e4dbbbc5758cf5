"""``python -m datalayer``: the ``datalayer`` command."""

from ._cli import main

raise SystemExit(main())
