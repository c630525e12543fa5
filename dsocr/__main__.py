from dsocr.cli import main

raise SystemExit(main())
