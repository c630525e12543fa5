from dsocr_perf.dsocr.cli import main

raise SystemExit(main())
