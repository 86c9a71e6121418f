from {{ cookiecutter.project_slug }}.cli import main

raise SystemExit(main())
