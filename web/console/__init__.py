"""The console: server-rendered pages (Litestar + Jinja2, HTMX vendored under web/static/vendor).

Each module holds the pages of one area and lists them in `routes`; this package puts them behind
one router that refuses cross-site form posts, marks every page no-store and turns errors into
pages (see `base`).
"""

from litestar import Router

from . import admin, builder, dashboard, manage, people, workspace
from .base import error_page, no_cache, refuse_cross_site, template_config

router = Router(path="/", route_handlers=[*people.routes, *workspace.routes, *builder.routes, *dashboard.routes,
                                            *manage.routes, *admin.routes],
                include_in_schema=False,
                before_request=refuse_cross_site, after_request=no_cache, exception_handlers={Exception: error_page})

__all__ = ["router", "template_config"]
