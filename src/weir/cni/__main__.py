"""``python -m weir.cni`` and the zipapp entry point: run the plugin."""

from weir.cni.plugin import main

raise SystemExit(main())
