"""The HTTP control service (``pip install 'pausesvc[service]'``; run with ``pausesvc serve``).

The core never imports this package.
"""

from pausesvc.service._app import create_app

__all__ = ["create_app"]
