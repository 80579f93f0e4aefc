from provisioners.cli import main

raise SystemExit(main())
