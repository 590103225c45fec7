from weir.cli.main import main

raise SystemExit(main())
