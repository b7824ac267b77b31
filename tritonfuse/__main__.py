from ._paths import checkout_behind_site_packages

checkout_behind_site_packages()  # (run from the checkout: its kernels/ folder must not shadow HF's `kernels`)

from .cli import main  # noqa: E402

raise SystemExit(main())
